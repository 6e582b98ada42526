"""Keeps a client connected: the first connect retries while the daemon starts, later ones
retry forever with a bounded backoff; every (re)connect replays the client's desired state
(method claims, channel subscriptions, the event stream from the last event id seen)."""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.actors import Lagged, Sequencer
from meshactors.client._conn import Connection, open_connection
from meshactors.client.errors import (
    ClientClosed,
    ClientError,
    ConnectionLost,
    DeadlineExceeded,
)
from meshactors.exception_groups import first_leaf

log = logging.getLogger("meshactors.client")  # the application decides where it goes

RECONNECT_TIMEOUT = math.inf  # seconds a lost daemon is waited for (calls have own deadlines)
RECONNECT_DELAY_FIRST = 0.05  # seconds before reconnecting after a connection that failed early
RECONNECT_DELAY_MAX = 1.0  # the reconnect backoff's bound (doubling from the first delay)
REPLAY_CALL_TIMEOUT = 30.0  # seconds each replayed claim or subscription may take
# errors after which the daemon may still carry the request out: its core did not answer in
# time, or we stopped waiting (a cancel, too)
UNSURE_CODES = frozenset({"timeout", "unavailable", "deadline"})
# failures of the first connect retried like a daemon still starting, until connect_timeout:
# a daemon too full to take us answers `unavailable`, or closes the connection unanswered
# (past MAX_REFUSING refusals at once, or while its `control` cannot take a client)
FIRST_CONNECT_RETRIED = frozenset({"unavailable", "connection_lost"})

Frame = dict[str, Any]


class WantKind(enum.Enum):
    """What a desired-state entry asks of the daemon."""

    CLAIM = ("rpc_register", "rpc_unregister", "method", "client_reclaimed")
    CHANNEL = ("channel_subscribe", "channel_unsubscribe", "channel", "client_resubscribed")

    def __init__(self, apply_op: str, release_op: str, field: str, restored: str) -> None:
        self.apply_op = apply_op
        self.release_op = release_op
        self.field = field
        self.restored = restored  # the client event telling one the daemon ended is back


@attrs.frozen
class Want:
    """One entry of the desired state: a method claim or a channel subscription."""

    kind: WantKind
    network: str
    name: str  # the method or the channel

    def params(self) -> dict[str, Any]:
        """The op params naming this entry."""
        return {"network": self.network, self.kind.field: self.name}


@attrs.define
class DesiredState:
    """What the client wants of whichever daemon it reaches; replayed on every connect."""

    claims: dict[Want, bool | str] = attrs.field(factory=dict)  # claim -> streaming
    channels: dict[Want, int] = attrs.field(factory=dict)  # subscription -> local subscribers
    last_event_id: int | None = None  # newest broadcast event seen; the resume point

    def wants(self, want: Want) -> bool:
        """Whether `want` is an entry of the desired state."""
        return want in self.claims or want in self.channels

    def apply_params(self, want: Want, *, restoring: bool) -> dict[str, Any]:
        """Params of the op that puts `want` in place. A claim `restoring` (held before, lost
        to a reconnect or a restart) displaces no one: a program that claimed the method
        meanwhile is newer, and keeps it (last claim wins)."""
        if want.kind is WantKind.CLAIM:
            restored = {"if_unclaimed": True} if restoring else {}
            return want.params() | {"streaming": self.claims.get(want, False)} | restored
        return want.params()


@attrs.define(eq=False)
class _Live:
    """The current connection and which wants it already carries."""

    conn: Connection
    applied: set[Want] = attrs.field(factory=set)  # put in place (or being put)
    # asked of it and not released since, unless refused: one given up (a deadline, a cancel)
    # or failed `timeout`/`unavailable` may still be carried out (UNSURE_CODES)
    asked: set[Want] = attrs.field(factory=set)
    # asked of it, and the last ask not answered for sure (UNSURE_CODES, a deadline, a cancel):
    # not in place, and asking it again there may yet put it in place
    unsure: set[Want] = attrs.field(factory=set)


@attrs.define(eq=False)
class _Attempt:
    """One shared bring-up: every concurrent `start` waits on it and sees its outcome."""

    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None


