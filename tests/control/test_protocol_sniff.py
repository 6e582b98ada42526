"""Telling HTTP from JSON lines: bytes that begin a method must be followed in time, as an
HTTP request must; a connection that sends nothing yet may wait."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from meshactors.actors import Node, run_root
from meshactors.control import supervisor
from meshactors.control.client import ClientActor
from meshactors.control.http_parse import REQUEST_TIMEOUT
from meshactors.control.session import CutOff

LONG_IDLE = 10 * REQUEST_TIMEOUT


async def served_client(nursery: trio.Nursery) -> trio.testing.MemoryStapledStream[Any, Any]:
    """A client actor on a memory stream pair, run in `nursery`; the program's end. The
    connection never gets as far as an op, so the actor needs no daemon (whose store thread
    cannot run under MockClock)."""
    server, program = trio.testing.memory_stream_pair()
    services: Any = None
    reports, _ = trio.open_memory_channel[CutOff](1)
    actor = ClientActor("c1", server, services, reports)
    await nursery.start(run_root, actor, Node("client c1", "client"))
    return program


async def test_the_start_of_a_method_not_followed_in_time_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        program = await served_client(nursery)
        await program.send_all(b"GE")  # and never the rest
        start = trio.current_time()
        with trio.fail_after(LONG_IDLE):
            assert await program.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT)


async def test_a_connection_that_sends_nothing_yet_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        program = await served_client(nursery)
        with trio.move_on_after(LONG_IDLE):
            await program.receive_some()
            pytest.fail("the daemon closed an idle connection")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("sent", "http", "after"),
    [
        (b"GET ", True, 0.0),
        (b'{"id":1}', False, 0.0),
        (b"", False, supervisor.REFUSAL_TIMEOUT / 2),  # tells nothing
        (b"GE", False, supervisor.REFUSAL_TIMEOUT / 2),  # not REQUEST_TIMEOUT
    ],
)
async def test_a_refused_connection_is_answered_in_what_its_first_bytes_tell(
    autojump_clock: trio.testing.MockClock, sent: bytes, http: bool, after: float
) -> None:
    """The busy answer's protocol, told within half of REFUSAL_TIMEOUT, else JSON lines."""
    server, program = trio.testing.memory_stream_pair()
    if sent:
        await program.send_all(sent)
    start = trio.current_time()
    assert await supervisor._speaks_http(server) is http
    assert trio.current_time() - start == pytest.approx(after)
