"""`meshactors state get|set|delete|list|watch` against a real daemon process: text and
--json output, and the exit codes of a missing key, a refused one and a network not joined;
`watch` against a stand-in that tells it of a lag."""

from __future__ import annotations

import json
import select
import shlex
import time

import pytest
import trio

from tests.client.fakedaemon import fake_daemon
from tests.support import Home

pytestmark = pytest.mark.e2e

DEADLINE = 30.0  # seconds `state watch` may take to print a change


def test_set_get_list_delete_with_text_and_json(home: Home, me: str) -> None:
    out = home.cli("state", "set", "lan", "settings/theme", '"dark"').stdout
    assert out.startswith("set settings/theme (version ")
    answer = json.loads(home.cli("state", "set", "lan", "size", '{"n": 3}', "--json").stdout)
    assert (answer["key"], answer["value"], answer["by"]) == ("size", {"n": 3}, me)
    assert home.cli("state", "get", "lan", "settings/theme").stdout == '"dark"\n'
    assert home.cli("state", "get", "-n", "lan", "settings/theme").stdout == '"dark"\n'
    assert home.cli("state", "get", "settings/theme").stdout == '"dark"\n'  # the only network
    got = json.loads(home.cli("state", "get", "lan", "size", "--json").stdout)
    assert got["version"] == answer["version"] and not got["deleted"]
    assert home.cli("state", "list", "lan").stdout == 'settings/theme\t"dark"\nsize\t{"n": 3}\n'
    page = json.loads(
        home.cli("state", "list", "lan", "--prefix", "s", "--limit", "1", "--json").stdout
    )
    assert [e["key"] for e in page["entries"]] == ["settings/theme"]
    assert page["next_cursor"] == "settings/theme"
    assert "deleted size" in home.cli("state", "delete", "lan", "size").stdout
    missing = home.cli("state", "get", "lan", "size", "--json", check=False)
    assert missing.returncode == 6
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"
    refused = home.cli("state", "set", "lan", "k" * 300, "1", check=False)
    assert refused.returncode == 2 and "invalid_params" in refused.stderr + refused.stdout


def test_the_next_page_hint_is_a_cursor_the_shell_passes_back_whole(home: Home, me: str) -> None:
    for key in ("a b", "a c"):
        home.cli("state", "set", "lan", key, "1")
    first = home.cli("state", "list", "lan", "--limit", "1")
    assert first.stdout == "a b\t1\n"
    hint = first.stderr.strip().removeprefix("meshactors: more after ")
    assert shlex.split(hint) == ["--cursor", "a b"]
    rest = home.cli("state", "list", "lan", *shlex.split(hint))
    assert rest.stdout == "a c\t1\n"


def test_watch_prints_each_change_as_a_json_line(home: Home, me: str) -> None:
    watch = home.popen("state", "watch", "lan", "--prefix", "w/")
    try:
        deadline = time.monotonic() + DEADLINE
        line = ""
        n = 0
        while not line and time.monotonic() < deadline:  # until the watch has subscribed
            home.cli("state", "set", "lan", "other", str(n))
            home.cli("state", "set", "lan", f"w/{n}", str(n))
            ready, _, _ = select.select([watch.stdout], [], [], 0.5)
            if ready:
                assert watch.stdout is not None
                line = watch.stdout.readline()
            n += 1
        shown = json.loads(line)
        assert shown["key"].startswith("w/") and shown["by"] == me and not shown["deleted"]
        assert set(shown) == {"key", "value", "deleted", "by", "version"}
    finally:
        watch.terminate()
        watch.communicate(timeout=DEADLINE)


def test_watch_of_a_network_not_joined_exits_6_as_list_does(home: Home, me: str) -> None:
    """A typo in the network is refused at once, as by the other state commands, rather
    than waited on for ever."""
    listed = home.cli("state", "list", "nonet", check=False)
    watched = home.cli("state", "watch", "nonet", check=False, timeout=DEADLINE)
    assert watched.returncode == listed.returncode == 6
    assert listed.stderr.startswith("meshactors: state_list failed: no_such_network: ")
    assert watched.stderr == listed.stderr.replace("state_list", "state watch")
    as_json = home.cli("state", "watch", "nonet", "--json", check=False, timeout=DEADLINE)
    assert as_json.returncode == 6
    assert json.loads(as_json.stdout)["error"]["code"] == "no_such_network"


async def test_watch_says_on_stderr_how_many_events_the_daemon_skipped(home: Home) -> None:
    watch = home.popen("state", "watch", "lan", "--prefix", "w/")
    changed = {"kind": "state_changed", "network": "lan", "key": "w/1", "value": 1}
    changed |= {"deleted": False, "by": "me", "version": "1.0"}
    try:
        async with fake_daemon(home.socket) as daemon:
            with trio.fail_after(DEADLINE):
                session = await daemon.next_session()
                await session.wait_op("events_subscribe")
                await session.send({"kind": "lagged", "skipped": 3})
                await session.send(changed)
                assert watch.stdout is not None and watch.stderr is not None
                line = await trio.to_thread.run_sync(watch.stdout.readline)
                assert json.loads(line)["key"] == "w/1"  # printed after the notice
                watch.terminate()
                _, errors = await trio.to_thread.run_sync(watch.communicate)
    finally:
        watch.kill()
        watch.wait()
    assert errors.splitlines() == ["meshactors: missed 3 events (`state list` shows the map now)"]
