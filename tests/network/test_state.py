"""The replicated state map with real daemons and a broker: writes reach active peers, a
partition heals into one state on every daemon, a late joiner catches up on 1,000 keys, a
restart keeps the map, the limits are refused with their codes, a write the disk refuses
does not happen, and one cut off by a crash of core is answered at once."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.netstate import statemap
from meshactors.wire.ipc import MAX_PAGE, MAX_PAGE_DATA_BYTES
from tests.network.conftest import NET, UNREACHABLE, WAIT, Daemon, Mesh, OpFailed, approve_both
from tests.network.test_restarts import crash_path
from tests.support import LineClient

PIPELINE = 100  # writes one test client keeps in flight (a connection takes 128)
LARGE_STATE_CHARS = 16_000  # a value near MAX_VALUE_BYTES
LARGE_STATE_KEYS = 150  # of them: some 2.4 MB, a single page before pages were cut by bytes


async def state_of(daemon: Daemon) -> dict[str, Any]:
    """Every live key and value of NET's map on `daemon`, page by page."""
    found: dict[str, Any] = {}
    cursor: dict[str, str] = {}
    while True:
        page = await daemon.call("state_list", network=NET, limit=500, **cursor)
        found |= {entry["key"]: entry["value"] for entry in page["entries"]}
        if page["next_cursor"] is None:
            return found
        cursor = {"cursor": page["next_cursor"]}


async def wait_state(daemon: Daemon, expected: dict[str, Any]) -> None:
    """Return once `daemon`'s map is `expected`, checking after each `state_changed`."""
    with trio.fail_after(WAIT):
        while True:
            after = daemon.last_event_id
            if await state_of(daemon) == expected:
                return
            await daemon.wait_event("state_changed", after=after)


async def set_many(daemon: Daemon, values: dict[str, Any]) -> None:
    """state_set every key, PIPELINE requests at a time on the daemon's connection."""
    items = list(values.items())
    for start in range(0, len(items), PIPELINE):
        sent = {
            await daemon.client.send("state_set", network=NET, key=key, value=value)
            for key, value in items[start : start + PIPELINE]
        }
        while sent:
            frame = await daemon.client.frame()
            if frame.get("id") in sent:
                assert frame["ok"], frame
                sent.discard(frame["id"])


def state_figures(node: dict[str, Any]) -> dict[str, Any]:
    """The `state` figures of NET's core in an `inspect` tree."""
    if node["kind"] == "core":
        figures: dict[str, Any] = node["figures"]["state"]
        return figures
    for child in node["children"]:
        try:
            return state_figures(child)
        except LookupError:
            continue
    raise LookupError("no core")


async def trio_of(mesh: Mesh) -> tuple[Daemon, Daemon, Daemon]:
    """Daemons a, b and c in NET, each approving every other (auto_approve)."""
    daemons = [await mesh.daemon(name) for name in "abc"]
    for daemon in daemons:
        await daemon.join(mesh.url, auto_approve=True)
    for daemon in daemons:
        for other in daemons:
            if other is not daemon and (await daemon.peer(other) or {}).get("status") != "active":
                await daemon.wait_status(other, "active")
    a, b, c = daemons
    return a, b, c


async def test_a_write_reaches_the_active_peer_and_a_delete_follows(mesh: Mesh) -> None:
    a, b = await mesh.daemon("a"), await mesh.daemon("b")
    await a.join(mesh.url)
    await b.join(mesh.url)
    await approve_both(a, b)
    written = await a.call("state_set", network=NET, key="settings/theme", value="dark")
    assert written["by"] == a.device_id and not written["deleted"]
    event = await b.wait_event("state_changed", key="settings/theme")
    assert (event["value"], event["by"], event["version"]) == (
        "dark",
        a.device_id,
        written["version"],
    )
    got = await b.call("state_get", network=NET, key="settings/theme")
    assert got["value"] == "dark"
    gone = await b.call("state_delete", network=NET, key="settings/theme")
    await a.wait_event("state_changed", key="settings/theme", deleted=True)
    assert gone["version"] > written["version"]
    with pytest.raises(OpFailed) as missing:
        await a.call("state_get", network=NET, key="settings/theme")
    assert missing.value.code == "not_found"


