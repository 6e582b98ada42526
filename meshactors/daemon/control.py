"""The `control` supervisor: the socket listener and one temporary `client` child per connection."""

from __future__ import annotations

import itertools
import os
import socket as stdlib_socket
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import attrs
import structlog
import trio

from meshactors.actors import Actor, ChildSpec, Restart, Supervisor, cleanup_scope
from meshactors.daemon.client import ClientActor
from meshactors.daemon.services import Services
from meshactors.wire.ipc import ErrorCode, OpError, error_frame

log = structlog.get_logger("meshactors.control")

MAX_CLIENTS = 4096  # connections served at once; more are told so and closed
LISTEN_BACKLOG = 512
CLIENT_SHUTDOWN_TIMEOUT = 2.0  # seconds a client's cleanup may take (releasing claims etc.)
SOCKET_MODE = 0o600


@attrs.define(eq=False)
class Listener(Actor):
    """Accepts connections on the Unix socket and asks `control` to start a client for each."""

    kind: ClassVar[str] = "listener"

    path: Path
    control: Supervisor
    services: Services
    accepted: int = 0
    refused: int = 0
    _ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))

    def figures(self) -> dict[str, object]:
        return {"socket": str(self.path), "accepted": self.accepted, "refused": self.refused}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listener = await bind_unix_listener(self.path)
        try:
            task_status.started()
            while True:
                stream = await listener.accept()
                await self._serve(stream)
        finally:
            with cleanup_scope():
                await listener.aclose()
                self.path.unlink(missing_ok=True)

    async def _serve(self, stream: trio.SocketStream) -> None:
        if len(self.services.client_nodes()) >= MAX_CLIENTS:
            self.refused += 1
            busy = OpError(ErrorCode.UNAVAILABLE, f"at most {MAX_CLIENTS} clients at once")
            with trio.move_on_after(1):
                await stream.send_all(error_frame(None, busy))
            await stream.aclose()
            return
        self.accepted += 1
        client_id = f"c{next(self._ids)}"  # monotonic, never reused while the daemon runs
        actor = ClientActor(client_id, stream, self.services)
        spec = ChildSpec(
            f"client {client_id}",
            actor,
            restart=Restart.TEMPORARY,
            shutdown_timeout=CLIENT_SHUTDOWN_TIMEOUT,
        )
        await self.control.start_child(spec)


async def bind_unix_listener(path: Path) -> trio.SocketListener:
    """Listen on a Unix socket at `path`, mode 0600; the daemon lock removed any stale one."""
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))  # inside the 0700 runtime directory, so the mode race is moot
        os.chmod(path, SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def control_supervisor(socket_path: Path, services: Services) -> Supervisor:
    """The `control` subtree: a listener whose connections become its siblings."""
    control = Supervisor()
    control.children = [ChildSpec("listener", Listener(socket_path, control, services))]
    return control
