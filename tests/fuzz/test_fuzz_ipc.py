"""Fuzz the control socket: every answer is a documented error code or a success, never a crash."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshactors.daemon.services import Services
from meshactors.wire.ipc import BadFrame, ErrorCode, parse_request
from meshactors.wire.jsonlimits import MAX_JSON_DEPTH
from tests.fuzz.conftest import examples_of, fuzz
from tests.fuzz.strategies import json_line, json_values, mutated
from tests.support import LineClient

DOCUMENTED = {code.value for code in ErrorCode}
SAFE_OPS = ["status", "version", "inspect", "events_subscribe", "nope", ""]


@fuzz
@given(st.binary(max_size=512))
def test_parse_request_never_crashes_on_bytes(line: bytes) -> None:
    try:
        request = parse_request(line)
    except BadFrame as bad:
        assert bad.code.value in DOCUMENTED
    else:
        assert isinstance(request.op, str)


# openers of the nesting in a deep request line, each with what closes it
DEEP_OPENERS = {"[": "]", '{"a":': "}", '{"k":[': "]}", "[0,": "]"}


@settings(max_examples=60, deadline=None)
@given(
    depth=st.integers(5_000, 200_000),
    pattern=st.lists(st.sampled_from(sorted(DEEP_OPENERS)), min_size=1, max_size=6),
    closed=st.booleans(),
    request=st.booleans(),
)
def test_a_line_nested_too_deep_to_parse_is_bad_json_saying_so(
    depth: int, pattern: list[str], closed: bool, request: bool
) -> None:
    """Past the parser's stack a line is refused for its depth, never with Python's
    RecursionError text, and its id (not read) is null."""
    openers = (pattern * (depth // len(pattern) + 1))[:depth]
    value = "".join(openers)
    if closed:
        value += "0" + "".join(DEEP_OPENERS[opener] for opener in reversed(openers))
    line = f'{{"id":3,"op":"status","deep":{value}}}' if request else value
    with pytest.raises(BadFrame) as refused:
        parse_request(line.encode())
    assert refused.value.code is ErrorCode.BAD_JSON
    assert refused.value.message == f"nested deeper than {MAX_JSON_DEPTH} arrays and objects"
    assert refused.value.request_id is None


SYNC = b'{"id":"~fuzz~sync~","op":"status"}\n'  # longer than any fuzzed id

request_frames = st.fixed_dictionaries(
    {"id": st.integers() | st.text(max_size=10), "op": st.sampled_from(SAFE_OPS)},
    optional={"since": json_values, "extra": json_values},
)
hostile_lines = (
    st.binary(max_size=256).map(lambda b: b.replace(b"\n", b" ") + b"\n")
    | json_values.map(json_line)
    | request_frames.map(json_line)
    | mutated(b'{"id":1,"op":"status"}').map(lambda b: b.replace(b"\n", b" ") + b"\n")
)


async def test_daemon_answers_every_hostile_line(daemon: Services, connect: Any) -> None:
    client: LineClient = await connect()
    seen = [line.decode("latin-1") for line in await examples_of(hostile_lines)]
    subscribed = False
    for text in seen:
        # A line without `id` may be a notification (no answer when it succeeds): the status
        # request after it marks where the line's answers, if any, end.
        await client.send_raw(text.encode("latin-1") + SYNC)
        while (frame := await client.frame()).get("id") != "~fuzz~sync~":
            if "kind" in frame and "id" not in frame:
                continue  # an event
            if frame["ok"]:
                subscribed = subscribed or "client_id" in frame["data"]
            else:
                assert frame["error"]["code"] in DOCUMENTED, frame
                assert isinstance(frame["error"]["message"], str)
    answer = await client.call("status")
    assert answer["ok"] is True
    assert daemon.tree.children["control"].state.value == "running"
