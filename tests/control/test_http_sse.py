"""GET /v1/events as server-sent events: format, Last-Event-ID replay, keepalives, lag, hang-up."""

from __future__ import annotations

from typing import Any, cast

import attrs
import h11
import pytest
import structlog
import trio
import trio.testing

from meshactors.actors import Broadcast, Subscriber
from meshactors.control import http as http_module
from meshactors.control import sse
from meshactors.control.event_stream import HubSubscription, SlowConsumer, follow
from meshactors.control.http import HttpConnection
from meshactors.control.sse import KEEPALIVE, KEEPALIVE_INTERVAL, SseSink, sse_message
from meshactors.daemon.services import Services
from meshactors.event_hub import PERSIST_BATCH
from meshactors.ops import system_ops
from meshactors.ops.optable import Op
from meshactors.store.events import EVENT_LOG_LIMIT, PRUNE_BATCH, Event
from tests.control.httptools import RawHttp, encode_request, sse_events
from tests.daemon_tree import Connect
from tests.support import client_figures, publish


async def open_events(http: Connect, path: str = "/v1/events", **headers: str) -> RawHttp:
    """A new connection streaming `path`'s events (the headers checked)."""
    return await stream_events(await http(), path, **headers)


async def stream_events(client: RawHttp, path: str = "/v1/events", **headers: str) -> RawHttp:
    """`client`, its connection now streaming `path`'s events (the headers checked)."""
    await client.send(encode_request("GET", path, **headers))
    status, response_headers = await client.head()
    assert status == 200
    assert response_headers["content-type"].startswith("text/event-stream")
    assert response_headers["transfer-encoding"] == "chunked"
    return client


async def next_events(client: RawHttp, count: int) -> list[dict[str, Any]]:
    """The next `count` events of a chunked event stream (one message or comment a chunk)."""
    events: list[dict[str, Any]] = []
    while len(events) < count:
        message = await client.chunk()
        assert message.endswith(b"\n\n")
        events += sse_events(message)
    return events


async def test_live_events_carry_id_kind_and_json_data(daemon: Services, http: Connect) -> None:
    client = await open_events(http)
    (event,) = await publish(daemon.events, "peer_join", {"peer": "bob"})
    (got,) = await next_events(client, 1)
    assert got["id"] == str(event.event_id)
    assert got["event"] == "peer_join"
    assert got["data"] == {"event_id": event.event_id, "at_ms": event.at_ms, "peer": "bob"}


async def test_last_event_id_replays_the_log_then_goes_live(
    daemon: Services, http: Connect
) -> None:
    first, second, third = await publish(daemon.events, "tick", *({"n": n} for n in range(3)))
    client = await open_events(http, Last_Event_ID=str(first.event_id))
    replayed = await next_events(client, 2)
    assert [e["id"] for e in replayed] == [str(second.event_id), str(third.event_id)]
    (live,) = await publish(daemon.events, "tick", {"n": 3})
    (got,) = await next_events(client, 1)
    assert got["id"] == str(live.event_id)


async def test_since_in_the_query_replays_too(daemon: Services, http: Connect) -> None:
    (event,) = await publish(daemon.events, "tick", {})
    client = await open_events(http, f"/v1/events?since={event.event_id - 1}")
    (got,) = await next_events(client, 1)
    assert got["id"] == str(event.event_id)


async def test_last_event_id_wins_over_since(daemon: Services, http: Connect) -> None:
    old, new = await publish(daemon.events, "tick", {}, {})
    client = await open_events(http, "/v1/events?since=0", Last_Event_ID=str(old.event_id))
    (got,) = await next_events(client, 1)
    assert got["id"] == str(new.event_id)


