"""`meshactors inspect [PATH]`: the live actor tree (or one subtree), indented to fit the
terminal, or as JSON."""

from __future__ import annotations

import argparse
import shutil
import textwrap
from typing import Any

from meshactors.cli.common import EXIT_NOT_FOUND, call_status, fail, print_json, printable, say

DEFAULT_WIDTH = 120  # columns when the output is no terminal and COLUMNS is unset
MIN_TEXT_WIDTH = 24  # columns kept for text however deep the tree indents
SHORT_FIGURE = 32  # characters of `key=value` shown without --verbose; longer ones are hidden


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `inspect` command."""
    parser = commands.add_parser("inspect", help="print the daemon's live actor tree")
    parser.add_argument(
        "path", nargs="?", default=None, help="only this subtree, e.g. networks/'network lan'"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="every figure, wrapped")
    parser.add_argument(
        "--width",
        type=_width,
        default=None,
        help=f"columns, at least {MIN_TEXT_WIDTH} (default: the terminal's)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable, every figure")
    parser.set_defaults(run=run)


def _width(text: str) -> int:
    """`--width`: a whole number of columns, at least MIN_TEXT_WIDTH (fewer fit no line)."""
    try:
        width = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if width < MIN_TEXT_WIDTH:
        raise argparse.ArgumentTypeError(f"at least {MIN_TEXT_WIDTH} columns, not {width}")
    return width


def run(args: argparse.Namespace) -> int:
    tree = call_status(args, "inspect")
    if args.path is not None:
        tree = subtree(tree, args.path)
    if args.json:
        print_json(tree)
        return 0
    width = args.width or shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    lines, hidden = render_tree(tree, width=width, verbose=args.verbose)
    say("\n".join(lines))
    if hidden:
        say(f"({hidden} long figures hidden: --verbose shows them, --json has everything)")
    return 0


def subtree(tree: dict[str, Any], path: str) -> dict[str, Any]:
    """The node at `path` (with or without the leading `daemon/`); exit 6 naming the choices."""
    wanted = path.strip("/")
    if not wanted.startswith(tree["path"]):
        wanted = f"{tree['path']}/{wanted}"
    node = tree
    while node["path"] != wanted:
        below = [c for c in node.get("children", []) if wanted.startswith(c["path"])]
        below = [c for c in below if wanted == c["path"] or wanted[len(c["path"])] == "/"]
        if not below:
            choices = ", ".join(c["path"] for c in node.get("children", [])) or "none"
            fail(f"no actor at {path!r} (under {node['path']}: {choices})", EXIT_NOT_FOUND)
        node = below[0]
    return node


def render_tree(node: dict[str, Any], *, width: int, verbose: bool) -> tuple[list[str], int]:
    """The lines of `node` and its children, none wider than `width`, and how many figures
    were left out for being long (all are shown with `verbose`)."""
    return _render(node, width, verbose, head="", body="")


def _render(
    node: dict[str, Any], width: int, verbose: bool, head: str, body: str
) -> tuple[list[str], int]:
    """`head` starts the node's first line, `body` its other lines and its children's."""
    children = node.get("children", [])
    under = body + ("│   " if children else "    ")  # figures sit under the node's name
    shown, hidden = figure_words(node, verbose)
    summary = _wrap(describe(node), width - len(under))
    lines = [head + summary[0], *(under + line for line in summary[1:])]
    lines += [under + line for line in _wrap("  ".join(shown), width - len(under))]
    for index, child in enumerate(children):
        last = index == len(children) - 1
        child_head = body + ("└── " if last else "├── ")
        child_body = body + ("    " if last else "│   ")
        child_lines, child_hidden = _render(child, width, verbose, child_head, child_body)
        lines += child_lines
        hidden += child_hidden
    return lines, hidden


def describe(node: dict[str, Any]) -> str:
    """The one-line summary of a node: name, kind, state, uptime, restarts, inbox use."""
    parts = [node["name"], f"[{node['kind']}]", node["state"]]
    if node.get("uptime_s") is not None:
        parts.append(f"up {node['uptime_s']:.1f}s")
    parts.append(f"restarts {node['restarts']}")
    inbox = node.get("inbox")
    if inbox is not None:
        size = "∞" if inbox["size"] is None else inbox["size"]
        parts.append(f"inbox {inbox['used']}/{size}")
    return printable("  ".join(parts))


def figure_words(node: dict[str, Any], verbose: bool) -> tuple[list[str], int]:
    """`key=value` per figure, `printable` (a broker's close reason is one); without `verbose`,
    the long ones are left out and counted."""
    figures = (node.get("figures") or {}).items()
    words = [printable(f"{key}={_short(value)}") for key, value in figures]
    if verbose:
        return words, 0
    shown = [word for word in words if len(word) <= SHORT_FIGURE]
    return shown, len(words) - len(shown)


def _wrap(text: str, width: int) -> list[str]:
    if not text:
        return []
    return textwrap.wrap(
        text, max(width, MIN_TEXT_WIDTH), break_on_hyphens=False, break_long_words=True
    )


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}"
    return str(value)
