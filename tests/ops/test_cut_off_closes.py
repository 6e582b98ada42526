"""A connection whose close ran out of time before core released what it held (a flood of
closes, each close's release an ask queued behind the others) leaves nothing behind: core
treats the claims, calls and subscriptions of a connection that is gone as released."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import structlog
import trio
import trio.testing

from meshactors.actors import Broadcast
from meshactors.control import supervisor
from meshactors.control.session import CutOff, Push, Session
from meshactors.daemon.services import Services
from meshactors.network import channels, rpc
from meshactors.network.channels import MAX_CHANNELS
from meshactors.network.claims import MAX_CLAIMS
from meshactors.network.rpc import MAX_TIMEOUT_MS
from tests.network.appclient import network_children
from tests.network.conftest import NET, WAIT
from tests.ops.test_connection_close import close, held, join, ok
from tests.support import LineClient

Connect = Callable[[], Awaitable[LineClient]]

CUT_OFF_APPS = 8  # connections that share the claim and channel tables between them
NEVER = 3600.0  # seconds: a sweep interval that never comes within a test


@pytest.fixture
def cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection's close runs out of time at once: no release it asks of core arrives."""
    monkeypatch.setattr(supervisor, "CLIENT_SHUTDOWN_TIMEOUT", 0.0)


@pytest.fixture
def no_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """Core never sweeps on its own (for networks joined from now on): only what it is asked
    to do finds the connections that are gone."""
    monkeypatch.setattr(rpc, "SWEEP_INTERVAL", NEVER)
    monkeypatch.setattr(channels, "SWEEP_INTERVAL", NEVER)


