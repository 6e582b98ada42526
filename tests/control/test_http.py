"""HTTP on the control socket, in-process daemon, raw sockets: routes, statuses, keep-alive."""

from __future__ import annotations

import json
import select
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from meshactors.control import supervisor
from meshactors.control.http_parse import MAX_BODY_BYTES, MAX_HEAD_BYTES, MAX_QUERY_FIELDS
from meshactors.control.http_routes import json_object
from meshactors.control.session import Session
from meshactors.daemon.services import Services
from meshactors.ops.optable import Op
from meshactors.wire.ipc import BadFrame, ErrorCode, OpError, parse_request
from meshactors.wire.jsonlimits import MAX_JSON_DEPTH
from tests.control.httptools import encode_request
from tests.daemon_tree import Connect

TOO_MANY_FIELDS = "&".join(f"f{n}=1" for n in range(MAX_QUERY_FIELDS + 1))


@attrs.frozen
class StandInSendParams:
    """Params of a stand-in `send` op: the HTTP tests check Idempotency-Key, not sending."""

    to: str
    client_message_id: str | None = None


@attrs.frozen
class Paging:
    """Params of a stand-in GET op, to check query conversion by declared type."""

    all: bool = False
    limit: int | None = None
    ratio: float = 1.0
    status: str | None = None


def add_op(daemon: Services, op: Op[Any]) -> None:
    daemon.ops.ops[op.name] = op


async def test_get_routes_answer_like_the_socket(daemon: Services, http: Connect) -> None:
    client = await http()
    version = await client.request("GET", "/v1/version")
    assert version.status == 200
    assert version.headers["content-type"] == "application/json"
    assert "status" in version.json()["data"]["ops"]
    status = await client.request("GET", "/v1/status")
    assert status.json()["data"]["device_id"] == daemon.identity.device_id
    health = await client.request("GET", "/v1/health")
    assert health.json()["ok"] is True
    assert health.json()["data"]["status"] == "ok"


async def test_keep_alive_serves_several_requests_on_one_connection(
    daemon: Services, http: Connect
) -> None:
    client = await http()
    await client.send(encode_request("GET", "/v1/health") + encode_request("GET", "/v1/status"))
    first, second = await client.response(), await client.response()
    assert (first.status, second.status) == (200, 200)
    assert second.json()["data"]["clients"] == 1
    assert "connection" not in first.headers
    last = await client.request("GET", "/v1/version", Connection="close")
    assert last.headers["connection"] == "close"
    assert await client.closed()


async def test_post_runs_any_op_with_a_json_body(http: Connect) -> None:
    client = await http()
    inspect = await client.request("POST", "/v1/inspect", b"{}")
    assert inspect.status == 200
    assert inspect.json()["data"]["name"] == "daemon"
    empty = await client.request("POST", "/v1/status", b"")
    assert empty.status == 200


@settings(max_examples=25, deadline=None)
@given(
    depth=st.integers(min_value=5_000, max_value=200_000),
    openers=st.lists(st.sampled_from([b"[", b'{"k":', b"[1,", b' { "" : ']), min_size=1),
)
def test_a_body_nested_too_deep_to_parse_is_bad_json_too_deep_as_a_json_line_is(
    depth: int, openers: list[bytes]
) -> None:
    """Whatever Python's parser gives up on reads as the documented refusal, not its text,
    and as the same content sent as a JSON line is refused (parse_request)."""
    body = b'{"payload":' + b"".join(openers[n % len(openers)] for n in range(depth))
    with pytest.raises(OpError) as refused:
        json_object(body)
    with pytest.raises(BadFrame) as refused_as_a_line:
        parse_request(body)
    assert refused.value.code == refused_as_a_line.value.code == ErrorCode.BAD_JSON
    too_deep = f"nested deeper than {MAX_JSON_DEPTH} arrays and objects"
    assert refused.value.message == refused_as_a_line.value.message == too_deep


OTHER_ENCODINGS = ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]


