"""The `meshactors` command line. This package loads nothing until `main` has taken charge of
Ctrl-C: loading the commands (`app`) takes about half a second, and Ctrl-C meanwhile must end
the command in one line, not in a traceback from whatever module was being imported."""

from __future__ import annotations

import json
import sys

EXIT_INTERRUPTED = 130  # as meshactors.cli.common's; not imported from there: it loads it all


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `meshactors` console script: the command, or for a Ctrl-C it did not
    handle itself (one while the commands load included) one line and exit 130. A Ctrl-C that
    landed in a task of a nursery comes out wrapped in an exception group: the same."""
    words = sys.argv[1:] if argv is None else argv
    try:
        from meshactors.cli import app

        app.main(words)
    except (KeyboardInterrupt, BaseExceptionGroup) as stopped:
        if isinstance(stopped, BaseExceptionGroup) and stopped.split(KeyboardInterrupt)[1]:
            raise  # a group with other failures in it: not only a Ctrl-C
        if "--json" in words:
            print(json.dumps({"error": {"code": "interrupted", "message": "interrupted"}}))
        else:
            print("meshactors: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
