"""The `meshactors` command line."""


def main() -> None:
    """Entry point of the `meshactors` console script."""
    raise SystemExit("not implemented yet")
