"""Readable output: `inspect` within the terminal's width, shell completion made from the
parser, and `--version`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from meshactors._version import __version__
from meshactors.cli.inspect_tree import render_tree
from tests.support import Home

LONG = {"url": "ws://" + "h" * 300 + "/v1", "counters": {f"c{i}": i for i in range(40)}}
TREE = {
    "name": "daemon",
    "kind": "supervisor",
    "path": "daemon",
    "state": "running",
    "uptime_s": 1.0,
    "restarts": 0,
    "inbox": {"used": 0, "size": 64},
    "figures": {"small": 1},
    "children": [
        {
            "name": f"child {n}",
            "kind": "link",
            "path": f"daemon/child {n}",
            "state": "running",
            "restarts": 0,
            "figures": LONG | {f"f{i}": i for i in range(30)},
            "children": [],
        }
        for n in range(2)
    ],
}


@pytest.mark.parametrize("width", [80, 120])
def test_inspect_fits_the_width_and_hides_long_figures_unless_verbose(width: int) -> None:
    lines, hidden = render_tree(TREE, width=width, verbose=False)
    assert max(map(len, lines)) <= width
    assert hidden == 4 and not any("hhhh" in line for line in lines)
    assert any("f29=29" in line for line in lines)
    everything, none_hidden = render_tree(TREE, width=width, verbose=True)
    assert max(map(len, everything)) <= width and none_hidden == 0
    assert "".join(everything).count("h") >= 600  # the long URLs, wrapped


def test_version_prints_this_version(tmp_path: Path) -> None:
    assert Home(tmp_path).cli("--version").stdout.strip() == f"meshactors {__version__}"


def complete(script: Path, *words: str) -> list[str]:
    """What bash offers after `words` (the last one being typed), with the script sourced."""
    quoted = " ".join(f"'{word}'" for word in words)
    probe = f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _meshactors; "
    probe += 'printf "%s\\n" "${COMPREPLY[@]}"'
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completion_offers_commands_and_options(tmp_path: Path) -> None:
    script = tmp_path / "meshactors.bash"
    script.write_text(Home(tmp_path).cli("completion", "bash").stdout)
    assert complete(script, "meshactors", "ch") == ["channel"]
    assert complete(script, "meshactors", "channel", "") == ["--help", "send", "subscribe", "sub"]
    assert complete(script, "meshactors", "rpc", "call", "--st") == ["--stream"]
    assert "--network" in complete(script, "meshactors", "send", "--")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_is_valid_zsh(tmp_path: Path) -> None:
    script = tmp_path / "_meshactors"
    script.write_text(Home(tmp_path).cli("completion", "zsh").stdout)
    subprocess.run(["zsh", "-n", str(script)], check=True)
