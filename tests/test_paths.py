"""Path resolution (MESHACTORS_HOME, XDG, socket precedence), private dirs and private files."""

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from meshactors.paths import (
    ForeignFile,
    Paths,
    SymlinkRefused,
    UnsafeDirectory,
    open_private,
    prepare_dirs,
    read_private_record,
    refuse_unsafe,
    resolve_paths,
    write_private_file,
    write_private_record,
)

FIELDS = frozenset({"version", "value"})
PLANTER_UID = 1000  # another user who could write to a home that was group- or world-writable


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_puts_everything_in_one_directory(tmp_path: Path) -> None:
    paths = resolve_paths({"MESHACTORS_HOME": str(tmp_path), "XDG_STATE_HOME": "/elsewhere"})

    assert paths == Paths(tmp_path, tmp_path, tmp_path, tmp_path / "daemon.sock")
    assert paths.state_db == tmp_path / "state.db"
    assert paths.identity_file == tmp_path / "identity.json"
    assert paths.host_file == tmp_path / "host.json"
    assert paths.config_file == tmp_path / "daemon.toml"
    assert paths.pid_file == tmp_path / "daemon.pid"
    assert paths.token_file == tmp_path / "http-token"


def test_relative_home_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    paths = resolve_paths({"MESHACTORS_HOME": "here"})

    assert paths.state_dir == tmp_path / "here"


def test_xdg_directories() -> None:
    env = {
        "HOME": "/home/ada",
        "XDG_CONFIG_HOME": "/cfg",
        "XDG_STATE_HOME": "/state",
        "XDG_RUNTIME_DIR": "/run/user/1000",
    }

    paths = resolve_paths(env)

    assert paths.config_dir == Path("/cfg/meshactors")
    assert paths.state_dir == Path("/state/meshactors")
    assert paths.runtime_dir == Path("/run/user/1000/meshactors")
    assert paths.socket == Path("/run/user/1000/meshactors/daemon.sock")
    assert paths.identity_file == Path("/state/meshactors/identity.json")
    assert paths.config_file == Path("/cfg/meshactors/daemon.toml")


def test_xdg_defaults_when_unset_empty_or_relative() -> None:
    env = {"HOME": "/home/ada", "XDG_CONFIG_HOME": "", "XDG_STATE_HOME": "relative/state"}

    paths = resolve_paths(env)

    assert paths.config_dir == Path("/home/ada/.config/meshactors")
    assert paths.state_dir == Path("/home/ada/.local/state/meshactors")
    assert paths.runtime_dir == Path(f"/tmp/meshactors-{os.getuid()}")
    assert paths.socket == Path(f"/tmp/meshactors-{os.getuid()}/daemon.sock")


def test_socket_precedence_override_then_env_then_default(tmp_path: Path) -> None:
    env = {"MESHACTORS_HOME": str(tmp_path)}
    with_env = {**env, "MESHACTORS_SOCKET": "/env/s.sock"}

    assert resolve_paths(env).socket == tmp_path / "daemon.sock"
    assert resolve_paths(with_env).socket == Path("/env/s.sock")
    assert resolve_paths(with_env, socket_override="/cli/s.sock").socket == Path("/cli/s.sock")
    assert resolve_paths(with_env).state_dir == tmp_path  # the socket moves, nothing else


def test_socket_override_expands_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ada")

    assert resolve_paths({}, socket_override="~/s.sock").socket == Path("/home/ada/s.sock")


def test_defaults_read_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHACTORS_HOME", str(tmp_path))
    monkeypatch.delenv("MESHACTORS_SOCKET", raising=False)

    assert resolve_paths().socket == tmp_path / "daemon.sock"


def test_prepare_dirs_creates_private_dirs(tmp_path: Path) -> None:
    paths = Paths(
        config_dir=tmp_path / "cfg" / "m",
        state_dir=tmp_path / "state" / "m",
        runtime_dir=tmp_path / "run" / "m",
        socket=tmp_path / "sockets" / "deep" / "d.sock",
    )

    prepare_dirs(paths)

    assert paths.config_dir.is_dir()
    assert mode_of(paths.state_dir) == 0o700
    assert mode_of(paths.runtime_dir) == 0o700
    assert mode_of(paths.socket.parent) == 0o700


def test_prepare_dirs_tightens_existing_dirs_but_not_a_shared_socket_dir(tmp_path: Path) -> None:
    state, runtime, shared = tmp_path / "state", tmp_path / "run", tmp_path / "shared"
    for directory in (state, runtime, shared):
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)

    prepare_dirs(Paths(tmp_path / "cfg", state, runtime, shared / "d.sock"))

    assert mode_of(state) == 0o700
    assert mode_of(runtime) == 0o700
    assert mode_of(shared) == 0o755


def test_narrowing_a_group_writable_home_is_logged_with_both_modes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o775)  # as umask 002 makes it

    with structlog.testing.capture_logs() as logs:
        prepare_dirs(resolve_paths({"MESHACTORS_HOME": str(home)}))

    assert mode_of(home) == 0o700
    assert [(e["event"], e["path"], e["was"], e["now"]) for e in logs] == [
        ("private_dir_mode_narrowed", str(home), "0o775", "0o700")
    ]


def test_prepare_dirs_with_home(tmp_path: Path) -> None:
    home = tmp_path / "home"

    prepare_dirs(resolve_paths({"MESHACTORS_HOME": str(home)}))

    assert mode_of(home) == 0o700


