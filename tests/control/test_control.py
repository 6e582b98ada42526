"""The control socket in-process: ops, strict validation, bad frames, concurrency, the tree."""

from __future__ import annotations

from typing import Any

import trio

from meshactors.control.client import OUTGOING_CAPACITY
from meshactors.daemon.services import Services
from meshactors.wire.ipc import MAX_CONCURRENT_REQUESTS, MAX_FRAME_BYTES
from tests.support import LineClient

PIPELINED_TRIES = 30  # connections sending two subscribes at once


async def test_status_names_the_daemon(daemon: Services, connect: Any) -> None:
    client = await connect()
    answer = await client.call("status")
    assert answer["ok"] is True
    data = answer["data"]
    assert data["device_id"] == daemon.identity.device_id
    assert data["socket"] == str(daemon.paths.socket)
    assert data["clients"] == 1
    assert data["client_id"] == "c1"


async def test_version_lists_ops(connect: Any) -> None:
    data = (await (await connect()).call("version"))["data"]
    assert {"status", "version", "inspect", "shutdown", "events_subscribe"} <= set(data["ops"])
    assert data["ipc_api"] == 1


async def test_bad_frames_get_errors_and_the_connection_survives(connect: Any) -> None:
    client = await connect()
    cases = [
        (b"{not json\n", "bad_json", None),
        (b"[1,2]\n", "bad_json", None),
        (b'{"id":null,"op":"status"}\n', "bad_request", None),
        (b'{"id":true,"op":"status"}\n', "bad_request", None),
        (b'{"id":7}\n', "bad_request", 7),
        (b'{"id":8,"op":"nope"}\n', "unknown_op", 8),
        (b'{"id":9,"op":"status","extra":1}\n', "invalid_params", 9),
        (b'{"id":10,"op":"events_subscribe","since":"12"}\n', "invalid_params", 10),
        (b"\xff\xfe\n", "bad_json", None),
    ]
    for line, code, request_id in cases:
        await client.send_raw(line)
        frame = await client.frame()
        assert frame["ok"] is False, line
        assert frame["error"]["code"] == code, (line, frame)
        assert frame["id"] == request_id
        assert frame["error"]["message"]
    assert (await client.call("status"))["ok"] is True


async def test_a_notification_runs_unanswered_unless_it_fails(connect: Any) -> None:
    client = await connect()
    await client.send_raw(b'{"op":"events_subscribe"}\n')  # no id: a notification
    await client.send_raw(b'{"op":"nope"}\n')
    failed = await client.frame()
    assert (failed["id"], failed["ok"], failed["error"]["code"]) == (None, False, "unknown_op")
    status = await client.call("status")  # the next frame answers this: no answer came before
    assert status["ok"] is True
    inspected = await client.call("inspect")
    name = "client " + status["data"]["client_id"]
    (me,) = [node for node in _clients(inspected["data"]) if node["name"] == name]
    assert me["figures"]["events"] is True  # the notification ran
    assert me["inbox"]["size"] == OUTGOING_CAPACITY  # its outgoing channel, as inbox figures


