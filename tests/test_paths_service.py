"""Directories systemd makes for the service ($STATE_DIRECTORY etc.) and their precedence."""

from __future__ import annotations

from pathlib import Path

from meshactors.paths import resolve_paths, user_config_home

SERVICE_ENV = {
    "STATE_DIRECTORY": "/var/lib/meshactors",
    "RUNTIME_DIRECTORY": "/run/meshactors",
    "CONFIGURATION_DIRECTORY": "/etc/meshactors",
    "XDG_STATE_HOME": "/home/u/.local/state",
    "XDG_RUNTIME_DIR": "/run/user/1000",
    "XDG_CONFIG_HOME": "/home/u/.config",
}


def test_service_directories_beat_xdg() -> None:
    paths = resolve_paths(SERVICE_ENV)

    assert paths.state_dir == Path("/var/lib/meshactors")
    assert paths.runtime_dir == Path("/run/meshactors")
    assert paths.config_dir == Path("/etc/meshactors")
    assert paths.socket == Path("/run/meshactors/daemon.sock")
    assert paths.config_file == Path("/etc/meshactors/daemon.toml")


def test_meshactors_home_beats_service_directories(tmp_path: Path) -> None:
    paths = resolve_paths(SERVICE_ENV | {"MESHACTORS_HOME": str(tmp_path)})

    assert paths.state_dir == paths.runtime_dir == paths.config_dir == tmp_path


def test_each_directory_falls_back_on_its_own() -> None:
    env = {"STATE_DIRECTORY": "/var/lib/meshactors"} | {
        k: v for k, v in SERVICE_ENV.items() if k.startswith("XDG_")
    }

    paths = resolve_paths(env)

    assert paths.state_dir == Path("/var/lib/meshactors")
    assert paths.runtime_dir == Path("/run/user/1000/meshactors")
    assert paths.config_dir == Path("/home/u/.config/meshactors")


def test_several_directories_use_the_first_and_relative_ones_are_ignored() -> None:
    env = {
        "STATE_DIRECTORY": "/var/lib/meshactors:/var/lib/other",
        "RUNTIME_DIRECTORY": "run/meshactors",
        "XDG_RUNTIME_DIR": "/run/user/1000",
        "HOME": "/home/u",
    }

    paths = resolve_paths(env)

    assert paths.state_dir == Path("/var/lib/meshactors")
    assert paths.runtime_dir == Path("/run/user/1000/meshactors")


def test_user_config_home_is_xdg_or_dot_config() -> None:
    assert user_config_home({"XDG_CONFIG_HOME": "/cfg", "HOME": "/h"}) == Path("/cfg")
    assert user_config_home({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == Path("/h/.config")