@pytest.fixture
def foreign_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory owned by another user: made with chown as root, else the root-owned `/`."""
    if os.geteuid() != 0:
        yield Path("/")
        return
    directory = tmp_path / "foreign"
    directory.mkdir(mode=0o755)
    os.chown(directory, 65534, 65534)
    yield directory


def test_prepare_dirs_refuses_another_users_directory(tmp_path: Path, foreign_dir: Path) -> None:
    mode_before = mode_of(foreign_dir)

    with pytest.raises(UnsafeDirectory, match="belongs to uid"):
        prepare_dirs(Paths(tmp_path / "cfg", tmp_path / "state", foreign_dir, tmp_path / "d.sock"))

    assert mode_of(foreign_dir) == mode_before


def test_prepare_dirs_refuses_a_symlink_another_user_planted(tmp_path: Path) -> None:
    """Another user's link at the /tmp fallback must not choose where our socket goes."""
    if os.geteuid() != 0:
        pytest.skip("making a symlink owned by another user needs root")
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o755)
    ours.chmod(0o755)
    fallback = tmp_path / f"meshactors-{os.getuid()}"  # stands for /tmp/meshactors-UID
    fallback.symlink_to(ours)
    os.lchown(fallback, 65534, 65534)

    with pytest.raises(UnsafeDirectory) as caught:
        prepare_dirs(Paths(tmp_path / "cfg", tmp_path / "state", fallback, fallback / "d.sock"))

    assert str(caught.value) == (
        f"{fallback}: is a symlink made by uid 65534, not by us (uid 0); "
        "refusing to keep private files there"
    )
    assert mode_of(ours) == 0o755
    assert list(ours.iterdir()) == []


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A file in the home that another user made (chown needs root: skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("making a file owned by another user needs root")
    path = tmp_path / "identity.json"
    path.write_text("{}")
    os.chown(path, PLANTER_UID, PLANTER_UID)
    return path


def test_a_home_file_another_user_owns_is_refused(planted: Path) -> None:
    with pytest.raises(ForeignFile) as caught:
        os.close(open_private(planted, os.O_RDONLY))
    with pytest.raises(ForeignFile):
        refuse_unsafe(planted)  # SQLite's own files, checked before SQLite opens them

    assert str(caught.value) == (
        f"{planted}: belongs to uid {PLANTER_UID}, not to us (uid 0); refusing to use a file "
        "another user made: remove it, or chown it to uid 0 if you trust it"
    )


def test_refuse_unsafe_passes_our_file_and_refuses_a_symlink(tmp_path: Path) -> None:
    ours = tmp_path / "state.db-wal"
    ours.write_bytes(b"")
    link = tmp_path / "state.db-shm"
    link.symlink_to(ours)

    refuse_unsafe(ours)
    refuse_unsafe(tmp_path / "absent")
    with pytest.raises(SymlinkRefused):
        refuse_unsafe(link)


def test_prepare_dirs_follows_our_own_symlink(tmp_path: Path) -> None:
    """A home the user (or root, for systemd's DynamicUser) linked elsewhere is still used."""
    target = tmp_path / "data"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    home = tmp_path / "home"
    home.symlink_to(target)

    prepare_dirs(resolve_paths({"MESHACTORS_HOME": str(home)}))

    assert mode_of(target) == 0o700


def test_write_private_file_is_0600_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    old_umask = os.umask(0o277)  # would make a plain write 0400
    try:
        write_private_file(target, b"one")
        write_private_file(target, b"two")
    finally:
        os.umask(old_umask)

    assert target.read_bytes() == b"two"
    assert mode_of(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_write_private_file_without_replace_keeps_the_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    write_private_file(target, b"first", replace=False)

    with pytest.raises(FileExistsError):
        write_private_file(target, b"second", replace=False)

    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_record_round_trip_and_mode_tightening(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    write_private_record(target, {"version": 3, "value": None})
    target.chmod(0o644)

    record = read_private_record(target, version=3, fields=FIELDS, max_bytes=100)

    assert record == {"version": 3, "value": None}
    assert mode_of(target) == 0o600


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not json", "Expecting value"),
        (b"\xff\xfe\x00", "decode"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"version": 2, "value": 1}', "unsupported version 2"),
        (b'{"version": true, "value": 1}', "unsupported version True"),
        (b'{"version": 3}', "expected keys"),
        (b'{"version": 3, "value": 1, "extra": 2}', "expected keys"),
        (b"[" * 3000, "nested too deeply"),
        (b" " * 5000, "larger than 4096 bytes"),
    ],
)
def test_bad_records_raise_value_error(tmp_path: Path, content: bytes, reason: str) -> None:
    target = tmp_path / "record.json"
    target.write_bytes(content)

    with pytest.raises(ValueError, match=reason):
        read_private_record(target, version=3, fields=FIELDS, max_bytes=4096)

    assert target.read_bytes() == content


def test_missing_record_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_private_record(tmp_path / "nope", version=1, fields=FIELDS, max_bytes=10)


def test_written_record_is_one_json_line(tmp_path: Path) -> None:
    target = tmp_path / "record.json"

    write_private_record(target, {"version": 1, "value": "x"})

    assert json.loads(target.read_text()) == {"version": 1, "value": "x"}
    assert target.read_text().endswith("}\n")
