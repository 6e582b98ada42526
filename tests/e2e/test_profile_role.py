"""The profile and the role as a user sets them: CLI processes against a detached daemon."""

from __future__ import annotations

import json

import pytest

from tests.support import Home

pytestmark = pytest.mark.e2e


def test_profile_set_keeps_other_fields_and_profile_show_reads_it_back(home: Home) -> None:
    home.cli("daemon", "up", "--detach")
    home.cli("profile", "set", "--display-name", "Ann", "--summary", "on call")
    home.cli("profile", "set", "--status", "dnd")
    shown = json.loads(home.cli("profile", "show", "--json").stdout)
    assert shown["profile"] == {
        "display_name": "Ann",
        "status": "dnd",
        "summary": "on call",
        "visible": True,
    }
    home.cli("profile", "set", "--summary", "", "--invisible")
    lines = home.cli("profile", "show").stdout.splitlines()
    assert "display_name  Ann" in lines
    assert "summary       -" in lines
    assert "visible       no" in lines


def test_a_declared_role_shows_in_status_and_outlives_a_restart(home: Home) -> None:
    home.cli("daemon", "up", "--detach", "--role", "service")
    assert json.loads(home.cli("daemon", "status", "--json").stdout)["role"] == "service"
    home.cli("daemon", "down")
    home.cli("daemon", "up", "--detach")
    assert "role       service" in home.cli("daemon", "status").stdout.splitlines()
    refused = home.cli("daemon", "up", "--role", "boss", check=False)
    assert refused.returncode == 2
    assert "invalid choice" in refused.stderr