async def test_a_pruned_stretch_is_reported_as_events_gap(daemon: Services, http: Connect) -> None:
    for _ in range((EVENT_LOG_LIMIT + PRUNE_BATCH) // PERSIST_BATCH + 1):
        for n in range(PERSIST_BATCH):
            daemon.events.publish("tick", {"n": n})
        await daemon.events.replay(daemon.events.last_event_id, 1)  # lets the log catch up
    client = await open_events(http, Last_Event_ID="0")
    gap, first = await next_events(client, 2)
    assert gap["event"] == "events_gap"
    assert "id" not in gap
    assert gap["data"]["since"] == 0
    oldest_kept = gap["data"]["oldest_kept"]
    assert oldest_kept > 1
    assert first["id"] == str(oldest_kept)


async def test_bad_last_event_id_is_400(http: Connect) -> None:
    response = await (await http()).request("GET", "/v1/events", Last_Event_ID="abc")
    assert (response.status, response.code) == (400, "invalid_params")


async def test_hanging_up_ends_the_subscription(daemon: Services, http: Connect) -> None:
    internal = daemon.events.broadcast.subscriber_count  # the outbox watches for peer_active
    client = await open_events(http)
    assert daemon.events.broadcast.subscriber_count == internal + 1
    await client.stream.aclose()
    with trio.fail_after(5):
        while daemon.events.broadcast.subscriber_count > internal:
            await trio.testing.wait_all_tasks_blocked()
    control = daemon.tree.children["control"]
    with trio.fail_after(5):
        while any(node.kind == "client" for node in control.children.values()):
            await trio.testing.wait_all_tasks_blocked()


async def test_inspect_shows_an_event_stream_connection_as_subscribed(
    http: Connect, connect: Any
) -> None:
    client = await http()
    client_id = (await client.request("GET", "/v1/status")).json()["data"]["client_id"]
    await stream_events(client)  # on the same connection: the same client actor
    figures = await client_figures(await connect(), client_id)
    assert (figures["protocol"], figures["events"]) == ("http", True)
    assert figures["events_lagged"] == 0


def test_notices_have_no_id_so_reconnects_resume_from_real_events() -> None:
    assert sse_message("events_gap", {"since": 3, "oldest_kept": 9}) == (
        b'event: events_gap\ndata: {"since":3,"oldest_kept":9}\n\n'
    )
    assert sse_message("tick", {"text": "a\nb"}, 7) == (
        b'id: 7\nevent: tick\ndata: {"text":"a\\nb"}\n\n'
    )


async def test_keepalive_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    server, client = trio.testing.memory_stream_pair()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(SseSink(server.send_all).keepalive, KEEPALIVE_INTERVAL)
        for beat in (1, 2):
            assert await client.receive_some(100) == KEEPALIVE
            assert trio.current_time() - start == pytest.approx(beat * KEEPALIVE_INTERVAL)
        nursery.cancel_scope.cancel()


async def test_a_lagging_reader_gets_a_lagged_event() -> None:
    server, client = trio.testing.memory_stream_pair()
    broadcast = Broadcast[Event]()
    live = broadcast.subscribe(1)
    for n in range(1, 4):
        broadcast.publish(Event(n, "tick", {}, 0))
    reader = RawHttp(client)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, HubSubscription(live, 0), 0, SseSink(server.send_all))
            got = sse_events(await reader.until(b"\n\n") + await reader.until(b"\n\n"))
            nursery.cancel_scope.cancel()
    assert got[0]["id"] == "1"
    assert got[1] == {"event": "lagged", "data": {"skipped": 2}}


async def test_a_reader_that_stops_reading_is_cut_off_past_the_lag_limit_and_logged_so(
    daemon: Services, http: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sse, "LAG_DISCONNECT_LIMIT", 100)
    await open_events(http)  # and never read
    clients = daemon.tree.children["control"].children
    padding = "x" * 4096
    with structlog.testing.capture_logs() as logs:
        while "client c1" in clients:  # its socket fills, then its queue: it lags, is cut
            await publish(daemon.events, "test_noise", *({"padding": padding} for _ in range(50)))
    events = [log["event"] for log in logs if log.get("client") == "c1"]
    assert "client cut off: it stopped reading" in events, logs


@attrs.define
class LiveOnlyHub:
    """An event hub of live events alone (no log), for an event stream served under MockClock
    (an in-process daemon's store thread cannot run there)."""

    broadcast: Broadcast[Event] = attrs.field(factory=Broadcast)

    async def subscribe(
        self, capacity: int, lag_limit: int | None = None
    ) -> tuple[Subscriber[Event], int]:
        return self.broadcast.subscribe(capacity, lag_limit), 0


@attrs.frozen
class EventsOnlyTable:
    """An op table with the event stream's route alone."""

    get_paths: dict[str, str] = attrs.field(factory=lambda: {"/v1/events": "events_subscribe"})
    post_paths: dict[str, str] = attrs.field(factory=dict)
    ops: dict[str, Op[Any]] = attrs.field(
        factory=lambda: {op.name: op for op in system_ops.OPS if op.name == "events_subscribe"}
    )


@attrs.frozen
class EventsOnlyServices:
    """What an event stream's session reaches: the op table and the hub."""

    ops: EventsOnlyTable = attrs.field(factory=EventsOnlyTable)
    events: LiveOnlyHub = attrs.field(factory=LiveOnlyHub)


@attrs.define
class EventsOnlySession:
    """A session stand-in for an event stream served alone."""

    services: EventsOnlyServices = attrs.field(factory=EventsOnlyServices)
    client_id: str = "c1"
    event_stream: HubSubscription | None = None
    events_subscribed: bool = False


@attrs.define
class NoFigures:
    """The client actor's counters, for a connection served without one."""

    requests: int = 0
    errors: int = 0


