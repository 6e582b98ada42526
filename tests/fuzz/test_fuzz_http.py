"""Fuzz HTTP on the control socket: every answer is an HTTP status with a documented code."""

from __future__ import annotations

import json

import trio
from hypothesis import strategies as st

from meshactors.control.http_errors import HttpErrorCode, status_for
from meshactors.daemon.services import Services
from meshactors.wire.ipc import ErrorCode
from tests.control.httptools import encode_request
from tests.fuzz.conftest import examples_of
from tests.fuzz.strategies import json_values, mutated

DOCUMENTED = {code.value for code in ErrorCode} | {code.value for code in HttpErrorCode}
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]
# Paths a fuzzer may hit without changing the daemon's life (no shutdown, no event stream).
SAFE_PATHS = [
    "/v1/health",
    "/v1/status",
    "/v1/version",
    "/v1/inspect",
    "/v1/peers",
    "/v1/networks_list",
    "/v1/nope",
    "/v1/",
    "/",
    "/v1/status?x=1",
    "/v1/peers?network=a&all=1",
]
ANSWER_TIMEOUT = 10.0  # seconds one fuzzed request may take to be answered and closed
# The statuses docs/protocol.md lists beside the table's own for one code.
SPECIAL_STATUSES = {
    ("bad_request", 417),
    ("bad_request", 505),
    ("frame_too_large", 431),
    ("forbidden", 421),
}
GOOD = encode_request("POST", "/v1/status", b"{}")


def _without_events(data: bytes) -> bytes:
    """Keep the fuzzer off the endless event stream (tested in tests/control/test_http_sse.py)."""
    return data.replace(b"/events", b"/evxnts")


headers = st.dictionaries(
    st.sampled_from(["Content_Length", "Connection", "Expect", "Host", "X_Any", "Last_Event_ID"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    max_size=3,
)
requests = (
    st.builds(
        encode_request,
        st.sampled_from(METHODS),
        st.sampled_from(SAFE_PATHS) | st.text(max_size=30).map(lambda t: "/v1/" + t),
        st.none() | st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()),
    )
    | st.builds(
        lambda method, path, extra: encode_request(method, path, None, **extra),
        st.sampled_from(METHODS),
        st.sampled_from(SAFE_PATHS),
        headers,
    )
    | st.tuples(st.sampled_from(METHODS), st.binary(max_size=200)).map(
        lambda pair: pair[0].encode() + b" " + pair[1]
    )
    | mutated(GOOD[5:]).map(lambda rest: b"POST " + rest)
).map(_without_events)


def parse_responses(data: bytes) -> list[tuple[int, bytes]]:
    """Every (status, body) in `data`, read by Content-Length; asserts each is well formed."""
    answers = []
    while data:
        head, separator, data = data.partition(b"\r\n\r\n")
        assert separator, f"unterminated response head {head[:200]!r}"
        status_line, *lines = head.decode("ascii").split("\r\n")
        version, status, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        fields = dict(line.lower().split(": ", 1) for line in lines)
        length = int(fields.get("content-length", "0"))
        answers.append((int(status), data[:length]))
        data = data[length:]
    return answers


def check_answer(status: int, body: bytes) -> None:
    """A success, or an error whose code is documented and maps to this status."""
    if not body:  # HEAD answers carry no body
        return
    answer = json.loads(body)
    if answer["ok"]:
        assert status in (200, 202), (status, answer)
        return
    code = answer["error"]["code"]
    assert code in DOCUMENTED, answer
    assert isinstance(answer["error"]["message"], str)
    assert status == status_for(code) or (code, status) in SPECIAL_STATUSES, (status, answer)


async def exchange(daemon: Services, request: bytes) -> bytes:
    """Send `request`, half-close, and read until the daemon closes."""
    stream = await trio.open_unix_socket(str(daemon.paths.socket))
    received = bytearray()
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()
        with trio.fail_after(ANSWER_TIMEOUT):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return bytes(received)


async def test_daemon_answers_every_hostile_http_request(daemon: Services) -> None:
    seen = await examples_of(requests)
    answered = 0
    for request in seen:
        for status, body in parse_responses(await exchange(daemon, request)):
            check_answer(status, body)
            answered += 1
    assert answered > len(seen) // 2
    health = parse_responses(await exchange(daemon, encode_request("GET", "/v1/health")))
    assert health[0][0] == 200
    assert daemon.tree.children["control"].state.value == "running"
