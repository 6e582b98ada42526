"""The op table is the one registry of ops: each op names the CLI command and the client
method that reach it, and docs/protocol.md describes it and its HTTP routes. Adding an op
without any of these fails here, saying which."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from meshactors.cli.app import build_parser
from meshactors.client import MeshClient
from meshactors.daemon.main import build_ops
from meshactors.ops.optable import Op

ROOT = Path(__file__).parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"
CLIENT = ROOT / "meshactors" / "client"
OPS = sorted(build_ops().ops.values(), key=lambda op: op.name)


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every command the CLI parses, as its words joined by spaces (aliases included)."""
    found: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = f"{prefix} {name}".strip()
                found |= {words} | commands(sub, words)
    return found


CLI = commands(build_parser())


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_the_cli_reaches_every_op(op: Op[object]) -> None:
    assert op.command, f"{op.name}: name the CLI command that reaches it (Op(command=...))"
    assert op.command in CLI, f"{op.name}: no CLI command {op.command!r}"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_the_client_library_reaches_every_op(op: Op[object]) -> None:
    assert callable(getattr(MeshClient, op.client, None)), f"{op.name}: no MeshClient.{op.client}"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_docs_protocol_describes_every_op(op: Op[object]) -> None:
    text = PROTOCOL.read_text()
    described = re.search(rf"^#+ .*`{op.name}`", text, re.M) or re.search(
        rf"^\| `{op.name}` \|", text, re.M
    )
    assert described, f"{op.name}: give it a heading or a table row in docs/protocol.md"


def _http_section() -> str:
    """docs/protocol.md's "Routes" section: the HTTP routes and what HTTP refuses."""
    text = PROTOCOL.read_text()
    start = text.index("### Routes")
    return text[start : text.index("\n### ", start + 1)]


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_docs_protocol_lists_the_http_routes_of_every_op(op: Op[object]) -> None:
    """A GET or POST path an op names is a row of the routes table; an op HTTP refuses (it
    pushes or switches) and one taking Idempotency-Key are named there too."""
    section = _http_section()
    for method, path in (("GET", op.http_get), ("POST", op.http_post)):
        if path is not None:
            row = re.search(rf"^\| {method} \| `{re.escape(path)}[`?]", section, re.M)
            assert row, f"{op.name}: list `{method} {path}` in docs/protocol.md's routes"
    if op.pushes or op.switches:
        assert re.search(rf"\b{op.name}\b", section), f"{op.name}: say that HTTP refuses it"
    if op.idempotency_key:
        row = re.search(rf"^\| POST \| `/v1/{op.name}` \|.*Idempotency-Key", section, re.M)
        assert row, f"{op.name}: give its Idempotency-Key rule a row in the routes"


def test_the_client_library_calls_only_ops_that_exist() -> None:
    """Every `.call("op", ...)` in the client library names an op of the table."""
    names = {op.name for op in OPS}
    called = set()
    for source in CLIENT.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "call"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                called.add(node.args[0].value)
    assert called and called - names == set()