async def fill_then_close(connect: Connect) -> None:
    """Have CUT_OFF_APPS connections claim every method and subscribe every channel a network
    has room for (and follow events), then close them all together."""
    apps = [await connect() for _ in range(CUT_OFF_APPS)]
    for n, app in enumerate(apps):
        await ok(app, "events_subscribe")
        for m in range(MAX_CLAIMS // CUT_OFF_APPS):
            await ok(app, "rpc_register", network=NET, method=f"old{n}-{m}")
        for c in range(MAX_CHANNELS // CUT_OFF_APPS):
            await ok(app, "channel_subscribe", network=NET, channel=f"old{n}-{c}")
    await close_together(apps)


async def close_together(apps: list[LineClient]) -> None:
    """End every connection's input, then close each: their closes overlap."""
    for app in apps:
        await app.stream.send_eof()
    for app in apps:
        await close(app)


@pytest.mark.usefixtures("cut_off", "no_sweep")
async def test_a_full_table_of_what_gone_connections_held_has_room_for_a_new_one(
    daemon: Services, connect: Connect
) -> None:
    admin = await connect()
    await join(admin, NET)
    await fill_then_close(connect)
    fresh = await connect()
    for m in range(MAX_CLAIMS):
        await ok(fresh, "rpc_register", network=NET, method=f"new{m}")
    for c in range(MAX_CHANNELS):
        await ok(fresh, "channel_subscribe", network=NET, channel=f"new{c}")
    claims, pumps = await held(admin, NET)
    fresh_id = (await ok(fresh, "status"))["client_id"]
    assert claims == {f"new{m}": fresh_id for m in range(MAX_CLAIMS)}
    assert sorted(pumps) == sorted(f"channel new{c}" for c in range(MAX_CHANNELS))
    core = network_children(await ok(admin, "inspect"), NET)["core"]["figures"]
    assert core["rpc"]["counters"]["orphans_released"] == MAX_CLAIMS
    assert core["channels"]["counters"]["orphans_released"] == MAX_CHANNELS
    own = daemon.identity.device_id
    with trio.fail_after(WAIT):
        answer = await admin.call("rpc_call", network=NET, peer=own, method="old0-0")
    assert answer["error"]["code"] == "no_handler"


@pytest.mark.usefixtures("cut_off", "no_sweep")
async def test_a_call_to_a_method_whose_connection_is_gone_is_answered_no_handler_at_once(
    daemon: Services, connect: Connect
) -> None:
    admin, app = await connect(), await connect()
    await join(admin, NET)
    await ok(app, "rpc_register", network=NET, method="m")
    await close(app)
    assert list((await held(admin, NET))[0]) == ["m"]  # its close released nothing
    own = daemon.identity.device_id
    with trio.fail_after(WAIT):  # not the call's deadline: that is far longer
        answer = await admin.call(
            "rpc_call", network=NET, peer=own, method="m", timeout_ms=MAX_TIMEOUT_MS
        )
    assert answer["error"]["code"] == "no_handler"
    assert await held(admin, NET) == ({}, [])


@pytest.mark.usefixtures("cut_off")
async def test_core_sweeps_away_what_gone_connections_held_with_nobody_asking(
    daemon: Services, connect: Connect
) -> None:
    admin = await connect()
    await join(admin, NET)
    await fill_then_close(connect)
    # Polled: core's sweep announces nothing; each look is an inspect, the wait bounded.
    with trio.fail_after(WAIT):
        while await held(admin, NET) != ({}, []):  # noqa: ASYNC110  (nothing to wait on)
            await trio.sleep(rpc.SWEEP_INTERVAL / 10)


async def cleanups_cut_off(admin: LineClient) -> int:
    """The count of closed connections' cleanups cut off, as `control`'s figures show it."""
    tree = await ok(admin, "inspect")
    control = next(child for child in tree["children"] if child["name"] == "control")
    count: int = control["figures"]["cleanups_cut_off"]
    return count


async def claiming_apps(
    connect: Connect, subscribing: range
) -> tuple[LineClient, list[LineClient]]:
    """A connection that joined NET (to look on), and CUT_OFF_APPS more, the nth claiming
    method `m{n}` on NET and, when n is in `subscribing`, subscribed to channel `c{n}`: each
    close has one or two releases to cut off."""
    admin = await connect()
    await join(admin, NET)
    apps = [await connect() for _ in range(CUT_OFF_APPS)]
    for n, app in enumerate(apps):
        await ok(app, "rpc_register", network=NET, method=f"m{n}")
        if n in subscribing:
            await ok(app, "channel_subscribe", network=NET, channel=f"c{n}")
    return admin, apps


@pytest.mark.usefixtures("cut_off")
async def test_a_burst_of_cut_off_closes_is_counted_and_logged_once_at_info(
    connect: Connect,
) -> None:
    admin, apps = await claiming_apps(connect, subscribing=range(CUT_OFF_APPS))
    assert await cleanups_cut_off(admin) == 0
    with structlog.testing.capture_logs() as logs:
        await close_together(apps)
    # Each close's two releases (its method claim, its subscription) were cut off.
    assert await cleanups_cut_off(admin) == 2 * CUT_OFF_APPS
    # One line at info for the burst (the rest at debug, if shown at all), none a warning.
    told = [entry["log_level"] for entry in logs if entry["event"].startswith("cleanup cut off")]
    assert [level for level in told if level != "debug"] == ["info"]


@pytest.mark.usefixtures("cut_off")
async def test_clients_closing_at_once_each_tell_control_which_alone_counts_them(
    connect: Connect,
) -> None:
    # one release to cut off (its claim), odd ones two
    admin, apps = await claiming_apps(connect, subscribing=range(1, CUT_OFF_APPS, 2))
    ids = [(await ok(app, "status"))["client_id"] for app in apps]
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await close_together(apps)
    assert await cleanups_cut_off(admin) == CUT_OFF_APPS + CUT_OFF_APPS // 2
    told = [entry for entry in logs if entry["event"].startswith("cleanup cut off")]
    # One report per close, counted and logged in control's task, not in the clients'.
    assert sorted(entry["client"] for entry in told) == sorted(ids)
    assert {entry["actor"] for entry in told} == {"daemon/control"}


async def test_a_close_whose_report_finds_control_behind_drops_it_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reports, queued = trio.open_memory_channel[CutOff](1)
    reports.send_nowait(CutOff("c0", 1))  # full: control has not taken an earlier one
    services: Services = None  # type: ignore[assignment]  # a close needs none
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            pushes = Broadcast[Push]().subscribe(16, 16)
            session = Session("c1", services, pushes, nursery, sink=None)  # type: ignore[arg-type]
            session.on_close(trio.sleep_forever)  # an ask that is never answered
            with trio.move_on_after(supervisor.CLIENT_SHUTDOWN_TIMEOUT) as deadline:
                await session.close(reports)
    assert deadline.cancelled_caught
    assert queued.receive_nowait() == CutOff("c0", 1)
    with pytest.raises(trio.WouldBlock):
        queued.receive_nowait()
    dropped = [entry for entry in logs if entry["event"].startswith("cleanup cut off")]
    assert [(e["log_level"], e["client"], e["cleanups"]) for e in dropped] == [("debug", "c1", 1)]