def not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@settings(max_examples=200, deadline=None)
@given(
    body=st.one_of(
        st.builds(  # a JSON object, in an encoding `json.loads` would guess from bytes
            lambda value, encoding: json.dumps(value).encode(encoding),
            st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
            st.sampled_from(OTHER_ENCODINGS),
        ),
        st.binary(min_size=1).filter(not_utf8),
    )
)
def test_a_body_not_in_utf8_is_bad_json_as_a_json_line_is(body: bytes) -> None:
    """A body is read as strictly as a JSON line: UTF-8, no BOM, no other encoding guessed."""
    with pytest.raises(OpError) as refused:
        json_object(body)
    with pytest.raises(BadFrame) as refused_as_a_line:
        parse_request(body)
    assert refused.value.code == refused_as_a_line.value.code == ErrorCode.BAD_JSON


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/status", b"{not json", 400, "bad_json"),
        ("POST", "/v1/status", b"[1]", 400, "bad_json"),
        ("POST", "/v1/status", b"\xff", 400, "bad_json"),
        ("POST", "/v1/status", b"\xef\xbb\xbf{}", 400, "bad_json"),  # a UTF-8 BOM
        ("POST", "/v1/status", "{}".encode("utf-16"), 400, "bad_json"),
        ("POST", "/v1/status", b"[" * 100_000, 400, "bad_json"),
        ("POST", "/v1/status", b'{"a":' + b"[" * 100_000, 400, "bad_json"),
        ("POST", "/v1/status", b'{"extra":1}', 400, "invalid_params"),
        ("POST", "/v1/no_such_op", b"{}", 404, "unknown_route"),
        ("GET", "/v1/typo", None, 404, "unknown_route"),
        ("DELETE", "/v1/typo", None, 404, "unknown_route"),
        ("POST", "/v1/events_subscribe", b"{}", 400, "bad_request"),
        ("POST", "/v1/rpc_register", b'{"network":"n","method":"m"}', 400, "bad_request"),
        ("POST", "/v1/channel_subscribe", b'{"network":"n","channel":"c"}', 400, "bad_request"),
        ("POST", "/v1/status?x=1", b"{}", 400, "bad_request"),
        ("GET", "/v1/peers", None, 400, "invalid_params"),  # peers_list needs `network`
        ("GET", "/v1/status?verbose=1", None, 400, "invalid_params"),
        ("GET", "/nope", None, 404, "unknown_route"),
        ("GET", "/v1/a/b", None, 404, "unknown_route"),
        ("GET", "/v1/inspect", None, 405, "method_not_allowed"),
        ("DELETE", "/v1/status", None, 405, "method_not_allowed"),
        ("PUT", "/v1/send", b"{}", 405, "method_not_allowed"),
        ("GET", "/v1/events?since=x", None, 400, "invalid_params"),
        ("GET", "/v1/events?since=-1", None, 400, "invalid_params"),
        ("GET", "/v1/events?since=1&since=2", None, 400, "invalid_params"),
        ("GET", "/v1/health?a=%ff", None, 400, "invalid_params"),  # not UTF-8
        ("GET", f"/v1/status?{TOO_MANY_FIELDS}", None, 400, "invalid_params"),
    ],
)
async def test_errors_have_statuses_and_json_bodies(
    http: Connect, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    client = await http()
    response = await client.request(method, path, body)
    assert (response.status, response.code) == (status, code), response.body
    assert response.json()["ok"] is False
    assert response.json()["error"]["message"]
    assert (await client.request("GET", "/v1/health")).status == 200  # the connection survives


async def test_405_names_the_allowed_methods(http: Connect) -> None:
    response = await (await http()).request("DELETE", "/v1/status")
    assert response.headers["allow"] == "GET, HEAD, POST"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n", 400),
        (b"POST /v1/status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 431),
        (
            b"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % (MAX_BODY_BYTES + 1),
            413,
        ),
        (b"GET /v1/status HTTP/9.9\r\nHost: x\r\n\r\n", 505),
        (b"GET /v1/status\r\n\r\n", 400),
    ],
)
async def test_unreadable_requests_are_answered_then_closed(
    http: Connect, raw: bytes, status: int
) -> None:
    client = await http()
    await client.send(raw)
    response = await client.response()
    assert response.status == status
    assert response.headers["connection"] == "close"
    assert response.json()["ok"] is False
    assert await client.closed()


