"""Where the daemon keeps its files (MESHACTORS_HOME or the XDG directories), and how the private
ones (identity, host record, tokens) are read and written there: owner-only and atomically."""

import errno
import json
import os
import secrets
import stat
from collections.abc import Collection, Mapping
from pathlib import Path

import attrs
import structlog

APP_NAME = "meshactors"  # directory name under each XDG base directory
SOCKET_NAME = "daemon.sock"  # control socket file name inside the runtime dir
FALLBACK_RUNTIME_DIR = "/tmp/meshactors-{uid}"  # runtime dir when XDG_RUNTIME_DIR is unset
PRIVATE_DIR_MODE = 0o700  # state and runtime dirs: the identity and the socket are the owner's
SHARED_WRITE_BITS = 0o022  # a private dir with one of these was open to others' files: warned
PRIVATE_FILE_MODE = 0o600  # identity, host record, tokens: readable by the owner only
ROOT_UID = 0  # besides ours, the only owner whose symlink to a private directory we follow
TMP_SUFFIX_BYTES = 8  # random bytes in a temporary file's name, so writers never collide
MAX_SOCKET_PATH_BYTES = 107  # a Unix socket's path, less its NUL, must fit sockaddr_un's 108
SOCKET_PATH_FIX = "use a shorter MESHACTORS_HOME, or --socket PATH"  # for a path too long

log = structlog.get_logger(__name__)


class UnsafeDirectory(PermissionError):
    """A private directory already exists but belongs to another user, or is a symlink another
    user made: we refuse to use it."""

    def __init__(self, directory: Path, reason: str) -> None:
        super().__init__(errno.EPERM, f"{reason}; refusing to keep private files there", None)
        self.filename = str(directory)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class RefusedFile(PermissionError):
    """A file the daemon keeps in its home that it will not use, whatever it holds: told in
    its own words, exit 3, never as a damaged or unreadable file. `code` names it under --json."""

    code = "refused_file"


class SymlinkRefused(RefusedFile):
    """A file the daemon keeps in its home is a symlink: it is never followed (a link could
    make the daemon read, write or chmod a file outside the home)."""

    code = "symlink_refused"

    def __init__(self, path: Path) -> None:
        super().__init__(
            errno.ELOOP,
            f"{path} is a symlink, which meshactors never follows: "
            "replace it with a regular file (or remove it to have a new one made)",
        )
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


class ForeignFile(RefusedFile):
    """A file the daemon keeps in its home belongs to another user: one planted in a home that
    was once group- or world-writable would hand that user our identity or configuration."""

    code = "foreign_file"

    def __init__(self, path: Path, owner: int) -> None:
        me = os.geteuid()
        super().__init__(
            errno.EPERM,
            f"belongs to uid {owner}, not to us (uid {me}); refusing to use a file another "
            f"user made: remove it, or chown it to uid {me} if you trust it",
        )
        self.filename = str(path)
        self.owner = owner

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class NotRegularFile(OSError):
    """A file meshactors reads or keeps is a FIFO, socket, device or directory: opening one
    for reading could wait forever for a writer, and what it holds is not the daemon's file."""

    def __init__(self, path: Path, mode: int) -> None:
        super().__init__(errno.EINVAL, f"{path} is a {kind_of(mode)}, not a regular file")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def kind_of(mode: int) -> str:
    """What a file of `mode` (from stat or lstat) is, in words: "directory", "FIFO", …"""
    return next((name for test, name in _KINDS if test(mode)), "special file")


def socket_path_too_long(path: Path) -> str | None:
    """Why `path` cannot name a Unix socket, in words, when it is longer than
    MAX_SOCKET_PATH_BYTES; None when it fits. Daemon and clients say it alike."""
    size = len(os.fsencode(path))
    if size <= MAX_SOCKET_PATH_BYTES:
        return None
    limit = MAX_SOCKET_PATH_BYTES
    return f"the path is {size} bytes, longer than the {limit} a Unix socket's may be"


