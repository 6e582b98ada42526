"""What a peer or broker says reaches the operator's terminal escaped: every text renderer of
the CLI yields printable characters only (its own line breaks aside), --json the text as is."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshactors.cli.common import CommandFailed, one_line, printable, say
from meshactors.cli.inspect_tree import render_tree
from meshactors.cli.mesh import _listing, _network_row, format_event

# any text, with C0 and C1 controls, DEL, line breaks and a bidi override made likely
HOSTILE_TEXT = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from(["\x1b", "\x9b", "\x7f", "\r", "\n", "\t", "\u2028", "\u202e"]),
    )
)


def network_saying(reason: str, refused: str | None) -> dict[str, Any]:
    """A network as networks_list answers it: its link error's reason is `reason`, and with
    `refused`, its invite was refused for that reason."""
    refusal = {"invite_refused": {"by": "d" * 52, "reason": refused}}
    return {
        "id": "lan",
        "phase": "joined",
        "label": None,
        "auto_approve": False,
        "link": "down",
        "peers": {"active": 0},
        "brokers": ["ws://127.0.0.1:1/v1"],
        "link_error": {"kind": "closed", "reason": reason},
        "membership": None if refused is None else refusal,
    }


def printed(render: Any, *args: Any, **kwargs: Any) -> tuple[str, str]:
    """What `render(*args, **kwargs)` writes on stdout and on stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        render(*args, **kwargs)
    return out.getvalue(), err.getvalue()


@given(HOSTILE_TEXT)
def test_printable_escapes_every_unprintable_character(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    if text.isprintable():
        assert shown == text


def test_printable_writes_python_escapes() -> None:
    shown = printable("\x1b[2J\x9b\x7f\u2028\U000e0001 ok é")
    assert shown == "\\x1b[2J\\x9b\\x7f\\u2028\\U000e0001 ok é"


@given(HOSTILE_TEXT)
def test_a_failure_is_one_printable_line(text: str) -> None:
    assert one_line(text).isprintable()
    _, err = printed(CommandFailed("remote_error", text, 1).render, as_json=False)
    (line,) = err.splitlines()
    assert line.isprintable()


@given(HOSTILE_TEXT)
def test_a_failure_under_json_keeps_the_text(text: str) -> None:
    out, _ = printed(CommandFailed("remote_error", text, 1).render, as_json=True)
    assert json.loads(out)["error"]["message"] == text


@given(HOSTILE_TEXT, st.none() | HOSTILE_TEXT)
def test_network_list_keeps_a_brokers_and_a_peers_words_in_their_cell(
    reason: str, refused: str | None
) -> None:
    args = argparse.Namespace(json=False)
    items = [network_saying(reason, refused)]
    out, _ = printed(_listing, args, items, "none", ["ID"] * 8, _network_row)
    header, row = out.splitlines()
    assert header.split() == ["ID"] * 8
    assert row.isprintable()


@given(HOSTILE_TEXT, HOSTILE_TEXT)
def test_inspect_and_event_lines_are_printable(name: str, error: str) -> None:
    child = {"name": name, "kind": "link", "state": "running", "restarts": 0}
    tree = {**child, "figures": {"last_error": error}, "children": [child]}
    for verbose in (False, True):
        lines, _ = render_tree(tree, width=40, verbose=verbose)
        assert all(line.isprintable() for line in lines)
    event = {"kind": name, "device_id": "d" * 52, "label": error, "reason": error}
    assert format_event(event, as_json=False).isprintable()


@given(HOSTILE_TEXT)
def test_say_escapes_all_but_its_own_line_breaks_and_tabs(text: str) -> None:
    out, _ = printed(say, text)
    assert all(line.replace("\t", " ").isprintable() for line in out.split("\n"))
