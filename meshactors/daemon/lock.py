"""One daemon per home: exclusive flocks on its pid file (in the runtime directory, beside the
socket) and on its state lock (in the state directory, beside the identity and database), held
for the daemon's lifetime. Either alone would let two daemons share the other directory.

The kernel drops the locks when their holder dies, so a SIGKILLed daemon leaves only files
behind: the next daemon takes the locks and removes the dead one's socket file. Our locks prove
only that no daemon of this home lives: a socket something still listens on (another home's
daemon, given the same `--socket`) is left alone and refused.
"""

import fcntl
import os
import socket as stdlib_socket
import stat
from collections.abc import Sequence
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


class SocketInUse(Exception):
    """Something (another home's daemon) listens on the socket path this daemon was given."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        super().__init__(
            f"cannot listen on {socket}: another daemon listens there "
            "(stop it, or use another --socket PATH)"
        )


@attrs.define
class DaemonLock:
    """The daemon's exclusive locks on its lock files (each holds its pid); release it (or
    leave the `with`) to drop them."""

    _held: list[tuple[Path, int]] = attrs.field(factory=list, repr=False)

    @classmethod
    def acquire(
        cls, lock_files: Sequence[Path], socket: Path, *, keep_socket: bool = False
    ) -> Self:
        """Lock each of `lock_files` in turn and write our pid in it, then remove a dead
        daemon's socket file at `socket` (unless `keep_socket`: it is the live one a service
        manager handed us).

        Raises AlreadyRunning, naming the file, when another live process holds one of them,
        and SocketInUse when something listens on `socket`; the locks taken before it are
        released again.
        """
        lock = cls()
        try:
            for lock_file in lock_files:
                fd = _lock_pid_file(lock_file)
                lock._held.append((lock_file, fd))
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            if not keep_socket:
                _remove_stale_socket(socket)
        except BaseException:
            lock.release()
            raise
        return lock

    def release(self) -> None:
        """Unlink each lock file (if it is still ours) and close it, dropping its lock, in
        the reverse order of taking them. Idempotent."""
        while self._held:
            lock_file, fd = self._held.pop()
            try:
                if _is_current(fd, lock_file):
                    lock_file.unlink(missing_ok=True)  # while still locked, see _lock_pid_file
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
    """Remove a socket file left by a killed daemon; anything else at that path is left alone.

    Raises SocketInUse when something listens on it: our locks do not prove it stale, as
    another home's daemon may serve the same path.
    """
    try:
        mode = os.lstat(socket).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        return
    if _is_listened_on(socket):
        raise SocketInUse(socket)
    socket.unlink(missing_ok=True)


def _is_listened_on(socket: Path) -> bool:
    """True when something accepts connections on the Unix socket `socket`; the connect is
    non-blocking, so a listener that never accepts cannot hold the start."""
    with stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(str(socket))
        except BlockingIOError:
            return True  # listening, its backlog full
        except OSError:
            return False  # refused: nobody listens (a dead daemon's file)
    return True
