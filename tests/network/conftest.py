"""A broker and several real daemons in one trio run, each in its own home with its own key."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from meshactors.actors import ActorState
from meshactors.broker.server import Broker
from meshactors.daemon.main import DaemonOptions, serve
from meshactors.daemon.services import Services
from meshactors.identity import load_or_create_identity
from meshactors.network.network import Network
from meshactors.paths import prepare_dirs, resolve_paths
from tests.support import LineClient

NET = "net1"
WAIT = 10.0  # seconds any awaited condition may take before the test fails


class OpFailed(AssertionError):
    """An op answered with an error; `code` is its error code."""

    def __init__(self, op: str, error: dict[str, Any]) -> None:
        super().__init__(f"{op}: {error}")
        self.code = error["code"]


@attrs.define(eq=False)
class Daemon:
    """A running daemon, a client for its socket and every event it published since start."""

    name: str
    home: Path
    services: Services
    client: LineClient
    scope: trio.CancelScope
    stopped: trio.Event
    events: list[dict[str, Any]] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def device_id(self) -> str:
        return self.services.identity.device_id

    def network(self, network_id: str = NET) -> Network:
        return self.services.networks.get(network_id)

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        """Run an op and return its data; OpFailed on an error answer."""
        answer = await self.client.call(op, **params)
        if not answer["ok"]:
            raise OpFailed(op, answer["error"])
        data: dict[str, Any] = answer["data"]
        return data

    async def join(self, broker_url: str, network_id: str = NET, **config: Any) -> dict[str, Any]:
        return await self.call(
            "network_add", config={"id": network_id, "brokers": [broker_url], **config}
        )

    async def peer(self, other: Daemon | str, network_id: str = NET) -> dict[str, Any] | None:
        """What peers_list shows of `other` (a daemon or a device id), if anything."""
        device_id = other if isinstance(other, str) else other.device_id
        peers = (await self.call("peers_list", network=network_id, all=True))["peers"]
        return next((p for p in peers if p["device_id"] == device_id), None)

    async def wait_event(
        self, kind: str, timeout: float = WAIT, after: int = 0, **match: Any
    ) -> dict[str, Any]:
        """The first event of `kind` (newer than event id `after`) whose fields match."""
        with trio.fail_after(timeout):
            seen = 0
            while True:
                changed = self._changed
                for event in self.events[seen:]:
                    if (
                        event["kind"] == kind
                        and event["event_id"] > after
                        and all(event.get(key) == value for key, value in match.items())
                    ):
                        return event
                seen = len(self.events)
                await changed.wait()

    async def wait_status(self, other: Daemon, status: str, after: int = 0) -> dict[str, Any]:
        """Wait for the event saying `other` reached `status` here."""
        kind = {"active": "peer_active", "pending": "peer_pending", "offline": "peer_left"}[status]
        return await self.wait_event(kind, after=after, device_id=other.device_id)

    @property
    def last_event_id(self) -> int:
        return int(self.events[-1]["event_id"]) if self.events else 0

    def record(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def crashes(self) -> dict[str, str]:
        """Every actor in the registry that ever restarted or is not running, by path (what
        a crash leaves behind), each with its state and restarts."""
        found: dict[str, str] = {}
        nodes = [self.services.tree]
        while nodes:
            node = nodes.pop()
            if node.restarts or node.state is not ActorState.RUNNING:
                found[node.path] = f"{node.state.value}, {node.restarts} restarts"
            nodes.extend(node.children.values())
        return found

    async def stop(self) -> None:
        """Stop the daemon as `shutdown` would and wait until it has."""
        self.services.shutdown.ring()
        with trio.fail_after(WAIT):
            await self.stopped.wait()


@attrs.define(eq=False)
class Mesh:
    """Starts brokers and daemons in the test's nursery."""

    root: Path
    nursery: trio.Nursery
    broker_port: int = 0
    broker_scope: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.broker_port}/v1"

    async def start_broker(self, port: int = 0) -> int:
        """Run a broker (on `port`, or a free one); returns the bound port."""
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[int]) -> None:
            with scope:
                await Broker().serve("127.0.0.1", port, task_status=task_status)

        self.broker_port = await self.nursery.start(run)
        self.broker_scope = scope
        return self.broker_port

    def stop_broker(self) -> None:
        assert self.broker_scope is not None
        self.broker_scope.cancel()

    async def daemon(self, name: str, label: str | None = None, **options: Any) -> Daemon:
        """Start (or restart) the daemon whose home is `root/name`, labelled `label` (default
        `name`)."""
        home = self.root / name
        paths = resolve_paths({"MESHACTORS_HOME": str(home)})
        prepare_dirs(paths)
        identity = load_or_create_identity(paths.identity_file)
        identity = attrs.evolve(identity, label=name if label is None else label)
        scope, stopped = trio.CancelScope(), trio.Event()

        async def run(task_status: trio.TaskStatus[Services]) -> None:
            try:
                with scope:
                    await serve(
                        DaemonOptions(paths=paths, identity=identity, **options),
                        task_status=task_status,
                    )
            finally:
                stopped.set()

        services: Services = await self.nursery.start(run)
        client = LineClient(await trio.open_unix_socket(str(paths.socket)))
        daemon = Daemon(name, home, services, client, scope, stopped)
        await self._watch(daemon)
        return daemon

    async def reconnect(self, daemon: Daemon, restarts: int) -> None:
        """New connections for `daemon`'s client and event watcher once its `control` has
        restarted past `restarts` (which closed the old ones) and its socket answers again; the
        watcher resumes the event stream after the last event it saw, so no event is missed."""
        control = daemon.services.tree.children["control"]
        socket = daemon.services.paths.socket
        stream = await connect_when_listening(socket, lambda: control.restarts > restarts)
        daemon.client = LineClient(stream)
        await self._watch(daemon)

    async def _watch(self, daemon: Daemon) -> None:
        watcher = LineClient(await trio.open_unix_socket(str(daemon.services.paths.socket)))
        await watcher.call("events_subscribe", since=daemon.last_event_id)
        self.nursery.start_soon(_collect, watcher, daemon.record)


