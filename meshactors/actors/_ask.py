"""Request/response between actors: a message carries its own one-shot reply channel."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import attrs
import trio

from meshactors.actors._registry import cleanup_scope, in_stop_for_good
from meshactors.wire.ipc import ErrorCode, OpError

T = TypeVar("T")
M = TypeVar("M")
M_contra = TypeVar("M_contra", contravariant=True)


class AskTimeout(Exception):
    """The asked actor did not answer before the deadline."""

    def __init__(self, what: str, timeout: float) -> None:
        super().__init__(f"{what}: no answer within {timeout:g}s")
        self.what = what
        self.timeout = timeout


class ActorGone(Exception):
    """The asked actor's inbox is closed: it stopped or was never started."""


def unanswered(error: ActorGone | AskTimeout) -> OpError:
    """What a client is told of an ask an actor did not answer: `unavailable` while it is
    down (a restart), `timeout` when it took too long."""
    code = ErrorCode.UNAVAILABLE if isinstance(error, ActorGone) else ErrorCode.TIMEOUT
    return OpError(code, str(error))


class Lane(Protocol[M_contra]):
    """Where an ask is sent: a memory channel's sending end, or something that wraps one."""

    async def send(self, message: M_contra, /) -> None: ...


@attrs.frozen
class _Answer(Generic[T]):
    """Either a value or the error the actor chose to report."""

    value: T | None = None
    error: Exception | None = None

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


@attrs.frozen
class Reply(Generic[T]):
    """The answering end of an ask; answering after the asker gave up is harmless."""

    _channel: trio.MemorySendChannel[_Answer[T]]

    @classmethod
    def unheard(cls) -> Reply[T]:
        """A reply nobody waits for, for a request sent without asking."""
        send, receive = trio.open_memory_channel[_Answer[T]](1)
        receive.close()
        return cls(send)

    def ok(self, value: T) -> None:
        """Answer with a value."""
        self._deliver(_Answer(value=value))

    def fail(self, error: Exception) -> None:
        """Answer with an error, raised in the asker."""
        self._deliver(_Answer(error=error))

    def drop(self) -> None:
        """Give up answering (the actor stops mid-request): the asker gets ActorGone at once
        instead of waiting out its deadline. Harmless after an answer."""
        self._channel.close()

    async def answer_with(self, work: Callable[[], Awaitable[T]]) -> None:
        """Answer with what `work` returns, or the error it raises (the answering actor lives
        on); if the actor is cancelled meanwhile, drop, so the asker hears so at once."""
        try:
            self.ok(await work())
        except Exception as exc:
            self.fail(exc)
        finally:
            self.drop()

    def _deliver(self, answer: _Answer[T]) -> None:
        try:
            self._channel.send_nowait(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass  # the asker timed out or answered already: nobody is listening
        finally:
            self._channel.close()


async def ask(
    inbox: Lane[M],
    build: Callable[[Reply[T]], M],
    *,
    timeout: float,
    what: str,
    settle: bool = False,
    shield: bool = False,
) -> T:
    """Send `build(reply)` to `inbox` and wait for the answer, at most `timeout` seconds in all.

    With `settle`, an asker whose actor is stopped for good (`Node.stopping_for_good`; not
    to restart, whose next run can redo what the last one held) once the request is sent
    still waits for the answer, within its cleanup budget (`cleanup_scope`), and returns it;
    the cancel comes at its next checkpoint. For a request whose outcome the asker must act
    on even as it stops, as nothing will after: the events of what a store call committed.

    With `shield`, nothing from outside cancels the ask, only its own deadline: for work the
    asker must see through once core took it (an opened call, answered or cancelled by core),
    in the ask's one cancel scope rather than a shielding scope of its own around it.

    Every store call and core command is one ask, so this stays lean: an unsubscripted
    channel (a subscripted one goes through typing's generic alias on each call) and a plain
    cancel scope rather than `fail_after`'s generator context manager."""
    send: trio.MemorySendChannel[_Answer[T]]
    receive: trio.MemoryReceiveChannel[_Answer[T]]
    send, receive = trio.open_memory_channel(1)
    with receive:
        with trio.CancelScope(deadline=trio.current_time() + timeout, shield=shield) as waiting:
            try:
                await inbox.send(build(Reply(send)))
                try:
                    answer = await receive.receive()
                except trio.Cancelled:
                    late = None if waiting.cancel_called or not settle else await _settle(receive)
                    if late is None:
                        raise
                    answer = late
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
                raise ActorGone(f"{what}: the actor is not running") from None
        if waiting.cancelled_caught:
            raise AskTimeout(what, timeout)
    return answer.unwrap()


async def _settle(receive: trio.MemoryReceiveChannel[_Answer[T]]) -> _Answer[T] | None:
    """The answer of an ask whose asker is cancelled, waited for within its cleanup budget if
    its actor stops for good; None when it does not (a restart, whose wait for a crashed
    actor's answer would only hold the restart back) or the asker is no actor, or the answer
    does not come by then, or the asked actor dropped the request."""
    if not in_stop_for_good():
        return None
    with cleanup_scope(), contextlib.suppress(trio.EndOfChannel):
        return await receive.receive()
    return None
