"""Ops that turn a control-socket connection into one end of a binary stream.

`stream_open` (to a peer's program serving a method with a binary claim) and `stream_accept`
(of a `stream_incoming` offer) answer once the stream flows; the connection's `client` actor
then reads and writes length-prefixed frames through the returned pipe (docs/protocol.md,
"Binary streams").
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

from meshactors.control.session import Session
from meshactors.network.payload import check_name
from meshactors.network.rpc import check_timeout
from meshactors.network.stream_pipe import Pipe
from meshactors.ops.network_ops import network_of
from meshactors.ops.optable import Op
from meshactors.wire.ipc import ErrorCode, OpError

if TYPE_CHECKING:
    from meshactors.network.network import Network


@attrs.frozen
class StreamOpenParams:
    """Params of `stream_open`: `timeout_ms` bounds the wait for the peer's program."""

    network: str
    peer: str
    method: str
    timeout_ms: int | None = None


@attrs.frozen
class StreamAcceptParams:
    """Params of `stream_accept`: the `stream_id` of a `stream_incoming` event."""

    network: str
    stream_id: str


def _take(session: Session, pipe: Pipe) -> dict[str, Any]:
    """Hand the pipe to the connection (its reader switches after this answer) and make sure
    its close ends the stream even if the pipe's tasks never ran."""
    session.pipe = pipe

    async def close() -> None:
        pipe.from_socket.close()
        pipe.consumed.close()
        pipe.to_socket.close()  # core's next send finds the program gone

    session.on_close(close)
    return pipe.answer()


async def stream_open(session: Session, params: StreamOpenParams) -> dict[str, Any]:
    """Open a binary stream; answered once the peer's program accepted it."""
    check_name(params.method, "method")
    timeout_ms = check_timeout(params.timeout_ms)
    network = network_of(session, params.network)
    open_stream = functools.partial(
        network.streams.open, params.peer, params.method, timeout_ms, session.client_id
    )
    with _ended_unless_taken(session, network):
        ready = await network.ask_await("stream_open", open_stream)
        with trio.move_on_after(timeout_ms / 1000):
            return _take(session, await ready)
        raise OpError(ErrorCode.TIMEOUT, f"{params.peer} did not accept within {timeout_ms} ms")


async def stream_accept(session: Session, params: StreamAcceptParams) -> dict[str, Any]:
    """Become the serving end of an incoming binary stream."""
    network = network_of(session, params.network)
    accept = functools.partial(network.streams.accept, params.stream_id, session.client_id)
    with _ended_unless_taken(session, network):
        return _take(session, await network.ask_await("stream_accept", accept))


@contextlib.contextmanager
def _ended_unless_taken(session: Session, network: Network) -> Iterator[None]:
    """Around a stream op's work with core: what the op set up and the connection never took
    is ended by core (`Streams.untaken`), as nobody else would ever read or end it. An op
    answered `timeout` has it ended at once: core may have run the request, or still run it,
    after the op stopped waiting, and a peer accepting just then would leave the stream
    attached, holding its place, for as long as the program keeps its connection open. The
    word goes behind the request in core's inbox, so it finds whatever that set up; should it
    not fit there, the connection's close asks again. A connection that closed without the
    pipe (the op was cut off about when core set the stream up) has its close ask. Nothing is
    asked after an error other than a timeout (core is done with the request and holds
    nothing of it: it or the peer refused, or core stopped), nor of a retired network (its
    streams stopped)."""
    untaken = functools.partial(network.streams.untaken, session.client_id)
    settled = False  # core holds nothing the op set up, or was told to end it

    async def unless_taken() -> None:
        if session.pipe is None and not settled and not network.retired:
            await network.ask("end a stream nobody took", untaken)

    session.on_close(unless_taken)
    try:
        yield
    except OpError as error:
        settled = error.code is not ErrorCode.TIMEOUT or network.tell(untaken)
        raise


OPS: list[Op[Any]] = [
    Op(
        "stream_open",
        StreamOpenParams,
        stream_open,
        "turn this connection into a binary stream to a peer's program",
        command="stream send",
        client="open_stream",
        switches=True,
    ),
    Op(
        "stream_accept",
        StreamAcceptParams,
        stream_accept,
        "turn this connection into the serving end of an incoming binary stream",
        command="stream serve",
        client="accept_stream",
        switches=True,
    ),
]
