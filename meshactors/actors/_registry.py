"""The live actor tree: one node per running actor, read by `meshactors inspect`."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

import attrs
import trio

from meshactors.actors._crash import CrashSwitch


class ActorState(enum.StrEnum):
    """Lifecycle of one node, as shown by `inspect`."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"


@attrs.define(eq=False)
class Node:
    """One actor's entry in the tree: identity, lifecycle, inbox and published figures."""

    name: str
    kind: str
    parent: Node | None = None
    state: ActorState = ActorState.STARTING
    started_at: float | None = None
    restarts: int = 0
    shutdown_timeout: float = 5.0
    children: dict[str, Node] = attrs.field(factory=dict)
    inbox_statistics: Callable[[], trio.MemoryChannelStatistics | None] | None = None
    figures: Callable[[], Mapping[str, Any]] | None = None
    crash_switch: CrashSwitch | None = None  # set while a supervisor runs it
    # Set by its supervisor's stop that nothing restarts (not `state`, which is for display):
    # a settled ask waits for its answer only then (`ask`).
    stopping_for_good: bool = False

    @property
    def path(self) -> str:
        """Slash-joined names from the root, e.g. `daemon/control/client c3`."""
        if self.parent is None:
            return self.name
        return f"{self.parent.path}/{self.name}"

    def add_child(self, name: str, kind: str, shutdown_timeout: float = 5.0) -> Node:
        """Attach a fresh child node, replacing any earlier one of the same name."""
        node = Node(name=name, kind=kind, parent=self, shutdown_timeout=shutdown_timeout)
        self.children[name] = node
        return node

    def detach(self) -> None:
        """Remove this node from its parent, as when a temporary child ends."""
        if self.parent is not None and self.parent.children.get(self.name) is self:
            del self.parent.children[self.name]

    def mark_running(self) -> None:
        """Record that the actor finished starting."""
        self.state = ActorState.RUNNING
        self.started_at = time.time()

    def request_crash(self, reason: str) -> bool:
        """Ask the running actor to crash (see `DebugCrash`); False when it is not running under
        a supervisor (the root, or starting, restarting, stopping)."""
        if self.crash_switch is None or self.state is not ActorState.RUNNING:
            return False
        self.crash_switch.crash(reason)
        return True

    def find(self, path: str) -> Node | None:
        """The node at a slash-separated path below (and including) this one."""
        head, _, rest = path.partition("/")
        if head != self.name:
            return None
        if not rest:
            return self
        for child in self.children.values():
            found = child.find(rest)
            if found is not None:
                return found
        return None

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """A JSON-ready copy of this subtree."""
        now = time.time() if now is None else now
        stats = self.inbox_statistics() if self.inbox_statistics is not None else None
        inbox = (
            None
            if stats is None
            else {
                "used": stats.current_buffer_used,
                "size": _json_capacity(stats.max_buffer_size),
                "waiting_senders": stats.tasks_waiting_send,
            }
        )
        return {
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "state": self.state.value,
            "started_at": self.started_at,
            "uptime_s": None if self.started_at is None else round(now - self.started_at, 3),
            "restarts": self.restarts,
            "inbox": inbox,
            "figures": dict(self.figures()) if self.figures is not None else {},
            "children": [child.snapshot(now) for child in list(self.children.values())],
        }


def _json_capacity(size: float) -> int | None:
    """Channel capacity for JSON: `None` stands for an unbounded (infinite) buffer."""
    return None if size == float("inf") else int(size)


_current_node: ContextVar[Node] = ContextVar("meshactors_current_node")


def current_node() -> Node:
    """The node of the actor whose task is running now."""
    return _current_node.get()


def in_stop_for_good() -> bool:
    """Whether the current task's actor is being stopped for good; False in a task of no
    actor (nothing stops it so: its cancel is any other)."""
    node = _current_node.get(None)
    return node is not None and node.stopping_for_good


def cleanup_scope() -> trio.CancelScope:
    """A shielded scope for `finally` cleanup, bounded by the current actor's shutdown timeout."""
    return trio.move_on_after(current_node().shutdown_timeout, shield=True)


def set_current_node(node: Node) -> None:
    """Bind `node` as the current actor for this task and the tasks it spawns."""
    _current_node.set(node)
