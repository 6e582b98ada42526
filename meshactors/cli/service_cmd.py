"""`meshactors daemon install-service|uninstall-service`: write (or remove) systemd units
rendered from the templates in meshactors/units/ (package data) with this installation's
command line."""

from __future__ import annotations

import argparse
import enum
import re
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import attrs

from meshactors.cli.common import EXIT_FAILURE, fail, report
from meshactors.paths import user_config_home, write_file_atomically

UNIT_TEMPLATES = resources.files("meshactors") / "units"  # shipped as package data
COMMAND_PLACEHOLDER = "@MESHACTORS@"  # replaced by the command that runs meshactors
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")  # where administrators' units go
UNIT_FILE_MODE = 0o644  # units are public; systemd reads them as root anyway
SAFE_ARG = re.compile(r"[A-Za-z0-9/._+:,@=-]+")  # an ExecStart word that needs no quoting
HIDDEN_FROM_SYSTEM = ("/home", "/root")  # ProtectHome=yes hides these from system services


class UnitError(Exception):
    """A unit cannot be rendered or written; `code` names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Target(enum.Enum):
    """Which service the units run, and for whom."""

    USER = "user"
    SYSTEM = "system"
    BROKER = "broker"


@attrs.frozen
class Unit:
    """One unit file: the name it is installed as and the template it comes from."""

    name: str
    template: str


UNITS = {
    Target.USER: (
        Unit("meshactors.service", "meshactors.service"),
        Unit("meshactors.socket", "meshactors.socket"),
    ),
    Target.SYSTEM: (
        Unit("meshactors.service", "meshactors-system.service"),
        Unit("meshactors.socket", "meshactors.socket"),
    ),
    Target.BROKER: (Unit("meshactors-broker.service", "meshactors-broker.service"),),
}


def register(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `install-service` and `uninstall-service` to the `daemon` command group."""
    install = actions.add_parser("install-service", help="write systemd units for this install")
    uninstall = actions.add_parser("uninstall-service", help="remove the systemd units")
    for parser in (install, uninstall):
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument("--system", action="store_true", help="system-wide, hardened units")
        scope.add_argument("--broker", action="store_true", help="the broker's system unit")
        parser.add_argument("--unit-dir", type=Path, default=None, help="instead of the default")
    install.add_argument("--dry-run", action="store_true", help="print the units, write nothing")
    install.set_defaults(run=run_install)
    uninstall.set_defaults(run=run_uninstall)


def run_install(args: argparse.Namespace) -> int:
    target = _target(args)
    unit_dir = args.unit_dir or default_unit_dir(target)
    command = service_command()
    try:
        rendered = {unit.name: render_unit(read_template(unit), command) for unit in UNITS[target]}
        if args.dry_run:
            units = {str(unit_dir / name): text for name, text in rendered.items()}
            shown = "\n".join(f"# {path}\n{text}" for path, text in units.items())
            return report(args, units, shown)
        for name, text in rendered.items():
            write_unit(unit_dir / name, text)
    except UnitError as exc:
        fail(f"{exc.code}: {exc}", EXIT_FAILURE, exc.code)
    lines = [f"wrote {unit_dir / name}" for name in rendered]
    warning = None
    hidden = [] if target is Target.USER else hidden_from_system(runs_from())
    if hidden:
        warning = (
            f"{', '.join(map(str, hidden))} {'is' if len(hidden) == 1 else 'are'} under "
            f"{' or '.join(HIDDEN_FROM_SYSTEM)}, which the unit hides (ProtectHome=yes), so the "
            "service cannot start; install meshactors with a Python outside them (e.g. a venv "
            "in /opt made from the system's python3)."
        )
        lines.append(f"warning: {warning}")
    then = _enable_commands(target)
    written = [str(unit_dir / name) for name in rendered]
    text = "\n".join([*lines, "then run:", *(f"  {line}" for line in then)])
    return report(args, {"written": written, "warning": warning, "then": then}, text)


