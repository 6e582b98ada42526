"""Where the daemon keeps its files (MESHACTORS_HOME or the XDG directories), and how the private
ones (identity, host record, tokens) are read and written there: owner-only and atomically."""

import json
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

import attrs
import structlog

APP_NAME = "meshactors"  # directory name under each XDG base directory
SOCKET_NAME = "daemon.sock"  # control socket file name inside the runtime dir
FALLBACK_RUNTIME_DIR = "/tmp/meshactors-{uid}"  # runtime dir when XDG_RUNTIME_DIR is unset
PRIVATE_DIR_MODE = 0o700  # state and runtime dirs: the identity and the socket are the owner's
PRIVATE_FILE_MODE = 0o600  # identity, host record, tokens: readable by the owner only
TMP_SUFFIX_BYTES = 8  # random bytes in a temporary file's name, so writers never collide

log = structlog.get_logger(__name__)


class UnsafeDirectory(PermissionError):
    """A private directory already exists but belongs to another user: we refuse to use it."""


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
    def token_file(self) -> Path:
        """The bearer token for the optional loopback TCP listener (private)."""
        return self.state_dir / "http-token"


def resolve_paths(
    env: Mapping[str, str] | None = None, socket_override: str | None = None
) -> Paths:
    """Resolve all paths from `env` (default: os.environ) and the CLI's --socket.

    MESHACTORS_HOME puts everything in one directory; otherwise the XDG base directories apply
    (relative or empty XDG values are ignored, as the XDG spec says). The socket is
    `socket_override`, else MESHACTORS_SOCKET, else daemon.sock in the runtime dir.
    """
    if env is None:
        env = os.environ
    home = _user_path(env.get("MESHACTORS_HOME"))
    if home is not None:
        config_dir = state_dir = runtime_dir = home
    else:
        user_home = _xdg_path(env.get("HOME")) or Path.home()
        config_base = _xdg_path(env.get("XDG_CONFIG_HOME")) or user_home / ".config"
        state_base = _xdg_path(env.get("XDG_STATE_HOME")) or user_home / ".local" / "state"
        runtime_base = _xdg_path(env.get("XDG_RUNTIME_DIR"))
        config_dir = config_base / APP_NAME
        state_dir = state_base / APP_NAME
        if runtime_base is None:
            runtime_dir = Path(FALLBACK_RUNTIME_DIR.format(uid=os.getuid()))
        else:
            runtime_dir = runtime_base / APP_NAME
    socket = (
        _user_path(socket_override)
        or _user_path(env.get("MESHACTORS_SOCKET"))
        or runtime_dir / SOCKET_NAME
    )
    return Paths(config_dir=config_dir, state_dir=state_dir, runtime_dir=runtime_dir, socket=socket)


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
    """Create `directory` (and parents) and make it 0700; refuse one that another user owns."""
    directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    status = directory.stat()
    if status.st_uid != os.geteuid():
        raise UnsafeDirectory(
            f"{directory} belongs to uid {status.st_uid}, not to us (uid {os.geteuid()}); "
            "refusing to keep private files there"
        )
    if stat.S_IMODE(status.st_mode) != PRIVATE_DIR_MODE:
        directory.chmod(PRIVATE_DIR_MODE)


def write_private_file(path: Path, data: bytes, *, replace: bool = True) -> None:
    """Write `data` to `path` atomically with mode 0600 (temp file, fsync, rename, fsync dir).

    With `replace=False` the file is hard-linked into place instead, which raises
    FileExistsError rather than clobbering a file another process created first.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(TMP_SUFFIX_BYTES)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)  # the umask may have narrowed it further
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
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
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
    with path.open("rb") as file:
        tighten_mode(file.fileno(), path)
        raw = file.read(max_bytes + 1)
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


def tighten_mode(fd: int, path: Path) -> None:
    """Drop any permission beyond 0600 from an open private file, and say so."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & ~PRIVATE_FILE_MODE:
        os.fchmod(fd, PRIVATE_FILE_MODE)
        log.warning("private_file_mode_tightened", path=str(path), was=oct(mode))