RECONNECT_BACKOFF = 0.01  # seconds between connects to a socket whose listener restarts


async def connect_when_listening(socket: Path, ready: Callable[[], bool]) -> trio.SocketStream:
    """Connect to a control socket once `ready()` says its listener is the new one, retrying
    (as a program does) while the socket is not there or refuses, until WAIT; a connection is
    taken only once it answers `status`."""
    with trio.fail_after(WAIT):
        while True:
            if ready():
                try:
                    stream = await trio.open_unix_socket(str(socket))
                    if (await LineClient(stream).call("status"))["ok"]:
                        return stream
                except (OSError, EOFError, trio.BrokenResourceError):
                    pass
            await trio.sleep(RECONNECT_BACKOFF)


async def _collect(watcher: LineClient, record: Callable[[dict[str, Any]], None]) -> None:
    try:
        while True:
            frame = await watcher.frame()
            if "kind" in frame:
                record(frame)
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def run_cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`meshactors ARGS…` against `daemon`, in a process of its own, whatever its exit code."""
    return await trio.run_process(
        [sys.executable, "-m", "meshactors", *args],
        env={**os.environ, "MESHACTORS_HOME": str(daemon.home)},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


@pytest.fixture
async def mesh(tmp_path: Path, nursery: trio.Nursery) -> Mesh:
    mesh = Mesh(tmp_path, nursery)
    await mesh.start_broker()
    return mesh


async def approve_both(a: Daemon, b: Daemon, network_id: str = NET) -> None:
    """Each approves the other; returns once both see the other active."""
    await a.call("roster_approve", network=network_id, device_id=b.device_id)
    await b.call("roster_approve", network=network_id, device_id=a.device_id)
    await a.wait_status(b, "active")
    await b.wait_status(a, "active")


UNREACHABLE = "ws://127.0.0.1:9/v1"  # a broker that never answers: own-device routing only


async def solo_daemon(mesh: Mesh) -> Daemon:
    """A daemon joined to NET through a broker that never answers: it reaches only itself."""
    daemon = await mesh.daemon("solo")
    await daemon.join(UNREACHABLE)
    return daemon


async def active_pair(mesh: Mesh) -> tuple[Daemon, Daemon]:
    """Daemons a and b, both joined to NET through the mesh's broker and approved both ways."""
    a, b = await mesh.daemon("a"), await mesh.daemon("b")
    await a.join(mesh.url)
    await b.join(mesh.url)
    await approve_both(a, b)
    return a, b


@pytest.fixture
def real_time_clock() -> trio.testing.MockClock:
    """Real time that a test can also jump past a deadline."""
    return trio.testing.MockClock(rate=1)