def run_uninstall(args: argparse.Namespace) -> int:
    target = _target(args)
    unit_dir = args.unit_dir or default_unit_dir(target)
    names = [unit.name for unit in UNITS[target]]
    try:
        removed = remove_units(unit_dir, names)
    except OSError as exc:
        fail(f"could not remove units from {unit_dir}: {exc}", EXIT_FAILURE)
    systemctl = _systemctl(target)
    then = [f"{systemctl} stop {' '.join(names)}", f"{systemctl} daemon-reload"] if removed else []
    lines = [f"removed {path}" for path in removed] or [f"no meshactors units in {unit_dir}"]
    if then:
        lines += ["then run:", *(f"  {line}" for line in then)]
    answer = {"removed": [str(path) for path in removed], "then": then}
    return report(args, answer, "\n".join(lines))


def _target(args: argparse.Namespace) -> Target:
    if args.broker:
        return Target.BROKER
    return Target.SYSTEM if args.system else Target.USER


def default_unit_dir(target: Target) -> Path:
    """~/.config/systemd/user for the user's units, /etc/systemd/system otherwise."""
    if target is Target.USER:
        return user_config_home() / "systemd" / "user"
    return SYSTEM_UNIT_DIR


def service_command() -> list[str]:
    """How systemd should start meshactors: this interpreter, not trusting its working dir."""
    return [sys.executable, "-P", "-m", "meshactors"]


def read_template(unit: Unit) -> str:
    """The text of `unit`'s template, from the installed package."""
    path = UNIT_TEMPLATES / unit.template
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UnitError("template_missing", f"cannot read {path}: {exc}") from None


def render_unit(template: str, command: Sequence[str]) -> str:
    """The unit text with the placeholder (if any) replaced by `command`, quoted for ExecStart=."""
    return template.replace(COMMAND_PLACEHOLDER, " ".join(map(exec_word, command)))


def exec_word(word: str) -> str:
    """One ExecStart= word: `%` and `$` escaped (specifiers, variables), quoted when needed."""
    if not word or not word.isprintable():
        raise UnitError("bad_command", f"cannot put {word!r} on an ExecStart= line")
    escaped = word.replace("%", "%%").replace("$", "$$")
    if SAFE_ARG.fullmatch(word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_unit(path: Path, text: str) -> None:
    """Write a unit file atomically (mode 0644), making its directory if needed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, text.encode("utf-8"), UNIT_FILE_MODE)
    except OSError as exc:
        raise UnitError("write_failed", f"cannot write {path}: {exc}") from None


def remove_units(unit_dir: Path, names: Sequence[str]) -> list[Path]:
    """Remove the named units and their enablement links (`*.wants/NAME`); what was removed."""
    found = [unit_dir / name for name in names]
    found += [link for name in names for link in unit_dir.glob(f"*.wants/{name}")]
    removed = [path for path in found if path.is_symlink() or path.exists()]
    for path in removed:
        path.unlink()
    return removed


def runs_from() -> list[Path]:
    """What the service reads to run this installation: the interpreter, the environment's
    prefix (a venv's) and the base Python's it was made from, and this package."""
    package = Path(__file__).resolve().parent.parent
    return [Path(sys.executable), Path(sys.prefix), Path(sys.base_prefix), package]


def hidden_from_system(paths: Sequence[Path]) -> list[Path]:
    """Those of `paths`, as named or as their symlinks resolve (a venv's python links to the
    Python it was made from, say ~/.pyenv), that ProtectHome=yes hides; each once."""
    found: list[Path] = []
    for path in paths:
        for each in (path, path.resolve()):
            if each not in found and any(each.is_relative_to(h) for h in HIDDEN_FROM_SYSTEM):
                found.append(each)
    return found


def _systemctl(target: Target) -> str:
    return "systemctl --user" if target is Target.USER else "systemctl"


def _enable_commands(target: Target) -> list[str]:
    systemctl = _systemctl(target)
    service = UNITS[target][0].name
    lines = [f"{systemctl} daemon-reload", f"{systemctl} enable --now {service}"]
    if target is Target.BROKER:
        return lines
    lines.append(f"# or on the first connection: {systemctl} enable --now meshactors.socket")
    if target is Target.USER:
        lines.append("# keep it running while you are logged out: loginctl enable-linger")
    else:
        lines.append("# clients: meshactors --socket /run/meshactors/daemon.sock …")
    return lines