def _clients(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Every `client` node of an inspect tree."""
    found = [tree] if tree.get("kind") == "client" else []
    for child in tree.get("children", []):
        found += _clients(child)
    return found


async def test_oversized_frame_is_refused_and_the_next_one_served(connect: Any) -> None:
    client = await connect()
    await client.send_raw(b'{"id":1,"op":"status","pad":"' + b"x" * MAX_FRAME_BYTES + b'"}\n')
    frame = await client.frame()
    assert frame["error"]["code"] == "frame_too_large"
    assert (await client.call("status"))["ok"] is True


async def test_invalid_params_message_names_the_field(connect: Any) -> None:
    frame = await (await connect()).call("events_subscribe", since="12")
    assert "params.since" in frame["error"]["message"]


async def test_requests_run_concurrently_and_answer_by_id(connect: Any) -> None:
    client = await connect()
    first = await client.send("inspect")
    second = await client.send("status")
    answers = {(await client.frame())["id"], (await client.frame())["id"]}
    assert answers == {first, second}


async def test_concurrency_cap_refuses_the_excess(connect: Any) -> None:
    client = await connect()
    lines = b"".join(b'{"id":%d,"op":"status"}\n' % n for n in range(MAX_CONCURRENT_REQUESTS * 3))
    await client.send_raw(lines)
    codes = [
        (await client.frame()).get("error", {}).get("code") for _ in range(len(lines.splitlines()))
    ]
    assert codes.count(None) >= MAX_CONCURRENT_REQUESTS
    assert set(codes) <= {None, "too_many_requests"}


async def test_client_actor_appears_in_inspect_and_leaves_on_disconnect(
    daemon: Services, connect: Any
) -> None:
    watcher = await connect()
    visitor = await connect()
    await visitor.call("status")
    tree = (await watcher.call("inspect"))["data"]
    control = next(c for c in tree["children"] if c["name"] == "control")
    names = {c["name"] for c in control["children"]}
    assert {"listener", "client c1", "client c2"} <= names
    await visitor.aclose()
    with trio.fail_after(5):
        while "client c2" in daemon.tree.children["control"].children:
            await trio.testing.wait_all_tasks_blocked()
    tree = (await watcher.call("inspect"))["data"]
    control = next(c for c in tree["children"] if c["name"] == "control")
    assert "client c2" not in {c["name"] for c in control["children"]}
    third = await connect()
    assert (await third.call("status"))["data"]["client_id"] == "c3"


async def test_deeply_nested_json_is_bad_json_not_a_crash(connect: Any) -> None:
    client = await connect()
    deep = b'{"a":[' * 50_000 + b"0" + b"]}" * 50_000
    for line in (b"[" * 100_000 + b"]" * 100_000, b'{"id":5,"op":"status","p":' + deep + b"}"):
        await client.send_raw(line + b"\n")
        frame = await client.frame()
        assert frame["id"] is None  # never read: the line was refused before it
        assert frame["error"] == {
            "code": "bad_json",
            "message": "nested deeper than 64 arrays and objects",
        }
    assert (await client.call("status"))["ok"] is True


async def test_a_burst_of_connections_beyond_the_old_backlog_is_served(daemon: Services) -> None:
    answered = 0

    async def one() -> None:
        nonlocal answered
        client = LineClient(await trio.open_unix_socket(str(daemon.paths.socket)))
        assert (await client.call("status"))["ok"] is True
        answered += 1
        await client.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(600):  # more than a 512-connection listen backlog holds
                nursery.start_soon(one)
    assert answered == 600


async def test_a_since_past_the_newest_event_follows_live_events(
    daemon: Services, connect: Any
) -> None:
    """A `since` from an older log (the home was replaced) replays nothing and follows live
    events from the newest, as a subscribe without `since` does."""
    client = await connect()
    answer = await client.call("events_subscribe", since=1_000_000)
    newest = answer["data"]["last_event_id"]
    assert newest < 1_000_000
    daemon.events.publish("test_live", {"n": 1})
    with trio.fail_after(10):
        frame = await client.frame()
    assert (frame["kind"], frame["event_id"], frame["n"]) == ("test_live", newest + 1, 1)


async def test_of_two_subscribes_sent_together_the_first_wins(connect: Any) -> None:
    for _ in range(PIPELINED_TRIES):  # which of the two began its work first once varied
        client = await connect()
        await client.send_raw(
            b'{"id":1,"op":"events_subscribe","since":0}\n{"id":2,"op":"events_subscribe"}\n'
        )
        answers = {}
        while len(answers) < 2:
            frame = await client.frame()
            if "id" in frame:
                answers[frame["id"]] = frame["ok"] or frame["error"]["code"]
        assert answers == {1: True, 2: "conflict"}
        await client.aclose()


async def test_an_empty_string_id_is_refused_saying_what_an_id_may_be(connect: Any) -> None:
    client = await connect()
    await client.send_raw(b'{"id":"","op":"status"}\n')
    frame = await client.frame()
    assert (frame["id"], frame["error"]["code"]) == (None, "bad_request")
    assert "1 to 128 characters" in frame["error"]["message"]
