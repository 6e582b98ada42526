"""Fuzz plain HTTP on the broker's port: any request line, path and upgrade headers get an
answer h11 can read (never wsproto's empty 400) or the 101, and the broker never fails."""

from __future__ import annotations

import h11
import trio
import trio.testing
from hypothesis import strategies as st
from nacl.signing import SigningKey

from tests.broker.support import WAIT_S, joined, start_broker
from tests.fuzz.conftest import examples_of
from tests.fuzz.strategies import mutated

BROKER_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"]
BROKER_TARGETS = ["/v1", "/health", "/health?x=1", "/", "/v1/", "/v1?x=1", "/healthz", "*"]
# the headers of a good upgrade, each of which a fuzzed request may leave out, change or repeat
GOOD_UPGRADE_FIELDS = [
    ("Host", "x"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]
GOOD_UPGRADE = (
    "GET /v1 HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in GOOD_UPGRADE_FIELDS)
).encode() + b"\r\n"

field_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
fields = st.lists(
    st.sampled_from(GOOD_UPGRADE_FIELDS)
    | st.tuples(st.sampled_from([name for name, _ in GOOD_UPGRADE_FIELDS]), field_text)
    | st.tuples(st.from_regex(r"[A-Za-z-]{1,12}", fullmatch=True), field_text),
    max_size=7,
)
request_lines = st.tuples(
    st.sampled_from(BROKER_METHODS) | st.from_regex(r"[A-Za-z]{1,8}", fullmatch=True),
    st.sampled_from(BROKER_TARGETS) | st.text(max_size=30).map(lambda text: "/" + text),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1 x"]),
)
broker_requests = (
    st.builds(
        lambda line, headers: (
            (
                " ".join(line) + "\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
            ).encode("utf-8", "surrogatepass")
            + b"\r\n"
        ),
        request_lines,
        fields,
    )
    | mutated(GOOD_UPGRADE)
    | st.binary(min_size=1, max_size=200)
)


async def broker_answer(port: int, request: bytes) -> bytes:
    """Send `request`, half-close, and read until the broker closes (or to the 101's end)."""
    received = b""
    with trio.fail_after(WAIT_S):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(request)
            await stream.send_eof()
            while chunk := await stream.receive_some():
                received += chunk
                if received.startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n" in received:
                    break
    return received


def check_broker_answer(request: bytes, answer: bytes) -> None:
    """The answer is well-formed HTTP/1.1, and unless it is the upgrade's 101 it has a body
    (HEAD: it says how long)."""
    assert answer, f"no answer to {request!r}"
    if answer.startswith(b"HTTP/1.1 101 "):
        return
    method = "HEAD" if request.startswith(b"HEAD ") else "GET"
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(answer)
    client.receive_data(b"")
    response = client.next_event()
    assert isinstance(response, h11.Response), (request, answer)
    lengths = [int(value) for name, value in response.headers if name == b"content-length"]
    assert lengths and lengths[0] > 0, (request, answer)
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), (request, answer)
        body += event.data
    assert len(body) == (0 if method == "HEAD" else lengths[0]), (request, answer)


async def test_broker_answers_every_hostile_http_request(nursery: trio.Nursery) -> None:
    seen = await examples_of(broker_requests)
    broker, url = await start_broker(nursery)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for request in seen:
        check_broker_answer(request, await broker_answer(port, request))
    with trio.fail_after(WAIT_S):
        while broker.figures()["connections"]:
            await trio.testing.wait_all_tasks_blocked()
    assert broker.figures()["connection_errors"] == 0
    async with joined(url, SigningKey.generate(), "net"):
        pass
