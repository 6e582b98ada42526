"""Fuzz the control socket: every answer is a documented error code or a success, never a crash."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshactors.daemon.services import Services
from meshactors.wire.ipc import BadFrame, ErrorCode, parse_request
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
