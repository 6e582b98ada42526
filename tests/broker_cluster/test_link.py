"""The Redis link alone: with Redis unreachable it answers admissions `unavailable` and tries
again after a backoff that doubles up to its bound, drawn down by jitter, `starting` until it
first reached Redis; stopped, it answers what is still queued as in an outage (MockClock); what
it logs of an error is one short line."""

import itertools

import pytest
import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

from meshactors.broker.cluster import (
    MAX_CLUSTER_ERROR_CHARS,
    RECONNECT_FIRST_S,
    RECONNECT_MAX_S,
    ClusterLink,
    error_summary,
)
from meshactors.broker.cluster_messages import (
    Admit,
    AdmitResult,
    ClusterEvent,
    Control,
    Depart,
    Forward,
    Resync,
    Roster,
    StateChanged,
)
from meshactors.broker.cluster_wire import PresenceEntry
from meshactors.clock import wall_ms
from meshactors.wire.broker import verify_hello
from scripts.benchlib.redisserver import free_port
from tests.broker.support import WAIT_S, hello
from tests.broker_cluster.test_cluster import ALICE

ATTEMPTS = 9  # enough to reach RECONNECT_MAX_S from RECONNECT_FIRST_S


async def test_an_unreachable_redis_is_retried_with_backoff_and_jitter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    control, commands = trio.open_memory_channel[Control](4)
    _, forwards = trio.open_memory_channel[Forward](4)
    events, reported = trio.open_memory_channel[ClusterEvent](4)
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    link = ClusterLink(url, "0123456789abcdef", 2.0, 8.0, commands, forwards, events)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        times = []
        for _ in range(ATTEMPTS):  # never reached: not `degraded`, which says Redis was lost
            assert await reported.receive() == StateChanged("starting")
            times.append(trio.current_time())
        reply, answer = trio.open_memory_channel[AdmitResult](1)
        verified = verify_hello(hello(ALICE, "net"), now_ms=wall_ms())
        entry = PresenceEntry("0123456789abcdef", "daemon", verified.ts_ms)
        await control.send(Admit(verified, entry, 8, reply))
        assert (await answer.receive()).status == "unavailable"
        nursery.cancel_scope.cancel()
    for n, (before, after) in enumerate(itertools.pairwise(times)):
        bound = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2**n)
        assert bound / 2 <= after - before <= bound + 0.01
    assert max(b - a for a, b in itertools.pairwise(times)) > RECONNECT_MAX_S / 2


async def test_commands_queued_when_the_link_stops_are_answered_as_in_an_outage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    control, commands = trio.open_memory_channel[Control](2)
    _, forwards = trio.open_memory_channel[Forward](4)
    events, _reported = trio.open_memory_channel[ClusterEvent](4)
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: its leave fails
    link = ClusterLink(url, "0123456789abcdef", 2.0, 8.0, commands, forwards, events)
    admitted, admission = trio.open_memory_channel[AdmitResult](1)
    resynced, resync = trio.open_memory_channel[dict[str, Roster] | None](1)
    admitted_late, late_admission = trio.open_memory_channel[AdmitResult](1)
    verified = verify_hello(hello(ALICE, "net"), now_ms=wall_ms())
    entry = PresenceEntry("0123456789abcdef", "daemon", verified.ts_ms)
    control.send_nowait(Admit(verified, entry, 8, admitted))
    control.send_nowait(Resync([], resynced))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.send, Admit(verified, entry, 8, admitted_late))
        await trio.testing.wait_all_tasks_blocked()  # it waits for room: the queue is full
        with trio.CancelScope() as stopping:
            stopping.cancel()  # the broker stops before the link took the commands
            await link.run()
    with trio.fail_after(WAIT_S):
        assert (await admission.receive()).status == "unavailable"
        assert await resync.receive() is None
        assert (await late_admission.receive()).status == "unavailable"
    with pytest.raises(trio.BrokenResourceError):
        control.send_nowait(Depart("net", verified.device_id, entry))


@given(st.text())
@example("")
@example("Error running script:\n@user_script:12: " + "x" * 10 * MAX_CLUSTER_ERROR_CHARS)
def test_an_error_is_logged_as_its_class_and_message_on_one_bounded_line(message: str) -> None:
    """However long or many-lined the message (coredis's, the OS's, a Lua script's), the error
    logged is its class name and that message on one line, cut to MAX_CLUSTER_ERROR_CHARS."""
    logged = error_summary(
        ExceptionGroup("session", [ExceptionGroup("a step", [OSError(message)])])
    )
    assert len(logged) <= MAX_CLUSTER_ERROR_CHARS
    one_line = " ".join(message.split())
    whole = f"OSError: {one_line}" if one_line else "OSError"
    cut = whole[: MAX_CLUSTER_ERROR_CHARS - 1] + "…"
    assert logged == (whole if len(whole) <= MAX_CLUSTER_ERROR_CHARS else cut)