@attrs.define(eq=False)
class DaemonLink:
    """The client's connection to its daemon, kept up and kept in the desired state."""

    path: Path
    connect_timeout: float
    route: Callable[[Frame | Lagged], None]  # every event frame, in order, never blocking
    connection_ended: Callable[[], None]  # every event of a lost connection routed; never blocks
    # a want the replay could not put in place, and why; tells the program, never blocks
    replay_failed: Callable[[Want, ClientError], None]
    # a want the replay left unsure (`_Live.unsure`), once its connection is the current one:
    # the owner tries it again there while that one stays up (`may_retry`); never blocks
    retry: Callable[[Want], None]
    desired: DesiredState = attrs.field(factory=DesiredState)
    reconnects: int = 0
    _current: _Live | None = None
    _up: trio.Event = attrs.field(factory=trio.Event)
    _attempt: _Attempt | None = None
    _closed: bool = False
    _turns: Sequencer[Want] = attrs.field(factory=Sequencer)  # ensures and releases, by want

    async def start(self, nursery: trio.Nursery) -> None:
        """Connect and replay the desired state; concurrent and repeated calls share one
        bring-up. Raises DaemonNotRunning when no daemon answered within connect_timeout."""
        if self._closed:
            raise ClientClosed()
        attempt = self._attempt
        if attempt is None:
            attempt = self._attempt = _Attempt()
            try:
                await nursery.start(self._run)
            except BaseException as exc:
                attempt.error = exc if isinstance(exc, Exception) else ClientClosed()
                self._attempt = None  # a later start may try again
                raise
            finally:
                attempt.done.set()
            return
        await attempt.done.wait()
        if attempt.error is not None:
            raise attempt.error

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    def close(self) -> None:
        """Refuse further calls and fail those in flight with ClientClosed; the owner cancels
        the nursery that runs the link."""
        self._closed = True
        self._up.set()
        if self._current is not None:
            self._current.conn.close(ClientClosed())

    async def call(self, op: str, params: dict[str, Any], timeout: float) -> Any:
        """Run one op on the current connection, waiting (within `timeout`) for one to be up."""
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline) as scope:
            live = await self._live()
        if scope.cancelled_caught:
            raise DeadlineExceeded(op, timeout)
        # the deadline may have passed while the connection was found (no checkpoint): a
        # negative time left is a deadline reached, not an error of trio's timers
        return await live.conn.call(op, params, max(0.0, deadline - trio.current_time()))

    async def ensure(self, want: Want, timeout: float, *, restoring: bool = False) -> bool:
        """Put a desired-state entry in place now (it is replayed on later connects anyway),
        once the ensures and releases of it begun before ended: so one that joins an ensure in
        flight returns when that one put the entry in place, or tries itself if it failed.
        False when the entry was dropped from the desired state before its turn (an `unserve`
        ahead of a reclaim): it is not put in place, as the release in its turn undid it.
        `restoring`: the daemon ended it (see `DesiredState.apply_params`)."""
        with trio.move_on_after(timeout):
            async with self._turns.turn(want):
                if not self.desired.wants(want):
                    return False
                while True:
                    live = await self._live()
                    try:
                        await self._apply(live, want, timeout, restoring=restoring)
                        return True
                    except ConnectionLost:
                        continue  # the replay on the next connection puts it in place
        raise DeadlineExceeded(want.kind.apply_op, timeout)

    async def release(self, want: Want, timeout: float) -> None:
        """Undo an entry already dropped from the desired state, if the connection has it or
        was asked for it (an ensure given up may still be carried out), once the ensures and
        releases of it begun before ended (an ensure in flight when the entry was dropped is
        undone, not left in place)."""
        with trio.move_on_after(timeout):
            async with self._turns.turn(want):
                live = self._current
                if not self._closed and live is not None:
                    await self._undo(live, want, timeout)
                # else a lost connection took it, and the replay of the next one undoes what
                # it asked of that one, once it sees the entry no longer desired
                return
        raise DeadlineExceeded(want.kind.release_op, timeout)

    def forget(self, want: Want) -> None:
        """Drop an entry the daemon already took away (a displaced claim): never replay it."""
        self.desired.claims.pop(want, None)
        if self._current is not None:
            self._current.applied.discard(want)
            self._current.asked.discard(want)
            self._current.unsure.discard(want)

    def lost(self, want: Want) -> None:
        """The daemon ended an entry the client still wants (a restart): the next `ensure` or
        replay puts it in place again."""
        if self._current is not None:
            self._current.applied.discard(want)

    def may_retry(self, want: Want) -> bool:
        """Whether the last try to put `want` in place failed on the current connection, still
        up, for a reason that may pass (`_Live.unsure`), with the client open and the entry
        still wanted: trying again there may put it in place. Once that connection is lost,
        the next one's replay puts it in place instead (and hands it to `retry` if that one
        fails so too)."""
        live = self._current
        return (
            not self._closed
            and live is not None
            and not live.conn.closed.is_set()
            and want in live.unsure
            and self.desired.wants(want)
        )

    async def _live(self) -> _Live:
        while True:
            if self._closed:
                raise ClientClosed()
            live = self._current
            if live is not None and not live.conn.closed.is_set():
                return live
            if live is not None:
                self._mark_down(live)
            await self._up.wait()

    def _mark_down(self, live: _Live) -> None:
        if self._current is live:
            self._current = None
            self._up = trio.Event()

    async def _undo(self, live: _Live, want: Want, timeout: float) -> None:
        """Release `want` on `live` if it was asked of it."""
        if want not in live.asked:
            return
        live.asked.discard(want)
        live.applied.discard(want)
        live.unsure.discard(want)
        with contextlib.suppress(ConnectionLost):  # the daemon released it with the connection
            await live.conn.call(want.kind.release_op, want.params(), timeout)

    async def _apply(self, live: _Live, want: Want, timeout: float, *, restoring: bool) -> None:
        if want in live.applied:
            return
        live.applied.add(want)
        live.asked.add(want)
        live.unsure.discard(want)
        params = self.desired.apply_params(want, restoring=restoring)
        try:
            await live.conn.call(want.kind.apply_op, params, timeout)
        except BaseException as error:
            live.applied.discard(want)
            if isinstance(error, ClientError) and error.code not in UNSURE_CODES:
                live.asked.discard(want)  # refused: nothing to undo
            else:
                live.unsure.add(want)
            raise

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        first_deadline = trio.current_time() + self.connect_timeout  # of the first connect
        started = False
        delay = 0.0
        while True:
            await trio.sleep(delay if started else min(delay, _left(first_deadline)))
            delay = min(max(delay * 2, RECONNECT_DELAY_FIRST), RECONNECT_DELAY_MAX)
            timeout = RECONNECT_TIMEOUT if started else _left(first_deadline)
            failure: ClientError | None = None
            try:
                async with open_connection(self.path, timeout) as conn, self._losing():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._route_events, conn)  # ends once drained
                        live = _Live(conn)
                        try:
                            await self._replay(live)  # a connection lost in it goes untold
                            self._current = live
                            self._up.set()
                            delay = 0.0
                            if started:
                                self._reconnected()
                            else:
                                started = True
                                task_status.started()
                            for want in [*self.desired.claims, *self.desired.channels]:
                                if want in live.unsure:  # the replay failed it for now
                                    self.retry(want)
                            await conn.closed.wait()
                        except BaseException:
                            nursery.cancel_scope.cancel()
                            raise
                        finally:
                            self._mark_down(live)
                    self.route({"kind": "client_disconnected", "reason": str(conn.close_reason)})
            except* ClientError as group:
                failure = first_leaf(group)
            if failure is not None:
                if not started and (
                    failure.code not in FIRST_CONNECT_RETRIED or not _left(first_deadline)
                ):
                    raise failure
                log.info("daemon unreachable on %s; retrying: %s", self.path, failure)

    def _reconnected(self) -> None:
        """Tell the program a new connection carries the desired state again."""
        self.reconnects += 1
        self.route({"kind": "client_reconnected", "count": self.reconnects})

    @contextlib.asynccontextmanager
    async def _losing(self) -> AsyncIterator[None]:
        """Report the loss of the connection the block runs, however the block ends."""
        try:
            yield
        finally:
            self.connection_ended()

    async def _route_events(self, conn: Connection) -> None:
        async for item in conn.events:
            if isinstance(item, dict) and isinstance(event_id := item.get("event_id"), int):
                last = self.desired.last_event_id
                if last is not None and event_id <= last:
                    continue  # already delivered before a reconnect
                self.desired.last_event_id = event_id
            self.route(item)

    async def _replay(self, live: _Live) -> None:
        since = self.desired.last_event_id
        params = {} if since is None else {"since": since}
        answer = await live.conn.call("events_subscribe", params, REPLAY_CALL_TIMEOUT)
        newest = answer["last_event_id"]
        if since is not None and newest < since:  # a daemon with a younger log (home wiped)
            self.desired.last_event_id = newest
            self.route({"kind": "client_events_reset", "since": since, "last_event_id": newest})
        elif self.desired.last_event_id is None:
            self.desired.last_event_id = newest
        for want in [*self.desired.claims, *self.desired.channels]:
            if not self.desired.wants(want):
                continue  # released while the replay ran
            try:
                await self._apply(live, want, REPLAY_CALL_TIMEOUT, restoring=True)
            except ConnectionLost:
                raise
            except ClientError as error:
                self.replay_failed(want, error)
        # A release while the replay ran found no connection to undo it on (this one is not
        # the current one yet): what it asked of this one is undone here, before it is.
        while stale := [want for want in live.asked if not self.desired.wants(want)]:
            for want in stale:
                try:
                    await self._undo(live, want, REPLAY_CALL_TIMEOUT)
                except ClientError as error:
                    log.info("%s, no longer wanted, not released: %s", want.name, error)


def _left(deadline: float) -> float:
    """Seconds until `deadline`, 0 once it has passed."""
    return max(0.0, deadline - trio.current_time())


def claimed_by_another(error: ClientError) -> bool:
    """Whether `error` refused a claim being restored as another connection holds it."""
    return error.code == "conflict" and "holder" in error.details


def refusal(error: ClientError) -> bool:
    """Whether `error` is the daemon's sure no to a request (not one of UNSURE_CODES): asking
    again gets the same answer until something changes (say the network is added again)."""
    return error.code not in UNSURE_CODES and not isinstance(error, (ConnectionLost, ClientClosed))


def replay_failed(want: Want, error: ClientError) -> Frame:
    """The client-local event telling that a claim or subscription could not be restored."""
    return {
        "kind": "client_replay_failed",
        "op": want.kind.apply_op,
        "network": want.network,
        want.kind.field: want.name,
        "code": error.code,
        "message": error.message,
    }