async def test_a_reader_stalled_past_the_write_timeout_is_told_lagged_and_kept(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a JSON-lines subscriber: a reader that takes nothing for longer than a write of
    an answer may take misses events, is told so, and keeps its stream."""
    monkeypatch.setattr(sse, "EVENT_CAPACITY", 2)
    server, client = trio.testing.lockstep_stream_pair()  # a write waits for the reader
    session = EventsOnlySession()
    broadcast = session.services.events.broadcast
    reader = RawHttp(client)
    with trio.fail_after(10 * http_module.WRITE_TIMEOUT):  # on the mock clock
        async with trio.open_nursery() as nursery:
            connection = HttpConnection(server, cast(Any, session), NoFigures(), server.send_all)
            nursery.start_soon(connection.serve)
            await stream_events(reader)
            broadcast.publish(Event(1, "tick", {}, 0))
            await trio.testing.wait_all_tasks_blocked()  # its write waits for the reader
            for n in range(2, 6):  # 2 and 3 are queued, 4 and 5 skipped
                broadcast.publish(Event(n, "tick", {}, 0))
            await trio.sleep(2 * http_module.WRITE_TIMEOUT)  # the mock clock's: it stalls
            got = [(e.get("id"), e["event"], e["data"]) for e in await next_events(reader, 4)]
            assert [(i, kind) for i, kind, _ in got] == [
                ("1", "tick"),
                ("2", "tick"),
                ("3", "tick"),
                (None, "lagged"),
            ]
            assert got[-1][2] == {"skipped": 2}
            broadcast.publish(Event(6, "tick", {}, 0))
            (after,) = await next_events(reader, 1)
            assert after["id"] == "6"
            await client.aclose()  # the stream ends with the hang-up


async def test_a_reader_cut_off_for_lag_gets_no_last_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cut-off found while no write waits (the stream waiting on its queue) still cuts the
    body short: a last chunk would tell the client the daemon ended it, so it would not resume."""
    monkeypatch.setattr(sse, "EVENT_CAPACITY", 2)
    monkeypatch.setattr(sse, "LAG_DISCONNECT_LIMIT", 3)
    monkeypatch.setattr(sse, "cleanup_scope", lambda: trio.move_on_after(5, shield=True))
    server, client = trio.testing.memory_stream_pair()  # writes never wait
    session = EventsOnlySession()
    broadcast = session.services.events.broadcast
    reader = RawHttp(client)

    async def serve_then_close() -> None:
        connection = HttpConnection(server, cast(Any, session), NoFigures(), server.send_all)
        async with server:  # as the client actor closes a connection cut off
            with pytest.RaisesGroup(SlowConsumer, flatten_subgroups=True):
                await connection.serve()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_then_close)
            await stream_events(reader)
            await trio.testing.wait_all_tasks_blocked()  # the stream waits on its queue
            for n in range(1, 12):  # no checkpoint between: 2 queued, 9 skipped, past 3
                broadcast.publish(Event(n, "tick", {}, 0))
            with pytest.raises(EOFError):  # the body ends with the connection, cut short
                while await reader.chunk():
                    pass


async def test_input_pipelined_behind_an_event_stream_is_read_up_to_its_limit_uncopied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a client sends while its request runs is kept up to MAX_READ_AHEAD and no more;
    counting it never reads h11's trailing_data, which copies the whole buffer each time
    (a byte a write up to the limit would cost O(n²))."""
    monkeypatch.setattr(http_module, "MAX_READ_AHEAD", 64)
    monkeypatch.setattr(sse, "cleanup_scope", lambda: trio.move_on_after(5, shield=True))
    copies = 0
    trailing_data = h11.Connection.trailing_data

    def counted(connection: h11.Connection) -> tuple[bytes, bool]:
        nonlocal copies
        copies += 1
        return trailing_data.__get__(connection)

    server, client = trio.testing.memory_stream_pair()
    connection = HttpConnection(
        server, cast(Any, EventsOnlySession()), NoFigures(), server.send_all
    )
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.serve)
            await stream_events(RawHttp(client))
            await trio.testing.wait_all_tasks_blocked()  # its hang-up watch reads
            monkeypatch.setattr(h11.Connection, "trailing_data", property(counted))
            for _ in range(100):
                await client.send_all(b"x")
                await trio.testing.wait_all_tasks_blocked()  # read one byte at a time
            assert copies == 0
            assert trailing_data.__get__(connection._h11) == (b"x" * 64, False)
            nursery.cancel_scope.cancel()


async def test_stopping_the_daemon_ends_an_event_stream_whole(daemon: Services) -> None:
    """`daemon down` with a client following events: the response ends with its last chunk
    (curl exits 0, not 18 for a cut transfer), so the client can tell it was ended."""
    stream = await trio.open_unix_socket(str(daemon.paths.socket))
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target="/v1/events", headers=[("Host", "localhost")])
    await stream.send_all(b"".join(client.send(e) or b"" for e in (request, h11.EndOfMessage())))
    seen: list[type[h11.Event]] = []
    with trio.fail_after(10):
        while h11.EndOfMessage not in seen:
            event = client.next_event()  # RemoteProtocolError for a body cut off
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Event):
                seen.append(type(event))
                assert not isinstance(event, h11.ConnectionClosed)
                if isinstance(event, h11.Response):
                    assert event.status_code == 200
                    daemon.shutdown.ring()  # as `daemon down` does
    await stream.aclose()
