"""The service manager's notification protocol (sd_notify) without libsystemd: READY, STOPPING,
STATUS and watchdog pings as datagrams to `$NOTIFY_SOCKET`, and the `notifier` actor that pings
the watchdog only after the daemon's tree answered a probe."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar

import attrs
import structlog
import trio

from meshactors.actors import Actor
from meshactors.paths import MAX_SOCKET_PATH_BYTES

log = structlog.get_logger("meshactors.sdnotify")

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"  # set by systemd for Type=notify services
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"  # WatchdogSec= in microseconds
WATCHDOG_PID_ENV = "WATCHDOG_PID"  # the process the watchdog is meant for, when set
MAX_STATUS_CHARS = 200  # STATUS= text longer than this is cut (systemctl shows one line)
WATCHDOG_PING_FRACTION = 0.5  # ping every half of WATCHDOG_USEC, as sd_watchdog_enabled(3) asks
MIN_WATCHDOG_INTERVAL = 0.01  # seconds; a tinier WATCHDOG_USEC would only spin the event loop


class NotifyEnvError(ValueError):
    """`$NOTIFY_SOCKET` or the watchdog variables are malformed: the service manager's setup is
    broken, so the daemon refuses to start rather than be killed for pings it never sends."""

    code = "bad_notify_env"


@attrs.define(eq=False)
class Notifier:
    """Sends state changes to the service manager; every send is a no-op when not run by one."""

    address: str | None = None  # a socket path, or "\0name" for an abstract socket
    watchdog_interval: float | None = None  # seconds between pings; None: no watchdog
    sent: int = 0
    failed: int = 0
    _failing: bool = False  # the last send failed: the next failure is logged at debug

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """Read `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (default: os.environ, our
        pid). Raises NotifyEnvError when a variable that is set cannot be understood."""
        if env is None:
            env = os.environ
        address = _parse_address(env.get(NOTIFY_SOCKET_ENV))
        interval = None
        if address is not None:
            interval = _parse_watchdog(env, os.getpid() if pid is None else pid)
        return cls(address, interval)

    def ready(self, status: str) -> bool:
        """Tell the manager the daemon serves (Type=notify waits for this)."""
        return self.send("READY=1", f"STATUS={_one_line(status)}")

    def stopping(self, status: str) -> bool:
        """Tell the manager the daemon began its orderly stop."""
        return self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def ping(self) -> bool:
        """Reset the manager's watchdog timer."""
        return self.send("WATCHDOG=1")

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; False (and logged) when it could not be sent.

        The socket is non-blocking: a manager that does not read never stalls the daemon.
        """
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self.address)
        except OSError as exc:
            self.failed += 1
            # Once per run of failures: a broken socket would log every watchdog interval.
            report = log.debug if self._failing else log.warning
            self._failing = True
            report("service manager notification failed", message=assignments, error=str(exc))
            return False
        self.sent += 1
        self._failing = False
        return True

    def figures(self) -> dict[str, object]:
        """Where notifications go and how many went, for the inspect tree."""
        shown = None if self.address is None else self.address.replace("\0", "@", 1)
        return {
            "notify_socket": shown,
            "watchdog_interval_s": self.watchdog_interval,
            "sent": self.sent,
            "failed": self.failed,
        }


def _parse_address(value: str | None) -> str | None:
    """NOTIFY_SOCKET as a socket address: an absolute path, or `@name` for an abstract one."""
    if not value:
        return None
    size = len(os.fsencode(value))  # bytes, as sun_path counts; an abstract name's @ too
    if size > MAX_SOCKET_PATH_BYTES:
        limit = MAX_SOCKET_PATH_BYTES
        raise NotifyEnvError(f"{NOTIFY_SOCKET_ENV} is {size} bytes, longer than the {limit}")
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise NotifyEnvError(
        f"{NOTIFY_SOCKET_ENV}={value!r} is neither an absolute path nor an abstract @name"
    )


def _parse_watchdog(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings, or None when no watchdog is armed for `pid`."""
    usec = env.get(WATCHDOG_USEC_ENV)
    if not usec:
        return None
    watchdog_pid = env.get(WATCHDOG_PID_ENV)
    if watchdog_pid and _positive_int(WATCHDOG_PID_ENV, watchdog_pid) != pid:
        return None  # armed for another process (we were started by it)
    interval = _positive_int(WATCHDOG_USEC_ENV, usec) / 1e6 * WATCHDOG_PING_FRACTION
    return max(interval, MIN_WATCHDOG_INTERVAL)


def _positive_int(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) == 0:
        raise NotifyEnvError(f"{name}={value!r} is not a positive integer")
    return int(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_STATUS_CHARS]


@attrs.define(eq=False)
class NotifierActor(Actor):
    """Pings the watchdog every interval, but only after `probe` answered within that interval,
    so a wedged tree (not just a live event loop) gets the daemon restarted."""

    kind: ClassVar[str] = "notifier"

    notifier: Notifier
    probe: Callable[[], Awaitable[object]]  # a round trip through the actors that must be alive
    pings: int = 0
    missed: int = 0  # intervals whose probe failed or did not answer in time

    def figures(self) -> dict[str, object]:
        return self.notifier.figures() | {"pings": self.pings, "missed": self.missed}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        interval = self.notifier.watchdog_interval
        if interval is None:
            await trio.sleep_forever()
        while True:
            deadline = trio.current_time() + interval
            if await self._probe_until(deadline) and self.notifier.ping():
                self.pings += 1
            await trio.sleep_until(deadline)

    async def _probe_until(self, deadline: float) -> bool:
        """Whether the probe answered before `deadline`; a failure is logged, never raised."""
        with trio.move_on_at(deadline):
            try:
                await self.probe()
            except Exception as exc:
                self.missed += 1
                log.warning("watchdog probe failed; not pinging", error=repr(exc))
                return False
            return True
        self.missed += 1
        log.warning("watchdog probe did not answer in time; not pinging")
        return False
