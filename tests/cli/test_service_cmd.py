"""`daemon install-service|uninstall-service`: units rendered from meshactors/units/, written
into a unit directory, checked by `systemd-analyze verify` when it is installed, and removed
again."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from meshactors.cli import main
from meshactors.cli.service_cmd import (
    UNIT_FILE_MODE,
    UNIT_TEMPLATES,
    UnitError,
    exec_word,
    hidden_from_system,
    write_unit,
)

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
VERIFY_TIMEOUT = 60  # seconds systemd-analyze may take
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt-get install systemd)"
)


def cli(*args: str) -> int:
    """Run `meshactors ARGS…` in this process; its exit status."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    code = exited.value.code
    assert isinstance(code, int)
    return code


def install(unit_dir: Path, *flags: str) -> None:
    assert cli("daemon", "install-service", "--unit-dir", str(unit_dir), *flags) == 0


def verify(unit_dir: Path, *, user: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze [--user] verify` on every unit in `unit_dir` (no running systemd needed)."""
    assert SYSTEMD_ANALYZE is not None
    runtime = tmp_path / "xdg-runtime"  # the user manager wants a runtime directory
    runtime.mkdir(mode=0o700, exist_ok=True)
    command = [SYSTEMD_ANALYZE, *(["--user"] if user else []), "verify"]
    return subprocess.run(
        [*command, *map(str, sorted(unit_dir.glob("*.s*")))],
        env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT,
        check=False,
    )


def test_user_install_writes_service_and_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit_dir = tmp_path / "units"
    install(unit_dir)

    assert sorted(p.name for p in unit_dir.iterdir()) == ["meshactors.service", "meshactors.socket"]
    service = (unit_dir / "meshactors.service").read_text()
    assert f"ExecStart={sys.executable} -P -m meshactors daemon up\n" in service
    assert "Type=notify\n" in service and "WatchdogSec=" in service
    assert "Restart=on-failure\n" in service
    assert "\nLimitNOFILE=65536\n" in service  # as the system unit: a client is an open file
    assert "@MESHACTORS@" not in service
    assert service.count(sys.executable) == 1  # only ExecStart= names it, no comment
    socket_unit = (unit_dir / "meshactors.socket").read_text()
    assert socket_unit == (UNIT_TEMPLATES / "meshactors.socket").read_text()
    assert (unit_dir / "meshactors.service").stat().st_mode & 0o777 == 0o644
    out = capsys.readouterr().out
    assert "systemctl --user daemon-reload" in out
    assert "systemctl --user enable --now meshactors.service" in out


def test_system_install_is_the_hardened_unit(tmp_path: Path) -> None:
    install(tmp_path, "--system")

    service = (tmp_path / "meshactors.service").read_text()
    for setting in (
        "DynamicUser=yes",
        "StateDirectory=meshactors",
        "RuntimeDirectory=meshactors",
        "ConfigurationDirectory=meshactors",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ):
        assert f"\n{setting}\n" in service


def test_an_interpreter_that_resolves_into_a_hidden_home_is_named(tmp_path: Path) -> None:
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    pyenv_python = Path("/root/.pyenv/versions/3.11.7/bin/python3.11")
    venv_python.symlink_to(pyenv_python)  # as `python -m venv` made from a pyenv Python
    home_prefix = Path("/home/someone/.local/python")
    assert hidden_from_system([venv_python, tmp_path / "venv"]) == [pyenv_python]
    assert hidden_from_system([Path("/opt/venv"), home_prefix, home_prefix]) == [home_prefix]
    assert hidden_from_system([Path("/opt/venv/bin/python"), Path("/usr")]) == []


def test_system_install_warns_when_the_interpreter_resolves_into_a_hidden_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    venv_python = tmp_path / "python"
    venv_python.symlink_to("/root/.pyenv/versions/3.11.7/bin/python3.11")
    monkeypatch.setattr(sys, "executable", str(venv_python))
    monkeypatch.setattr(sys, "prefix", "/opt/venv")
    monkeypatch.setattr(sys, "base_prefix", "/opt/python")
    assert cli("daemon", "install-service", "--system", "--unit-dir", str(tmp_path), "--json") == 0
    warning = json.loads(capsys.readouterr().out)["warning"]
    assert warning.startswith("/root/.pyenv/versions/3.11.7/bin/python3.11")
    assert "ProtectHome=yes" in warning


def test_broker_install_writes_only_the_broker_unit(tmp_path: Path) -> None:
    install(tmp_path, "--broker")

    assert [p.name for p in tmp_path.iterdir()] == ["meshactors-broker.service"]
    assert " broker --listen " in (tmp_path / "meshactors-broker.service").read_text()


def test_dry_run_prints_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(tmp_path / "units", "--dry-run")

    assert not (tmp_path / "units").exists()
    out = capsys.readouterr().out
    assert f"# {tmp_path / 'units' / 'meshactors.service'}" in out
    assert "ExecStart=" in out


def test_uninstall_removes_units_and_enablement_links(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(tmp_path)
    wants = tmp_path / "default.target.wants"
    wants.mkdir()
    (wants / "meshactors.service").symlink_to(tmp_path / "meshactors.service")
    (tmp_path / "unrelated.service").write_text("[Service]\nExecStart=/bin/true\n")
    capsys.readouterr()

    assert cli("daemon", "uninstall-service", "--unit-dir", str(tmp_path)) == 0

    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["default.target.wants", "unrelated.service"]
    assert list(wants.iterdir()) == []
    out = capsys.readouterr().out
    assert "systemctl --user stop meshactors.service meshactors.socket" in out
    assert cli("daemon", "uninstall-service", "--unit-dir", str(tmp_path)) == 0
    assert "no meshactors units" in capsys.readouterr().out


def test_unwritable_unit_dir_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    assert cli("daemon", "install-service", "--unit-dir", str(blocker)) == 1
    assert "write_failed" in capsys.readouterr().err


def test_a_unit_is_never_written_through_a_symlink_planted_beside_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    victim.chmod(0o600)
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    (unit_dir / ".meshactors.service.tmp").symlink_to(victim)  # where the temp file once was
    unit = unit_dir / "meshactors.service"

    write_unit(unit, "[Unit]\n")

    assert (victim.read_text(), stat.S_IMODE(victim.stat().st_mode)) == ("untouched\n", 0o600)
    assert not unit.is_symlink() and unit.read_text() == "[Unit]\n"
    assert stat.S_IMODE(unit.stat().st_mode) == UNIT_FILE_MODE


def test_exec_words_are_escaped_for_systemd() -> None:
    assert exec_word("/opt/venv/bin/python") == "/opt/venv/bin/python"
    assert exec_word("/opt/my venv/python") == '"/opt/my venv/python"'
    assert exec_word("/opt/100%/$HOME") == '"/opt/100%%/$$HOME"'
    assert exec_word('/a"b\\c') == '"/a\\"b\\\\c"'
    with pytest.raises(UnitError):
        exec_word("/bin/evil\nExecStartPre=/bin/rm")


@needs_systemd_analyze
def test_rendered_user_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    install(tmp_path / "units")

    result = verify(tmp_path / "units", user=True, tmp_path=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not even a warning (unknown keys are only warnings)


@needs_systemd_analyze
@pytest.mark.parametrize("flag", ["--system", "--broker"])
def test_rendered_system_units_pass_systemd_analyze_verify(tmp_path: Path, flag: str) -> None:
    install(tmp_path / "units", flag)

    result = verify(tmp_path / "units", user=False, tmp_path=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@needs_systemd_analyze
def test_verify_would_notice_a_broken_unit(tmp_path: Path) -> None:
    install(tmp_path / "units")
    service = tmp_path / "units" / "meshactors.service"
    service.write_text(service.read_text().replace("Type=notify", "Type=notifyy"))

    result = verify(tmp_path / "units", user=True, tmp_path=tmp_path)

    assert "notifyy" in result.stderr


def test_install_and_uninstall_answer_json_under_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("daemon", "install-service", "--unit-dir", str(tmp_path), "--json") == 0
    installed = json.loads(capsys.readouterr().out)
    units = [str(tmp_path / "meshactors.service"), str(tmp_path / "meshactors.socket")]
    assert installed["written"] == units
    assert "systemctl --user daemon-reload" in installed["then"]
    assert cli("daemon", "uninstall-service", "--unit-dir", str(tmp_path), "--json") == 0
    assert json.loads(capsys.readouterr().out)["removed"] == installed["written"]
