"""Listeners whose failure says in one line where and why (`cannot listen on 127.0.0.1:7447:
address already in use`), for the daemon's and the broker's start-up."""

from __future__ import annotations

import trio


class ListenError(OSError):
    """A TCP port or Unix socket path could not be listened on; its message is the one line a
    user sees."""

    def __str__(self) -> str:
        return str(self.strerror)


async def open_tcp_listeners(
    host: str, port: int, *, backlog: int | None = None
) -> list[trio.SocketListener]:
    """trio's `open_tcp_listeners`, raising ListenError naming host:port and the OS's reason."""
    try:
        return await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        if ": " in reason:  # trio's "error while attempting to bind on address …: reason"
            reason = reason.rsplit(": ", 1)[1]
        raise ListenError(exc.errno, f"cannot listen on {host}:{port}: {reason}") from exc
