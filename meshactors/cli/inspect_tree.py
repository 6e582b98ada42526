"""`meshactors inspect`: the live actor tree, indented, or as JSON."""

from __future__ import annotations

import argparse
from typing import Any

from meshactors.cli.common import call, print_json


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `inspect` command."""
    parser = commands.add_parser("inspect", help="print the daemon's live actor tree")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    tree = call(args, "inspect")
    if args.json:
        print_json(tree)
    else:
        print("\n".join(render_tree(tree)))
    return 0


def render_tree(
    node: dict[str, Any], prefix: str = "", last: bool = True, root: bool = True
) -> list[str]:
    """One line per actor: name, kind, state, uptime, restarts, inbox use, figures."""
    branch = "" if root else ("└── " if last else "├── ")
    lines = [prefix + branch + describe(node)]
    children = node.get("children", [])
    child_prefix = prefix if root else prefix + ("    " if last else "│   ")
    for index, child in enumerate(children):
        lines.extend(render_tree(child, child_prefix, index == len(children) - 1, False))
    return lines


def describe(node: dict[str, Any]) -> str:
    """The one-line summary of a node."""
    parts = [node["name"], f"[{node['kind']}]", node["state"]]
    if node.get("uptime_s") is not None:
        parts.append(f"up {node['uptime_s']:.1f}s")
    parts.append(f"restarts {node['restarts']}")
    inbox = node.get("inbox")
    if inbox is not None:
        size = "∞" if inbox["size"] is None else inbox["size"]
        parts.append(f"inbox {inbox['used']}/{size}")
    figures = node.get("figures") or {}
    if figures:
        parts.append(" ".join(f"{key}={_short(value)}" for key, value in figures.items()))
    return "  ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}"
    return str(value)