_KINDS = (
    (stat.S_ISREG, "regular file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISDIR, "directory"),
)


def open_regular(
    path: Path, flags: int, mode: int = PRIVATE_FILE_MODE, *, owners: Collection[int] = ()
) -> int:
    """`os.open` that refuses anything but a regular file (NotRegularFile) without waiting:
    opened non-blocking (a FIFO opens at once), checked, then made blocking again. With
    `owners`, a file none of them owns is refused too (ForeignFile), checked on the fd."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO no one reads, opened to write;
            raise NotRegularFile(path, os.stat(path).st_mode) from None  # a socket; a directory
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise NotRegularFile(path, status.st_mode)
        if owners and status.st_uid not in owners:
            raise ForeignFile(path, status.st_uid)
        os.set_blocking(fd, True)  # as callers expect; a detached daemon inherits the log's
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(path: Path, flags: int, mode: int = PRIVATE_FILE_MODE) -> int:
    """`open_regular` for a file in the home, never through a symlink (SymlinkRefused), and
    only when it is ours (ForeignFile)."""
    try:
        return open_regular(path, flags | os.O_NOFOLLOW, mode, owners=(os.geteuid(),))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkRefused(path) from None
        raise


def refuse_unsafe(path: Path) -> None:
    """Raise SymlinkRefused if `path` is a symlink, ForeignFile if another user owns it (for
    files opened by others, e.g. SQLite's WAL: the home is 0700 by now, so none can change)."""
    try:
        status = os.lstat(path)
    except OSError:
        return  # absent, or unreachable: the open that follows reports why
    if stat.S_ISLNK(status.st_mode):
        raise SymlinkRefused(path)
    if status.st_uid != os.geteuid():
        raise ForeignFile(path, status.st_uid)


@attrs.frozen
class Paths:
    """Every filesystem location the daemon and its clients use, resolved once at startup."""

    config_dir: Path
    state_dir: Path
    runtime_dir: Path
    socket: Path

    @property
    def state_db(self) -> Path:
        """The SQLite database holding networks, roster, outbox, inbox and events."""
        return self.state_dir / "state.db"

    @property
    def identity_file(self) -> Path:
        """The device's Ed25519 identity (private)."""
        return self.state_dir / "identity.json"

    @property
    def host_file(self) -> Path:
        """The record of the machine the identity belongs to (private)."""
        return self.state_dir / "host.json"

    @property
    def config_file(self) -> Path:
        """The daemon's optional TOML configuration."""
        return self.config_dir / "daemon.toml"

    @property
    def pid_file(self) -> Path:
        """The running daemon's pid, flock'd while it lives."""
        return self.runtime_dir / "daemon.pid"

    @property
    def state_lock_file(self) -> Path:
        """The running daemon's pid again, flock'd while it lives: one daemon per identity and
        database, even when two runs resolve different runtime directories (a unit's
        XDG_RUNTIME_DIR and a sudo shell's /tmp fallback)."""
        return self.state_dir / "daemon.lock"

    @property
    def lock_files(self) -> tuple[Path, Path]:
        """What a daemon locks for its life, in order: the pid file (its socket's directory),
        then the state lock (its identity and database)."""
        return (self.pid_file, self.state_lock_file)

    @property
    def token_file(self) -> Path:
        """The bearer token for the optional loopback TCP listener (private)."""
        return self.state_dir / "http-token"


def resolve_paths(
    env: Mapping[str, str] | None = None, socket_override: str | None = None
) -> Paths:
    """Resolve all paths from `env` (default: os.environ) and the CLI's --socket.

    Each directory comes from the first of: MESHACTORS_HOME (everything in one directory); the
    directory systemd made for the service ($CONFIGURATION_DIRECTORY, $STATE_DIRECTORY,
    $RUNTIME_DIRECTORY, from ConfigurationDirectory= etc.); the XDG base directory plus
    `meshactors` (relative or empty XDG values are ignored, as the XDG spec says). The socket is
    `socket_override`, else MESHACTORS_SOCKET, else daemon.sock in the runtime dir.
    """
    if env is None:
        env = os.environ
    home = _user_path(env.get("MESHACTORS_HOME"))
    if home is not None:
        config_dir = state_dir = runtime_dir = home
    else:
        config_dir = _service_dir(env.get("CONFIGURATION_DIRECTORY")) or (
            user_config_home(env) / APP_NAME
        )
        state_dir = _service_dir(env.get("STATE_DIRECTORY")) or (
            _xdg_base(env, "XDG_STATE_HOME", ".local/state") / APP_NAME
        )
        runtime_dir = _service_dir(env.get("RUNTIME_DIRECTORY")) or _xdg_runtime_dir(env)
    socket = (
        _user_path(socket_override)
        or _user_path(env.get("MESHACTORS_SOCKET"))
        or runtime_dir / SOCKET_NAME
    )
    return Paths(config_dir=config_dir, state_dir=state_dir, runtime_dir=runtime_dir, socket=socket)


def _service_dir(value: str | None) -> Path | None:
    """A directory systemd made for the unit: the first of its colon-separated absolute paths."""
    first = (value or "").split(":", 1)[0]
    return Path(first) if os.path.isabs(first) else None


def user_config_home(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME`, or ~/.config: where user-level configuration (and user units) live."""
    return _xdg_base(os.environ if env is None else env, "XDG_CONFIG_HOME", ".config")


def _xdg_base(env: Mapping[str, str], name: str, default: str) -> Path:
    """An XDG base directory, or its default under the user's home."""
    return _xdg_path(env.get(name)) or (_xdg_path(env.get("HOME")) or Path.home()) / default


def _xdg_runtime_dir(env: Mapping[str, str]) -> Path:
    """`$XDG_RUNTIME_DIR/meshactors`, or a per-uid directory in /tmp when it is unset."""
    runtime_base = _xdg_path(env.get("XDG_RUNTIME_DIR"))
    if runtime_base is None:
        return Path(FALLBACK_RUNTIME_DIR.format(uid=os.getuid()))
    return runtime_base / APP_NAME


def _user_path(value: str | None) -> Path | None:
    """A path the user typed: `~` expanded and made absolute; None when unset or empty."""
    return Path(value).expanduser().absolute() if value else None


def _xdg_path(value: str | None) -> Path | None:
    """An XDG base directory: only absolute values count."""
    return Path(value) if value and os.path.isabs(value) else None


def prepare_dirs(paths: Paths) -> None:
    """Create the daemon's directories: state and runtime dirs 0700 (mode fixed if they exist),
    and the socket's own parent 0700 when it is a separate directory we have to create."""
    _make_private_dir(paths.state_dir)
    _make_private_dir(paths.runtime_dir)
    paths.config_dir.mkdir(parents=True, exist_ok=True)  # after: it may be the same directory
    socket_dir = paths.socket.parent
    if socket_dir not in (paths.state_dir, paths.runtime_dir) and not socket_dir.exists():
        _make_private_dir(socket_dir)


def _make_private_dir(directory: Path) -> None:
    """Create `directory` (and parents) and make it 0700 (a group- or world-writable one with a
    warning: files another user left there are refused as they are opened); refuse one that
    another user owns,
    and a symlink in its place that another user made (in /tmp, anyone may plant one to one
    of our own directories, which we would chmod and fill). A symlink made by us or root (as
    systemd makes a DynamicUser's StateDirectory) is followed."""
    directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    link = os.lstat(directory)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (os.geteuid(), ROOT_UID):
        raise UnsafeDirectory(
            directory, f"is a symlink made by uid {link.st_uid}, not by us (uid {os.geteuid()})"
        )
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)  # the directory checked is the one chmodded, whatever moves
        if status.st_uid != os.geteuid():
            raise UnsafeDirectory(
                directory, f"belongs to uid {status.st_uid}, not to us (uid {os.geteuid()})"
            )
        mode = stat.S_IMODE(status.st_mode)
        if mode != PRIVATE_DIR_MODE:
            os.fchmod(fd, PRIVATE_DIR_MODE)
        if mode & SHARED_WRITE_BITS:  # others could have left files there: say so (umask 002)
            was, now = oct(mode), oct(PRIVATE_DIR_MODE)
            log.warning("private_dir_mode_narrowed", path=str(directory), was=was, now=now)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A fresh hidden name beside `path` (`.NAME.<random hex>.tmp`) to make a file under before
    it takes `path`: one rule, so what a crash leaves is known by its name."""
    return path.with_name(f".{path.name}.{secrets.token_hex(TMP_SUFFIX_BYTES)}.tmp")


def write_private_file(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write `data` to `path` atomically with mode 0600 (see `write_file_atomically`)."""
    write_file_atomically(path, data, PRIVATE_FILE_MODE, replace=replace)


def write_file_atomically(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Write `data` to `path` atomically with `mode` (temp file, fsync, rename, fsync dir). The
    temp file is a fresh name created exclusively, so a symlink planted beside `path` is never
    written through.

    With `replace=False` the file is hard-linked into place instead, which raises
    FileExistsError rather than clobbering a file another process created first.
    """
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it further
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make the renames and links just made in `directory` durable."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private_record(path: Path, record: Mapping[str, object], *, replace: bool = True) -> None:
    """Write a JSON object as a private file (see `write_private_file`)."""
    write_private_file(path, (json.dumps(record) + "\n").encode("utf-8"), replace=replace)


def read_private_record(
    path: Path, *, version: int, fields: frozenset[str], max_bytes: int
) -> dict[str, object]:
    """Read a versioned JSON object from a private file, tightening a wider mode to 0600 first.

    Raises OSError when the file cannot be read, and ValueError when it is larger than
    `max_bytes`, not a JSON object, of another `version`, or has other keys than `fields`.
    """
    raw = read_private_bytes(path, max_bytes + 1)
    if len(raw) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    try:
        record = json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    found = record.get("version")
    if type(found) is not int or found != version:
        raise ValueError(f"unsupported version {found!r} (expected {version})")
    if record.keys() != fields:
        raise ValueError(f"expected keys {sorted(fields)}, found {sorted(record)}")
    return record


def read_private_bytes(path: Path, max_bytes: int) -> bytes:
    """At most `max_bytes` of a private file, never through a symlink, its mode tightened to
    0600 first (the file's own, never a link target's)."""
    with os.fdopen(open_private(path, os.O_RDONLY), "rb") as file:
        tighten_mode(file.fileno(), path)
        return file.read(max_bytes)


def tighten_mode(fd: int, path: Path) -> None:
    """Drop any permission beyond 0600 from an open private file, and say so."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & ~PRIVATE_FILE_MODE:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        log.warning("private_file_mode_tightened", path=str(path), was=oct(mode))
