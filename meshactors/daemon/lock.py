"""One daemon per home: an exclusive flock on the pid file, held for the daemon's lifetime.

The kernel drops the lock when its holder dies, so a SIGKILLed daemon leaves only files behind:
the next daemon takes the lock and removes the dead one's socket file.
"""

import fcntl
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import Self

import attrs

from meshactors.paths import open_private, tighten_mode

PID_FILE_MODE = 0o600  # private like every file in the home (`down` runs as the same user)
PID_FILE_MAX_BYTES = 32  # a pid is at most 7 digits on Linux; never read more than this
ACQUIRE_ATTEMPTS = 5  # reopen a pid file unlinked under us (by a releasing daemon) this often


class AlreadyRunning(Exception):
    """A live daemon holds the lock on `pid_file`; `pid` is None if it has not written it yet.

    Named by its pid and lock, not by a socket: it may serve another one than the caller's.
    """

    def __init__(self, pid: int | None, pid_file: Path) -> None:
        self.pid = pid
        self.pid_file = pid_file
        shown = "unknown" if pid is None else str(pid)
        super().__init__(f"a daemon is already running (pid {shown}, holding {pid_file})")


@attrs.define
class DaemonLock:
    """The daemon's exclusive lock on its pid file; release it (or leave the `with`) to drop it."""

    pid_file: Path
    _fd: int | None = attrs.field(repr=False)

    @classmethod
    def acquire(cls, pid_file: Path, socket: Path, *, keep_socket: bool = False) -> Self:
        """Lock `pid_file`, write our pid in it and remove a dead daemon's socket file at `socket`
        (unless `keep_socket`: it is the live one a service manager handed us).

        Raises AlreadyRunning when another live process holds the lock.
        """
        fd = _lock_pid_file(pid_file)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            if not keep_socket:
                _remove_stale_socket(socket)
        except BaseException:
            os.close(fd)
            raise
        return cls(pid_file, fd)

    def release(self) -> None:
        """Unlink the pid file (if it is still ours) and close it, dropping the lock. Idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _is_current(fd, self.pid_file):
                self.pid_file.unlink(missing_ok=True)  # while still locked, see _lock_pid_file
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def read_running_pid(pid_file: Path) -> int | None:
    """The pid of the live daemon holding `pid_file`'s lock, or None when no process holds it."""
    try:
        fd = open_private(pid_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd)
    else:
        return None  # nobody holds it: a killed daemon's leftover (closing drops our lock)
    finally:
        os.close(fd)


def _lock_pid_file(pid_file: Path) -> int:
    """Open and exclusively lock the file currently at `pid_file`; return its descriptor.

    A releasing daemon unlinks its pid file before unlocking it, so a lock we win may be on an
    unlinked file; then we retry on the new one, or two daemons could each hold "the" lock.
    """
    for _ in range(ACQUIRE_ATTEMPTS):
        fd = open_private(pid_file, os.O_RDWR | os.O_CREAT, PID_FILE_MODE)
        try:
            tighten_mode(fd, pid_file)  # one an older version made 0644
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise AlreadyRunning(pid, pid_file) from None
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, pid_file):
            return fd
        os.close(fd)
    raise AlreadyRunning(None, pid_file)


def _is_current(fd: int, path: Path) -> bool:
    """True when `fd` is the file that `path` names now (not an unlinked or replaced one)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _read_pid(fd: int) -> int | None:
    """The pid written in a pid file, or None when it is empty or not a pid."""
    text = os.pread(fd, PID_FILE_MAX_BYTES, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _remove_stale_socket(socket: Path) -> None:
    """Remove a socket file left by a killed daemon; anything else at that path is left alone."""
    try:
        mode = os.lstat(socket).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode):
        socket.unlink(missing_ok=True)