async def test_writes_on_three_daemons_during_a_partition_converge(mesh: Mesh) -> None:
    a, b, c = await trio_of(mesh)
    await a.call("state_set", network=NET, key="old", value="from a")
    await wait_state(c, {"old": "from a"})
    config = {"id": NET, "auto_approve": True}
    await c.call("network_update", config=config | {"brokers": [UNREACHABLE]})  # c is cut off
    await a.wait_status(c, "offline")
    await b.wait_status(c, "offline")
    versions = {}
    for daemon in (a, b, c):
        await daemon.call("state_set", network=NET, key=f"own/{daemon.name}", value=daemon.name)
        shared = await daemon.call("state_set", network=NET, key="shared", value=daemon.name)
        versions[daemon.name] = (shared["version"], shared["by"])
    await c.call("state_delete", network=NET, key="old")
    await b.call("state_set", network=NET, key="b-only", value=[1, {"x": None}])
    winner = max(versions, key=lambda name: versions[name])
    expected = {
        "own/a": "a",
        "own/b": "b",
        "own/c": "c",
        "shared": winner,
        "b-only": [1, {"x": None}],
    }
    after = c.last_event_id
    await c.call("network_update", config=config | {"brokers": [mesh.url]})  # c returns
    await c.wait_event("peer_active", after=after)
    for daemon in (a, b, c):
        await wait_state(daemon, expected)


async def test_a_late_joiner_receives_a_thousand_keys(mesh: Mesh) -> None:
    a, c = await mesh.daemon("a"), await mesh.daemon("c")
    await a.join(mesh.url)
    keys = {f"k/{n:04d}": {"n": n, "text": "x" * 40} for n in range(1000)}
    await set_many(a, keys)
    await c.join(mesh.url)
    await approve_both(a, c)
    await wait_state(c, keys)
    counters = state_figures(await c.call("inspect"))["counters"]
    assert counters["pages_pulled"] >= len(keys) // 256  # in bounded pages, by catch-up


async def test_a_late_joiner_receives_keys_that_grow_when_escaped(mesh: Mesh) -> None:
    """Pages are cut by their size in a frame, where `é` takes 6 bytes: 256 of these entries
    would be past the frame limit, and a page that big would be refused, at every catch-up."""
    a, c = await mesh.daemon("a"), await mesh.daemon("c")
    await a.join(mesh.url)
    keys = {"é" * 120 + str(n): "v" * 198 for n in range(300)}  # 200 bytes each as JSON
    await set_many(a, keys)
    await c.join(mesh.url)
    await approve_both(a, c)
    await wait_state(c, keys)


async def test_the_map_survives_a_restart_and_later_writes_sort_after_it(mesh: Mesh) -> None:
    a = await mesh.daemon("a")
    await a.join(UNREACHABLE)
    await set_many(a, {"one": 1, "two": {"deep": [2]}, "three": 3})
    last = await a.call("state_delete", network=NET, key="three")
    await a.stop()
    a = await mesh.daemon("a")
    assert await state_of(a) == {"one": 1, "two": {"deep": [2]}}
    with pytest.raises(OpFailed):
        await a.call("state_get", network=NET, key="three")
    again = await a.call("state_set", network=NET, key="three", value=33)
    assert again["version"] > last["version"]