async def test_get_query_values_are_converted_by_the_ops_declared_types(
    daemon: Services, http: Connect
) -> None:
    seen: list[Paging] = []

    async def outbox_list(session: Session, params: Paging) -> dict[str, Any]:
        seen.append(params)
        return {"rows": []}

    add_op(daemon, Op("outbox_list", Paging, outbox_list, "stand-in"))
    client = await http()
    ok = await client.request("GET", "/v1/outbox?all=true&limit=5&ratio=0.5&status=pending")
    assert ok.status == 200
    assert seen == [Paging(all=True, limit=5, ratio=0.5, status="pending")]
    assert (await client.request("GET", "/v1/outbox?all=0")).status == 200
    assert seen[-1].all is False
    for zeros in ("0" * 20, "0" * 5000):  # leading zeros are no digits: 1 however many lead
        assert (await client.request("GET", f"/v1/outbox?limit={zeros}1")).status == 200
        assert seen[-1].limit == 1
    assert (await client.request("GET", "/v1/outbox?limit=-000")).status == 200
    assert seen[-1].limit == 0
    for query, field in [("all=yes", "all"), ("limit=5x", "limit"), ("ratio=nan", "ratio")]:
        bad = await client.request("GET", f"/v1/outbox?{query}")
        assert bad.code == "invalid_params"
        assert f"params.{field}" in bad.json()["error"]["message"]
    extra = await client.request("GET", "/v1/outbox?bogus=1")
    assert extra.code == "invalid_params"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/inbox?limit=99999999999999999999999",
        "/v1/inbox?limit=-00099999999999999999999",
        "/v1/events?since=1" + "0" * 5000,  # never parsed: past the digits int() takes
    ],
)
async def test_a_query_integer_past_64_bits_is_said_to_be_out_of_range(
    http: Connect, path: str
) -> None:
    client = await http()
    response = await client.request("GET", path)
    assert (response.status, response.code) == (400, "invalid_params")
    field = path.split("?")[1].split("=")[0]
    message = f"params.{field}: out of range, an integer beyond 64 bits"
    assert response.json()["error"]["message"] == message


async def test_send_statuses_and_the_idempotency_key_rule(daemon: Services, http: Connect) -> None:
    seen: list[StandInSendParams] = []

    async def send(session: Session, params: StandInSendParams) -> dict[str, Any]:
        seen.append(params)
        if params.to == "clash":
            raise OpError(ErrorCode.CONFLICT, "same id, different message")
        outcome = "duplicate" if params.client_message_id == "again" else "accepted"
        return {"outcome": outcome, "client_message_id": params.client_message_id}

    add_op(daemon, Op("send", StandInSendParams, send, "stand-in", idempotency_key=True))
    client = await http()
    accepted = await client.request("POST", "/v1/send", b'{"to":"bob"}', Idempotency_Key="k1")
    assert accepted.status == 202
    assert seen[-1].client_message_id == "k1"  # the header fills a missing body field
    body_wins = await client.request(
        "POST", "/v1/send", b'{"to":"bob","client_message_id":"body"}', Idempotency_Key="hdr"
    )
    assert body_wins.status == 202
    assert seen[-1].client_message_id == "body"  # the body field wins over the header
    duplicate = await client.request("POST", "/v1/send", b'{"to":"bob"}', Idempotency_Key="again")
    assert duplicate.status == 200
    conflict = await client.request("POST", "/v1/send", b'{"to":"clash"}')
    assert (conflict.status, conflict.code) == (409, "conflict")


async def test_requeue_path_maps_to_its_op(daemon: Services, http: Connect) -> None:
    @attrs.frozen
    class Requeue:
        id: int

    async def outbox_requeue(session: Session, params: Requeue) -> dict[str, Any]:
        return {"requeued": params.id}

    add_op(daemon, Op("outbox_requeue", Requeue, outbox_requeue, "stand-in"))
    response = await (await http()).request("POST", "/v1/outbox/requeue", b'{"id":7}')
    assert response.json() == {"ok": True, "data": {"requeued": 7}}


async def test_an_op_that_fails_is_500_and_the_daemon_lives_on(
    daemon: Services, http: Connect
) -> None:
    async def broken(session: Session, params: Any) -> None:
        raise RuntimeError("boom")

    add_op(daemon, Op("broken", StandInSendParams, broken, "stand-in"))
    client = await http()
    response = await client.request("POST", "/v1/broken", b'{"to":"x"}')
    assert (response.status, response.code) == (500, "internal")
    assert (await client.request("GET", "/v1/health")).status == 200


