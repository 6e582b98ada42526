"""OTP-style supervisors: ordered start, reverse stop, restart strategies and intensity."""

from __future__ import annotations

import enum
import functools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

import attrs
import structlog
import trio

from meshactors.actors._actor import Actor, Inbox
from meshactors.actors._ask import Reply
from meshactors.actors._crash import CrashSwitch
from meshactors.actors._registry import ActorState, Node, current_node, set_current_node

log = structlog.get_logger("meshactors.actors")

STOP_GRACE = 1.0  # seconds a supervisor waits beyond a child's shutdown timeout before moving on
ASK_TIMEOUT = 30.0  # seconds to wait for a supervisor to start or stop a dynamic child
# Messages (forwarded asks, children's exits, restarts due) a supervisor's run may have queued
# for its loop; past it their senders wait (the forwarder: asks back up in the bounded inbox).
CONTROL_QUEUE = 64


class Restart(enum.StrEnum):
    """When a child that exited is started again."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after a crash
    TEMPORARY = "temporary"  # never; the child is forgotten when it exits


class Strategy(enum.StrEnum):
    """Which siblings restart with a crashed child."""

    ONE_FOR_ONE = "one_for_one"  # only the child
    REST_FOR_ONE = "rest_for_one"  # the child and those started after it


@attrs.frozen
class ChildSpec:
    """How to run one child: the actor, its restart type and its cleanup budget."""

    name: str
    actor: Actor
    restart: Restart = Restart.PERMANENT
    shutdown_timeout: float = 5.0


@attrs.frozen
class RestartLimits:
    """At most `intensity` restarts within `period` seconds, each after an exponential backoff."""

    intensity: int = 5
    period: float = 10.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0

    def backoff(self, recent_restarts: int) -> float:
        """Delay before a restart, doubling with the restarts already in the window."""
        doublings = max(0, recent_restarts - 1)
        return float(min(self.backoff_max, self.backoff_initial * 2.0**doublings))


class SupervisorEscalation(Exception):
    """Restart intensity exceeded: the supervisor gives up so that its parent decides."""

    def __init__(self, supervisor: str, actor: str, limits: RestartLimits) -> None:
        super().__init__(
            f"{supervisor}: more than {limits.intensity} restarts in {limits.period:g}s, "
            f"last by {actor}"
        )
        self.actor = actor  # the path of the child whose exit passed the limit
        self.limits = limits


class ChildStartFailed(Exception):
    """A child raised before it called `task_status.started()`."""


@attrs.frozen
class StartChild:
    """Ask a supervisor to add and start a child; with `replace`, one of that name already
    there is stopped and forgotten first, else the start is refused."""

    spec: ChildSpec
    reply: Reply[None]
    replace: bool = False


@attrs.frozen
class StopChild:
    """Ask a supervisor to stop a child and forget it; answers whether it existed. Then it
    calls `on_stopped` (what must follow the stop), even if the asker gave up waiting; not
    when its run ends first and drops the request (its children stop with it)."""

    name: str
    reply: Reply[bool]
    on_stopped: Callable[[], None] | None = None


SupervisorRequest = StartChild | StopChild


@attrs.frozen
class _ChildExited:
    """One run of a child ended by itself; the child object and its generation say which run,
    so an exit queued behind a replace, or a stop and start, of that name is not the new one's.
    `due` is the restarts scheduled for the child when it ended: one scheduled since (an earlier
    sibling's crash, handled first, restarts it with the rest) has dealt with that end."""

    child: _Child
    generation: int
    due: int
    error: Exception | None


@attrs.frozen
class _RestartDue:
    """A restart's backoff is over: each child starts again, in order, with the number of the
    restart scheduled for it, unless a later one was scheduled since (an earlier sibling's
    crash restarts it too, or a crash of its own), or it was replaced or stopped."""

    runs: tuple[tuple[_Child, int], ...]


_Control = SupervisorRequest | _ChildExited | _RestartDue


def _no_run() -> trio.Event:
    """The `done` of a child not started yet: no run of it to wait for."""
    event = trio.Event()
    event.set()
    return event


@attrs.define(eq=False)
class _Child:
    """A supervisor's bookkeeping for one child across its restarts."""

    spec: ChildSpec
    node: Node
    generation: int = 0
    due: int = 0  # the restarts scheduled for it: only the latest one starts it
    has_run: bool = False  # a start of it finished: its supervisor has started, and a
    # restart of it counts, only then
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    # Set while no run of it is going on, so also before its first start: a stop of a child
    # added and never started (held back, or behind one abandoned) has nothing to wait for.
    done: trio.Event = attrs.field(factory=_no_run)
    restart_times: deque[float] = attrs.field(factory=deque)  # its own window, when contained

    @property
    def running(self) -> bool:
        return not self.done.is_set()

    @property
    def up(self) -> bool:
        """Running and not being stopped: a run cancelled (stopped to restart, or a start
        abandoned after it started) that has not ended yet is down, its restart pending."""
        return self.running and not self.scope.cancel_called


@attrs.define
class _StartSignal:
    """Forwards `started()` to the supervisor and remembers that it happened."""

    task_status: trio.TaskStatus[Exception | None]
    called: bool = False

    def started(self, value: None = None) -> None:
        self.called = True
        self.task_status.started(None)


@attrs.define(eq=False)
class Supervisor(Actor):
    """Runs child actors in order, restarts them per strategy, stops them in reverse."""

    kind: ClassVar[str] = "supervisor"
    # Children that must not take each other down (ONE_FOR_ONE): each has its own restart
    # window, and one past the intensity is restarted alone (its backoff growing to the longest)
    # instead of escalating (which restarts this supervisor and what its parent started after it).
    contains: ClassVar[bool] = False

    children: Sequence[ChildSpec] = ()
    strategy: Strategy = Strategy.ONE_FOR_ONE
    limits: RestartLimits = RestartLimits()
    inbox: Inbox[SupervisorRequest] = attrs.field(factory=Inbox)
    _running: dict[str, _Child] = attrs.field(factory=dict, init=False)
    _restart_times: deque[float] = attrs.field(factory=deque, init=False)
    _control: trio.MemorySendChannel[_Control] | None = attrs.field(default=None, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _starting: _Child | None = attrs.field(default=None, init=False)  # the start it awaits

    async def start_child(self, spec: ChildSpec, *, replace: bool = False) -> None:
        """Add a child at runtime; returns once it is running, raises if it failed to start.
        Under REST_FOR_ONE it also returns when an earlier sibling is down, or its run ended
        during the start: the start is held back or abandoned and the child kept, to start
        once that sibling has.
        A child of that name already there is refused (ValueError), or with `replace` stopped
        and forgotten first (an asker whose record of its children may lag this supervisor's)."""
        await self.inbox.ask(
            lambda reply: StartChild(spec, reply, replace),
            timeout=ASK_TIMEOUT,
            what=f"start {spec.name}",
        )

    async def stop_child(self, name: str, *, on_stopped: Callable[[], None] | None = None) -> bool:
        """Stop a child and forget it; False when there was no such child. `on_stopped` is
        called once it is (or was) not running, also when this ask timed out before."""
        return await self.inbox.ask(
            lambda reply: StopChild(name, reply, on_stopped),
            timeout=ASK_TIMEOUT,
            what=f"stop {name}",
        )

    def stop_child_nowait(self, name: str) -> bool:
        """Have a child stopped and forgotten, after the requests queued before, without
        waiting (an asker undoing a start it gave up on, even while cancelled); False when
        the inbox is full."""
        unheard: Reply[bool] = Reply.unheard()
        try:
            self.inbox.sender.send_nowait(StopChild(name, unheard))
        except trio.WouldBlock:
            return False
        return True

    def own_tasks(self) -> list[Callable[[], Awaitable[None]]]:
        """Tasks of this supervisor's own besides the supervising loop (a subclass that also
        serves requests of its kind); they run while it runs."""
        return []

    def figures(self) -> dict[str, object]:
        in_window = len(self._restart_times) + sum(
            len(child.restart_times) for child in self._running.values()
        )
        return {"strategy": self.strategy.value, "restarts_in_window": in_window}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        node = current_node()
        node.children.clear()  # a restart lists only the children it starts, not the last run's
        self._running = {}
        self._restart_times.clear()
        control_send, control_receive = trio.open_memory_channel[_Control](CONTROL_QUEUE)
        self._control = control_send
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                for index, spec in enumerate(self.children):
                    if not await self._add(spec, node, later=self.children[index + 1 :]):
                        break
                nursery.start_soon(self._forward_requests)
                for task in self.own_tasks():
                    nursery.start_soon(task)
                started = False
                while True:
                    # Started once each child has run: a first start abandoned waits for its
                    # restart (the daemon is ready only once `control` listens).
                    if not started and all(c.has_run for c in self._running.values()):
                        started = True
                        task_status.started()
                    await self._handle(await control_receive.receive(), node)
            except (SupervisorEscalation, ChildStartFailed) as exc:
                failure = exc
            finally:
                # However the run ends, the requests it took and did not handle (queued, or
                # held by a sender waiting for room), and those it takes while it stops its
                # children, are dropped: their askers hear ActorGone at once instead of at
                # their deadline. Closed, the channel refuses every later sender at once.
                self._control = None
                _drop_requests(control_receive)
                control_receive.close()
                await self._stop_all(restart=_children_restart(node, failure))
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _forward_requests(self) -> None:
        """Move asks from the bounded public inbox onto the control channel, in order; once
        the run ends, drop them instead (nothing would handle them)."""
        async for request in self.inbox.receiver:
            queued = False
            try:
                queued = await self._tell(request)
            finally:
                if not queued:  # the run ended, or this task was cancelled while it waited
                    request.reply.drop()

    async def _tell(self, message: _Control) -> bool:
        """Queue a message for this run's loop, waiting while the queue is full; False once
        the run has ended. No sender is the loop's own task, so the wait always ends."""
        control = self._control
        if control is None:
            return False
        try:
            await control.send(message)
        except trio.BrokenResourceError:
            return False
        return True

    async def _handle(self, message: _Control, node: Node) -> None:
        match message:
            case StartChild(spec=spec, reply=reply, replace=replace):
                await reply.answer_with(functools.partial(self._start, spec, node, replace))
            case StopChild(name=name, reply=reply, on_stopped=on_stopped):
                await reply.answer_with(functools.partial(self._remove, name))
                if on_stopped is not None:
                    on_stopped()
            case _ChildExited(child=exited, generation=generation, due=due, error=error):
                if self._is_latest(exited, generation) and exited.due == due:
                    await self._on_exit(exited, error)
                else:
                    log.debug("ignored the exit of a run dealt with", actor=exited.node.path)
            case _RestartDue(runs=runs):
                await self._restart(runs)

    async def _restart(self, runs: tuple[tuple[_Child, int], ...]) -> None:
        """Start again, in order, each child of a restart due. From the first that cannot start
        now (its cancelled run outlived its stop and has to end first, or an earlier sibling is
        down) or whose start is abandoned, the rest are tried again after `backoff_initial`,
        with their numbers (`_is_due`)."""
        for index, (child, due) in enumerate(runs):
            if not self._is_due(child, due):
                continue
            if (
                child.running
                or self._behind_a_sibling_down(child)
                or not await self._relaunch(child)
            ):
                self._due_after(runs[index:], self.limits.backoff_initial)
                return

    def _is_due(self, child: _Child, due: int) -> bool:
        """Whether that restart is the latest scheduled for the child, and the child still the
        one of its name: one an earlier sibling's crash or a failed start scheduled again since,
        or of a child replaced or stopped, is stale. A retry keeps its numbers, so any restart
        scheduled for a child since stays the latest."""
        return self._running.get(child.spec.name) is child and child.due == due

    def _behind_a_sibling_down(self, child: _Child) -> bool:
        """Whether, under REST_FOR_ONE, an earlier sibling is down (its exit queued, its restart
        pending, or never started): `child` starts only after it (a start that asks the sibling
        would hold this loop, and so the sibling's restart), so it is tried again after a
        backoff, unless the sibling's exit restarts it first."""
        if self.strategy is Strategy.ONE_FOR_ONE:
            return False
        order = list(self._running.values())
        return any(not sibling.up for sibling in order[: order.index(child)])

    def _schedule(self, children: list[_Child], delay: float) -> None:
        """Start `children` again, in order, after `delay` seconds; any restart of theirs
        scheduled before is stale from now on."""
        runs = []
        for child in children:
            child.due += 1
            runs.append((child, child.due))
        self._due_after(tuple(runs), delay)

    def _due_after(self, runs: tuple[tuple[_Child, int], ...], delay: float) -> None:
        """Queue those restarts for this run's loop after `delay` seconds."""
        assert self._nursery is not None
        self._nursery.start_soon(self._restart_later, runs, delay)

    def _is_latest(self, child: _Child, generation: int) -> bool:
        """Whether that run is the child's latest and the child still the one of its name: a
        message about an earlier run, or about a child replaced or stopped since, is stale."""
        return self._running.get(child.spec.name) is child and child.generation == generation

    async def _start(self, spec: ChildSpec, node: Node, replace: bool) -> None:
        """Add and start a child asked for; ValueError for a name taken unless `replace`."""
        if spec.name in self._running:
            if not replace:
                raise ValueError(f"{node.path} already has a child named {spec.name!r}")
            log.warning("replaced a child of that name", actor=f"{node.path}/{spec.name}")
            await self._remove(spec.name)
        await self._add(spec, node)

    async def _remove(self, name: str) -> bool:
        """Stop a child and forget it; False when there is none of that name."""
        child = self._running.pop(name, None)
        if child is None:
            return False
        await self._stop(child)
        child.node.detach()
        return True

    async def _add(self, spec: ChildSpec, node: Node, later: Sequence[ChildSpec] = ()) -> bool:
        """Register a new child and start it; forget it again if it failed to start. False when
        the start was held back (an earlier sibling is down, `_behind_a_sibling_down`) or
        abandoned (`_launch`): the child, and `later` (registered unstarted), start with the
        restart of the sibling whose run ended, or, if none restarts them (it was stopped
        meanwhile, or its exit was handled already), after `backoff_initial`."""
        child = self._register(spec, node)
        if self._behind_a_sibling_down(child):
            log.info("start held back: an earlier sibling is down", actor=child.node.path)
            started = False
        else:
            try:
                started = await self._launch(child)
            except ChildStartFailed:
                del self._running[spec.name]
                child.node.detach()
                raise
        if not started:
            waiting = [child, *(self._register(each, node) for each in later)]
            self._schedule(waiting, self.limits.backoff_initial)
        return started

    def _register(self, spec: ChildSpec, node: Node) -> _Child:
        """Add a child, not started yet, after those there."""
        child = _Child(spec, node.add_child(spec.name, spec.actor.kind, spec.shutdown_timeout))
        child.node.figures = spec.actor.figures
        child.node.inbox_statistics = spec.actor.inbox_statistics
        self._running[spec.name] = child
        return child

    async def _relaunch(self, child: _Child) -> bool:
        """Start a child again after its backoff; False when the start was abandoned (`_launch`),
        which counts no crash. A failed start counts as another crash: the restart it schedules
        makes those of the later siblings still due stale."""
        try:
            started = await self._launch(child)
        except ChildStartFailed as failed:
            await self._on_exit(child, failed)
            return True
        if not started:
            child.node.state = ActorState.RESTARTING
        return started

    async def _launch(self, child: _Child) -> bool:
        """Start one run of a child: True once it runs. False when the start was abandoned
        (under REST_FOR_ONE an earlier sibling's run ended meanwhile, `_abandon_later_start`):
        the child is down, and the sibling's restart starts it again."""
        assert self._nursery is not None
        child.generation += 1
        # Unshielded while starting: if this supervisor is stopped meanwhile, trio leaves the child
        # in `start`'s cancelled nursery and `start` waits for it, so the stop must reach it.
        child.scope = trio.CancelScope()
        child.done = trio.Event()
        child.node.state = ActorState.STARTING
        self._starting = child
        try:
            error = await self._nursery.start(self._child_main, child, child.generation)
        finally:
            self._starting = None
        child.scope.shield = True  # running in our nursery: only this supervisor stops it, in order
        if child.scope.cancel_called:  # only `_abandon_later_start` cancels a start
            log.info("start abandoned: an earlier sibling's run ended", actor=child.node.path)
            return False
        if error is not None:
            child.node.state = ActorState.CRASHED
            raise ChildStartFailed(f"{child.node.path} failed to start: {error!r}") from error
        child.node.mark_running()
        child.has_run = True
        return True

    async def _child_main(
        self,
        child: _Child,
        generation: int,
        *,
        task_status: trio.TaskStatus[Exception | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        set_current_node(child.node)
        structlog.contextvars.bind_contextvars(actor=child.node.path)
        signal = _StartSignal(task_status)
        error: Exception | None = None
        switch = child.node.crash_switch = CrashSwitch()
        try:
            with child.scope:
                with switch.scope:
                    await child.spec.actor.run(task_status=signal)
                error = switch.error()
        except Exception as exc:
            error = exc
        finally:
            if child.node.crash_switch is switch:
                child.node.crash_switch = None
            child.done.set()
        if not signal.called:
            task_status.started(error or RuntimeError("returned before it started"))
        elif not child.scope.cancel_called:
            self._abandon_later_start(child, generation, error)
            await self._tell(_ChildExited(child, generation, child.due, error))

    def _abandon_later_start(self, child: _Child, generation: int, error: Exception | None) -> None:
        """Under REST_FOR_ONE, cancel the start (a first one or a restart) the loop awaits of a
        child after `child`, whose run just ended to restart: its restart starts that child
        again, and a start that asks `child` (`events` or `networks` the store) would hold the
        loop, and so the restart, till the ask times out. Run in the ended child's task: the
        loop, in that start, cannot."""
        starting = self._starting
        if (
            starting is None
            or self.strategy is Strategy.ONE_FOR_ONE
            or not _restarts(child.spec.restart, error)
            or not self._is_latest(child, generation)
        ):
            return
        order = list(self._running.values())
        if order.index(starting) > order.index(child):
            starting.scope.cancel()

    async def _on_exit(self, child: _Child, error: Exception | None) -> None:
        path = child.node.path
        if error is None:
            child.node.state = ActorState.STOPPED
            # Not restarted, the exit is the child's work done (a client that disconnected):
            # at info, every connection would add a line to the log.
            restarted = child.spec.restart is Restart.PERMANENT
            (log.info if restarted else log.debug)("actor exited", actor=path)
        else:
            child.node.state = ActorState.CRASHED
            log.error("actor crashed", actor=path, exc_info=error)
        if not _restarts(child.spec.restart, error):
            del self._running[child.spec.name]
            child.node.detach()
            return
        now = trio.current_time()
        window = child.restart_times if self.contains else self._restart_times
        window.append(now)
        while window and window[0] < now - self.limits.period:
            window.popleft()
        if len(window) > self.limits.intensity:
            if not self.contains:
                raise SupervisorEscalation(current_node().path, path, self.limits) from error
            log.error("actor keeps crashing: restarted alone, not escalated", actor=path)
        affected = self._affected_by(child)
        for sibling in reversed(affected):
            if sibling is not child and sibling.running:
                await self._stop(sibling, restart=sibling.spec.restart is not Restart.TEMPORARY)
        again: list[_Child] = []
        for sibling in affected:
            if sibling is not child and sibling.spec.restart is Restart.TEMPORARY:
                del self._running[sibling.spec.name]
                sibling.node.detach()
                continue
            sibling.node.state = ActorState.RESTARTING
            if sibling.has_run:  # not one whose first start waited for this restart
                sibling.node.restarts += 1
            again.append(sibling)
        self._schedule(again, self.limits.backoff(len(window)))

    def _affected_by(self, child: _Child) -> list[_Child]:
        """The children a crash of `child` restarts, in start order."""
        order = list(self._running.values())
        match self.strategy:
            case Strategy.ONE_FOR_ONE:
                return [child]
            case Strategy.REST_FOR_ONE:
                return order[order.index(child) :]

    async def _restart_later(self, runs: tuple[tuple[_Child, int], ...], delay: float) -> None:
        await trio.sleep(delay)
        await self._tell(_RestartDue(runs))

    async def _stop(self, child: _Child, *, restart: bool = False) -> None:
        """Cancel one child and wait for its bounded cleanup; one stopped to `restart` shows
        `restarting` meanwhile, not `stopping`, and is not `stopping_for_good` (which a settled
        ask and the child's own children, if a supervisor, go by)."""
        child.node.stopping_for_good = not restart
        child.node.state = ActorState.RESTARTING if restart else ActorState.STOPPING
        child.scope.cancel()
        with trio.move_on_after(child.spec.shutdown_timeout + STOP_GRACE, shield=True):
            await child.done.wait()
        if not child.done.is_set():
            log.error("actor ignored its shutdown timeout", actor=child.node.path)
        child.node.state = ActorState.STOPPED

    async def _stop_all(self, *, restart: bool) -> None:
        """Stop every running child, last started first, for good or to `restart`."""
        for child in reversed(list(self._running.values())):
            if child.running:
                await self._stop(child, restart=restart)


def _drop_requests(control: trio.MemoryReceiveChannel[_Control]) -> None:
    """Drop every request still queued on a run's control channel (the run ends)."""
    while True:
        try:
            message = control.receive_nowait()
        except trio.WouldBlock:
            return
        if isinstance(message, StartChild | StopChild):
            message.reply.drop()


def _children_restart(node: Node, failure: Exception | None) -> bool:
    """Whether a supervisor whose run ends stops its children to restart rather than for
    good: unless it is stopped for good itself (by its parent; the root, which has none, by
    whoever stops the tree), its run ends to start again (its parent restarts it); and one
    that gives up (`failure`) is restarted by its parent, or is the root, whose daemon the
    service manager starts afresh. So a child's wait for a crashed sibling (a settled ask of
    the store whose crashes escalated) does not hold back the escalation."""
    if failure is not None:
        return True
    return node.parent is not None and not node.stopping_for_good


def _restarts(restart: Restart, error: Exception | None) -> bool:
    """Whether a child with this restart type starts again after this exit."""
    if restart is Restart.PERMANENT:
        return True
    return restart is Restart.TRANSIENT and error is not None


async def run_root(
    actor: Actor,
    node: Node,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the root actor of a tree under `node` (which has no parent)."""
    set_current_node(node)
    structlog.contextvars.bind_contextvars(actor=node.path)
    node.figures = actor.figures
    node.inbox_statistics = actor.inbox_statistics

    signal = _RootSignal(task_status, node)
    try:
        await actor.run(task_status=signal)
    finally:
        node.state = ActorState.STOPPED


@attrs.define
class _RootSignal:
    """Marks the root node running when the root actor has started."""

    task_status: trio.TaskStatus[None]
    node: Node

    def started(self, value: None = None) -> None:
        self.node.mark_running()
        self.task_status.started()