async def test_limits_are_refused_with_their_codes(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await mesh.daemon("a")
    await a.join(UNREACHABLE)
    refused = {
        "invalid_params": [
            ("state_set", {"key": "k" * 257, "value": 1}),
            ("state_set", {"key": "", "value": 1}),
            ("state_set", {"key": "a\nb", "value": 1}),
            ("state_list", {"limit": 501}),
            ("state_list", {"limit": 0}),
        ],
        "payload_too_large": [("state_set", {"key": "big", "value": "x" * 16 * 1024})],
        "no_such_network": [("state_get", {"key": "k", "network": "nope"})],
    }
    for code, calls in refused.items():
        for op, params in calls:
            with pytest.raises(OpFailed) as failed:
                await a.call(op, **({"network": NET} | params))
            assert failed.value.code == code, (op, params)
    monkeypatch.setattr(statemap, "MAX_KEYS", 3)
    await set_many(a, {"k1": 1, "k2": 2, "k3": 3})
    with pytest.raises(OpFailed) as full:
        await a.call("state_set", network=NET, key="k4", value=4)
    assert full.value.code == "state_full"
    await a.call("state_set", network=NET, key="k1", value="rewritten")  # an existing key
    await a.call("state_delete", network=NET, key="k2")  # its tombstone keeps the place
    with pytest.raises(OpFailed):
        await a.call("state_set", network=NET, key="k4", value=4)
    await a.call("state_set", network=NET, key="k2", value="back")


async def test_a_daemon_that_was_down_catches_up_on_return(mesh: Mesh) -> None:
    a, b, c = await trio_of(mesh)
    await c.call("state_set", network=NET, key="before", value="c")
    await wait_state(a, {"before": "c"})
    await c.stop()
    await a.call("state_set", network=NET, key="while_down", value="a")
    await b.call("state_delete", network=NET, key="before")
    c = await mesh.daemon("c")  # the same home: its map as saved, then the catch-up
    await wait_state(c, {"while_down": "a"})


def refuse_state_saves(daemon: Daemon, refuse: bool) -> None:
    """Have `daemon`'s database refuse (or take again) every save of the state map: a real
    SQLite error in the daemon's own store call, as a full or failing disk gives."""
    with contextlib.closing(sqlite3.connect(daemon.home / "state.db", timeout=WAIT)) as conn:
        if refuse:
            conn.execute(
                "CREATE TRIGGER refuse_saves BEFORE INSERT ON netstate"
                " BEGIN SELECT RAISE(ABORT, 'the disk refuses'); END"
            )
        else:
            conn.execute("DROP TRIGGER refuse_saves")
        conn.commit()


async def test_a_write_that_could_not_be_saved_does_not_happen(mesh: Mesh) -> None:
    a, b = await mesh.daemon("a"), await mesh.daemon("b")
    await a.join(mesh.url)
    await b.join(mesh.url)
    await approve_both(a, b)
    await a.call("state_set", network=NET, key="k", value=1)
    await b.wait_event("state_changed", key="k", value=1)

    refuse_state_saves(a, True)
    for key, value in (("k", 2), ("fresh", 1)):
        with pytest.raises(OpFailed) as refused:
            await a.call("state_set", network=NET, key=key, value=value)
        assert refused.value.code == "storage"
    # Many at once, so they queue behind each other and fail in several batches: none of them
    # may bring back another that failed before it.
    sent = {
        await a.client.send("state_set", network=NET, key="k", value=value)
        for value in range(10, 10 + PIPELINE)
    }
    while sent:
        frame = await a.client.frame()
        if frame.get("id") in sent:
            assert frame["error"]["code"] == "storage", frame
            sent.discard(frame["id"])
    assert (await a.call("state_get", network=NET, key="k"))["value"] == 1
    with pytest.raises(OpFailed) as missing:
        await a.call("state_get", network=NET, key="fresh")
    assert missing.value.code == "not_found"

    refuse_state_saves(a, False)
    await a.call("state_set", network=NET, key="k", value=3)
    await b.wait_event("state_changed", key="k", value=3)  # sent after any refused write
    for daemon in (a, b):
        changes = [(e["key"], e["value"]) for e in daemon.events if e["kind"] == "state_changed"]
        assert changes == [("k", 1), ("k", 3)]
    assert await state_of(b) == await state_of(a) == {"k": 3}


async def test_a_write_taken_when_core_crashes_is_answered_unavailable_at_once(
    mesh: Mesh,
) -> None:
    """A write the state task had taken and not settled (its save waits on a stalled disk)
    when core crashes is answered `unavailable` at once, not `timeout` after 30 s."""
    a = await mesh.daemon("a", debug_ops=True)
    await a.join(UNREACHABLE)
    await a.call("state_set", network=NET, key="k", value=1)
    writer = LineClient(await trio.open_unix_socket(str(a.services.paths.socket)))
    stall = sqlite3.connect(a.services.paths.state_db, isolation_level=None)
    with contextlib.closing(stall):
        stall.execute("BEGIN IMMEDIATE")  # the disk stalls: the write's save waits on it
        await writer.send("state_set", network=NET, key="k", value=2)
        await trio.testing.wait_all_tasks_blocked()  # the state task took it, saving
        await a.call("debug_crash", path=crash_path("core"))
        with trio.fail_after(WAIT):  # well before the write's deadline
            answer = await writer.frame()
        stall.execute("COMMIT")
    assert answer["error"]["code"] == "unavailable"
    await writer.aclose()


async def test_a_state_list_page_of_large_values_is_cut_by_bytes_and_its_cursor_goes_on(
    mesh: Mesh,
) -> None:
    a = await mesh.daemon("a")
    await a.join(UNREACHABLE)
    # near the largest value each: some 63 to a page's MAX_PAGE_DATA_BYTES, not 500
    values = {f"big/{n:03d}": "x" * LARGE_STATE_CHARS for n in range(LARGE_STATE_KEYS)}
    await set_many(a, values)
    listed: list[str] = []
    page = await a.call("state_list", network=NET, limit=MAX_PAGE)
    assert 0 < len(page["entries"]) < LARGE_STATE_KEYS and page["next_cursor"] is not None
    while True:
        assert sum(len(e["key"]) + len(e["value"]) for e in page["entries"]) <= (
            MAX_PAGE_DATA_BYTES
        )
        listed += [entry["key"] for entry in page["entries"]]
        if page["next_cursor"] is None:
            break
        page = await a.call("state_list", network=NET, limit=MAX_PAGE, cursor=page["next_cursor"])
    assert listed == sorted(values)  # each once, in key order