async def test_http_clients_are_client_actors_that_leave_on_close(
    daemon: Services, http: Connect
) -> None:
    client = await http()
    await client.request("GET", "/v1/health")
    control = daemon.tree.children["control"]
    (node,) = [n for n in control.children.values() if n.kind == "client"]
    assert node.figures is not None
    assert node.figures()["requests"] == 1
    assert node.figures()["protocol"] == "http"
    await client.request("GET", "/nope", Connection="close")
    with trio.fail_after(5):
        while node.name in control.children:
            await trio.testing.wait_all_tasks_blocked()


async def test_json_lines_still_work_next_to_http(daemon: Services, connect: Any) -> None:
    lines = await connect()
    assert (await lines.call("status"))["ok"] is True


@pytest.mark.parametrize("daemon", [{"max_clients": 1}], indirect=True)
async def test_a_full_daemon_refuses_each_client_in_its_own_protocol(
    connect: Any, http: Connect
) -> None:
    holder = await connect()
    assert (await holder.call("status"))["ok"]
    refused = await http()
    response = await refused.request("GET", "/v1/status")
    assert (response.status, response.code) == (503, "unavailable")
    assert await refused.closed()
    line = await connect()
    await line.send_raw(b'{"id":1,"op":"status"}\n')
    frame = await line.frame()
    assert (frame["id"], frame["error"]["code"]) == (None, "unavailable")
    assert frame["error"]["message"] == "at most 1 clients at once"


@pytest.mark.parametrize("daemon", [{"max_clients": 1}], indirect=True)
async def test_silent_refused_connections_do_not_hold_up_the_next_refusal(
    connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refused connection is answered in its own task: one that says nothing keeps only
    itself waiting, and past MAX_REFUSING of them a new one is closed unanswered."""
    monkeypatch.setattr(supervisor, "REFUSAL_TIMEOUT", 600.0)  # the silent ones wait for good
    monkeypatch.setattr(supervisor, "MAX_REFUSING", 3)
    holder = await connect()
    assert (await holder.call("status"))["ok"]
    silent = [await connect() for _ in range(2)]
    line = await connect()
    await line.send_raw(b'{"id":1,"op":"status"}\n')
    with trio.fail_after(10):
        frame = await line.frame()
        assert (frame["id"], frame["error"]["code"]) == (None, "unavailable")
        with pytest.raises(EOFError):
            await line.frame()
        await trio.testing.wait_all_tasks_blocked()  # its refusal is over
        silent.append(await connect())  # the third being refused
        with pytest.raises(EOFError):
            await (await connect()).frame()  # closed at once, unanswered
    waiting = [client.stream.socket.fileno() for client in silent]
    assert select.select(waiting, [], [], 0)[0] == []  # no answer, no close: still being refused


@pytest.mark.parametrize("path", ["/v1/status", "/v1/peers?network=nope"])
async def test_head_is_answered_like_get_without_a_body(http: Connect, path: str) -> None:
    client = await http()
    got = await client.request("GET", path)
    await client.send(encode_request("HEAD", path))
    status, headers = await client.head()
    assert (status, headers["content-type"]) == (got.status, got.headers["content-type"])
    assert int(headers["content-length"]) > 0  # what a GET would carry, not sent
    assert (await client.request("GET", "/v1/health")).status == 200  # no body came between


async def test_head_of_the_event_stream_is_its_head_alone(http: Connect) -> None:
    client = await http()
    await client.send(encode_request("HEAD", "/v1/events"))
    status, headers = await client.head()
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert await client.closed()


async def test_a_query_that_cannot_be_read_names_what_is_wrong(http: Connect) -> None:
    client = await http()
    cases = [
        ("ok=1&bad%ff=1", "'bad%ff'"),
        ("x=%ff", "'x'"),
        ("=x", "a query field with no name"),
        ("ok=1&=", "a query field with no name"),
        (TOO_MANY_FIELDS, f"at most {MAX_QUERY_FIELDS}"),
    ]
    for query, told in cases:
        response = await client.request("GET", f"/v1/status?{query}")
        assert response.code == "invalid_params"
        assert told in response.json()["error"]["message"]
