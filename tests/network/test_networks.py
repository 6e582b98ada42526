"""Networks as ops: add (idempotent), conflict, update with and without reconnect, remove (and
asks to a network stopped for good), rejoin after a restart, surviving a broker restart, and
the inspect tree."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

import pytest
import trio

from meshactors.actors import ChildSpec, Restart
from meshactors.actors import _supervisor as supervisor_module
from meshactors.network.core import COMMAND_TIMEOUT
from meshactors.network.peers import PROFILE_KEY
from meshactors.store import events as event_log
from meshactors.store import networks as network_db
from meshactors.wire.ipc import ErrorCode, OpError
from tests.network.appclient import AppClient
from tests.network.conftest import (
    NET,
    UNREACHABLE,
    WAIT,
    Daemon,
    Mesh,
    OpFailed,
    active_pair,
    approve_both,
    solo_daemon,
)
from tests.ops.test_message_ops import new_device
from tests.support import StartGate


async def test_add_is_idempotent_and_a_different_config_conflicts(mesh: Mesh) -> None:
    a = await mesh.daemon("a")
    first = await a.join(mesh.url)
    again = await a.join(mesh.url)
    assert (first["added"], again["added"]) == (True, False)
    with pytest.raises(OpFailed) as conflict:
        await a.join(mesh.url, label="other")
    assert conflict.value.code == "conflict"
    assert len([e for e in a.events if e["kind"] == "network_added"]) == 1


async def test_adds_of_one_network_at_once_join_it_once(mesh: Mesh, nursery: trio.Nursery) -> None:
    """The networks actor applies changes one at a time, however many arrive at once."""
    a = await mesh.daemon("a")
    client = await AppClient.open(a.services.paths.socket, nursery)
    config = {"id": NET, "brokers": [mesh.url]}
    sent = [await client.send("network_add", config=config) for _ in range(5)]
    answers = [await client.answer(request_id) for request_id in sent]
    assert sorted(answer["added"] for answer in answers) == [False] * 4 + [True]
    assert len((await a.call("networks_list"))["networks"]) == 1
    assert len([e for e in a.events if e["kind"] == "network_added"]) == 1


@pytest.mark.parametrize(
    ("config", "word"),
    [
        ({"id": "bad id", "brokers": ["ws://127.0.0.1:1/v1"]}, "network id"),
        ({"id": "n", "brokers": []}, "brokers"),
        ({"id": "n", "brokers": ["http://127.0.0.1:1/v1"]}, "ws://"),
        ({"id": "n", "brokers": ["ws://127.0.0.1:1/v1"], "auto_approve": "yes"}, "auto_approve"),
        ({"id": "n", "brokers": ["ws://127.0.0.1:1/v1"], "colour": 1}, "colour"),
        ({"brokers": ["ws://127.0.0.1:1/v1"]}, "id"),
    ],
)
async def test_invalid_configs_are_refused_with_the_field_named(
    mesh: Mesh, config: dict[str, object], word: str
) -> None:
    a = await mesh.daemon("a")
    with pytest.raises(OpFailed) as refused:
        await a.call("network_add", config=config)
    assert refused.value.code == "invalid_params"
    assert word in str(refused.value)
    assert (await a.call("networks_list"))["networks"] == []


async def test_update_applies_label_and_auto_approve_without_reconnecting(mesh: Mesh) -> None:
    a, b = await mesh.daemon("a"), await mesh.daemon("b")
    await a.join(mesh.url)
    await a.wait_event("network_phase", phase="alone")
    link = a.network().link
    answer = await a.call(
        "network_update",
        config={"id": NET, "brokers": [mesh.url], "label": "home", "auto_approve": True},
    )
    assert answer["reconnect"] is False
    assert answer["network"]["label"] == "home"
    assert link.connects == 1
    await b.join(mesh.url)
    await a.wait_event("peer_approved", device_id=b.device_id, auto=True)  # auto_approve applied
    assert link.connects == 1

    other_url = f"ws://localhost:{mesh.broker_port}/v1"
    after = a.last_event_id
    answer = await a.call("network_update", config={"id": NET, "brokers": [other_url]})
    assert answer["reconnect"] is True
    await a.wait_event("network_phase", after=after, phase="alone")
    assert (link.connects, link.url) == (2, other_url)


async def test_remove_leaves_at_once_and_forgets(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    await a.call("network_remove", network=NET, purge=True)
    await b.wait_status(a, "offline")
    assert (await a.call("networks_list"))["networks"] == []
    assert "network net1" not in a.services.tree.children["networks"].children
    await a.wait_event("network_removed", network=NET, purge=True)
    with pytest.raises(OpFailed) as gone:
        await a.call("network_remove", network=NET)
    assert gone.value.code == "no_such_network"
    with pytest.raises(OpFailed) as unknown:
        await a.call("peers_list", network=NET)
    assert unknown.value.code == "no_such_network"


async def test_a_remove_of_no_network_id_leaves_the_global_settings_alone(mesh: Mesh) -> None:
    """GLOBAL ("") holds the settings of every network (the event ids spent, the global
    profile, the role): a purge naming it, or any id no network can have, is
    `no_such_network` before anything is deleted (it used to wipe them, then answer that)."""
    solo = await solo_daemon(mesh)
    await solo.call("profile_set", display_name="solo")

    def global_settings(conn: sqlite3.Connection) -> dict[str, Any]:
        return network_db.get_settings(conn, network_db.GLOBAL)

    before = await solo.services.store.call(global_settings, what="read global settings")
    assert {event_log.SPENT_KEY, PROFILE_KEY} <= before.keys()
    for network_id in (network_db.GLOBAL, "bad id"):
        with pytest.raises(OpFailed) as refused:
            await solo.call("network_remove", network=network_id, purge=True)
        assert refused.value.code == "no_such_network"
    after = await solo.services.store.call(global_settings, what="read global settings")
    assert {key: after.get(key) for key in before} == before
    assert (await solo.call("profile_get"))["profile"]["display_name"] == "solo"
    assert not [e for e in solo.events if e["kind"] == "network_removed"]


async def test_an_ask_to_a_removed_network_is_unavailable_at_once(mesh: Mesh) -> None:
    solo = await solo_daemon(mesh)
    removed = solo.network()
    await solo.call("network_remove", network=NET)
    with trio.fail_after(COMMAND_TIMEOUT + WAIT), pytest.raises(OpError) as refused:
        await removed.ask("anything", lambda: None)
    assert refused.value.code is ErrorCode.UNAVAILABLE


async def test_an_ask_to_a_network_of_a_crashed_networks_actor_is_unavailable_at_once(
    mesh: Mesh,
) -> None:
    solo = await mesh.daemon("solo", debug_ops=True)
    await solo.join(UNREACHABLE)
    stopped = solo.network()
    restarts = solo.services.tree.children["control"].restarts
    with contextlib.suppress(EOFError):  # its connection may close before the answer
        await solo.call("debug_crash", path="daemon/networks")
    await mesh.reconnect(solo, restarts)
    assert solo.network() is not stopped  # the restarted supervisor built a new one
    with trio.fail_after(COMMAND_TIMEOUT + WAIT), pytest.raises(OpError) as refused:
        await stopped.ask("anything", lambda: None)
    assert refused.value.code is ErrorCode.UNAVAILABLE


async def test_a_rejoin_after_remove_is_active_again_without_approvals(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    await a.call("network_remove", network=NET)
    await b.wait_status(a, "offline")
    after_a, after_b = a.last_event_id, b.last_event_id
    await a.join(mesh.url)
    await a.wait_status(b, "active", after=after_a)
    await b.wait_status(a, "active", after=after_b)
    roster = (await a.call("roster_list", network=NET))["roster"]
    assert [(r["device_id"], r["state"]) for r in roster] == [(b.device_id, "approved")]


async def test_a_rejoin_after_purge_asks_for_approval_again(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    await a.call("network_remove", network=NET, purge=True)
    await b.wait_status(a, "offline")
    after_a = a.last_event_id
    await a.join(mesh.url)
    await a.wait_status(b, "pending", after=after_a)
    roster = (await a.call("roster_list", network=NET))["roster"]
    assert [(r["device_id"], r["state"]) for r in roster] == [(b.device_id, "pending")]


async def test_networks_approvals_and_settings_survive_a_restart(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    caps = {"tags": ["t"], "app_version": "1", "max_connections": 1, "extra": {"k": [1]}}
    await a.call("capabilities_set", network=NET, capabilities=caps)
    await a.call("profile_set", display_name="Ann")
    await a.stop()
    await b.wait_status(a, "offline")
    after = b.last_event_id
    a = await mesh.daemon("a")  # same home: no command given
    await a.wait_status(b, "active")
    await b.wait_status(a, "active", after=after)
    seen = await b.peer(a)
    assert seen is not None
    assert seen["capabilities"] == caps
    assert seen["profile"]["display_name"] == "Ann"


async def test_roles_are_declared_kept_and_remembered_for_offline_peers(mesh: Mesh) -> None:
    a = await mesh.daemon("a")
    b = await mesh.daemon("b", role="control-plane")
    for daemon in (a, b):
        await daemon.join(mesh.url)
    await approve_both(a, b)
    assert (await b.call("status"))["role"] == "control-plane"
    assert (await a.call("status"))["role"] == "daemon"
    assert (await a.peer(b) or {})["role"] == "control-plane"
    await b.stop()
    await a.wait_status(b, "offline")
    await a.stop()
    a = await mesh.daemon("a")
    seen = await a.peer(b)
    assert seen is not None
    assert (seen["status"], seen["role"]) == ("offline", "control-plane")
    assert (await a.call("peers_list", network=NET))["peers"] == []  # a control plane is hidden
    roster = (await a.call("roster_list", network=NET))["roster"]
    assert [r["role"] for r in roster] == ["control-plane"]
    b = await mesh.daemon("b")  # no role given: the one declared before
    assert (await b.call("status"))["role"] == "control-plane"
    await a.wait_status(b, "active")
    assert (await a.peer(b) or {})["role"] == "control-plane"


async def test_a_device_approved_in_advance_has_no_role_until_heard(mesh: Mesh) -> None:
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    device_id = new_device()
    await a.call("roster_approve", network=NET, device_id=device_id)

    async def roles() -> tuple[Any, Any]:
        (peer,) = (await a.call("peers_list", network=NET, all=True))["peers"]
        (entry,) = (await a.call("roster_list", network=NET))["roster"]
        return peer["role"], entry["role"]

    assert await roles() == (None, None)
    await a.stop()
    a = await mesh.daemon("a")  # loaded from the roster: still unheard
    assert await roles() == (None, None)


async def test_both_peers_are_active_again_after_a_broker_restart(mesh: Mesh) -> None:
    a, b = await active_pair(mesh)
    after_a, after_b = a.last_event_id, b.last_event_id
    port = mesh.broker_port
    mesh.stop_broker()
    await a.wait_event("network_phase", after=after_a, phase="degraded")
    assert (await a.call("networks_list"))["networks"][0]["phase"] == "degraded"
    await mesh.start_broker(port)
    await a.wait_status(b, "active", after=after_a)
    await b.wait_status(a, "active", after=after_b)
    await a.wait_event("network_phase", after=after_a, phase="active")


async def test_inspect_shows_each_network_with_its_children_and_figures(mesh: Mesh) -> None:
    a, _ = await active_pair(mesh)
    tree = await a.call("inspect")
    names = [child["name"] for child in tree["children"]]
    assert names == ["store", "events", "networks", "control", "outbox", "notifier"]
    (network,) = next(c for c in tree["children"] if c["name"] == "networks")["children"]
    assert network["name"] == f"network {NET}"
    assert network["kind"] == "network"
    assert network["figures"]["phase"] == "active"
    children = {child["name"]: child for child in network["children"]}
    assert list(children) == ["core", "link"]
    assert children["link"]["figures"]["state"] == "up"
    assert children["link"]["figures"]["url"] == mesh.url
    assert children["core"]["figures"]["peers"]["active"] == 1
    queues = {**{c["name"]: c for c in tree["children"]}, **children}
    for name in ("store", "events", "networks", "control", "outbox", "core", "link"):
        assert queues[name]["inbox"]["size"] > 0, name  # what each actor's work waits in
    status = await a.call("status")
    assert [(n["id"], n["phase"]) for n in status["networks"]] == [(NET, "active")]


async def test_an_embedded_broker_serves_the_mesh(mesh: Mesh) -> None:
    a = await mesh.daemon("a", broker_listen=("127.0.0.1", 0))
    port = a.services.tree.children["broker"].figures()["port"]  # type: ignore[misc]
    url = f"ws://127.0.0.1:{port}/v1"
    b = await mesh.daemon("b")
    await a.join(url)
    await b.join(url)
    await approve_both(a, b)
    with trio.fail_after(WAIT):
        tree = await a.call("inspect")
    broker = next(c for c in tree["children"] if c["name"] == "broker")
    assert broker["figures"]["members"] == 2


def networks_running(tree: dict[str, Any]) -> list[str]:
    """The children of the `networks` supervisor in an `inspect` answer."""
    networks = next(child for child in tree["children"] if child["name"] == "networks")
    return [child["name"] for child in networks["children"]]


async def hold_networks(daemon: Daemon, nursery: trio.Nursery) -> StartGate:
    """Hold the `networks` supervisor in the start of a gate child: the starts and stops the
    manager asks of it meanwhile wait in order behind it, until the gate is opened."""
    gate = StartGate()
    spec = ChildSpec("gate", gate, Restart.TEMPORARY)
    nursery.start_soon(daemon.services.networks.start_child, spec)
    with trio.fail_after(WAIT):
        await gate.starting.wait()
    return gate


async def saved_networks(daemon: Daemon) -> list[str]:
    """The ids of the networks the daemon's next start joins."""
    saved = await daemon.services.store.call(network_db.load_networks, what="load networks")
    return [network_id for network_id, _ in saved]


async def test_an_add_that_gave_up_on_its_start_leaves_no_network_a_later_add_trips_on(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """An add stops waiting for the network's start (`timeout`), which the supervisor still
    carries out afterwards: it is stopped again and its config forgotten (it used to stay saved,
    so the next daemon start joined it), and the next add joins the network (it used to find
    the supervisor running a network the manager did not record, and fail as internal)."""
    a = await mesh.daemon("a")
    gate = await hold_networks(a, nursery)
    with pytest.MonkeyPatch.context() as patch:  # the add's wait only: the gate holds the start
        patch.setattr(supervisor_module, "ASK_TIMEOUT", 0.1)
        with pytest.raises(OpFailed) as gave_up:
            await a.join(mesh.url)
    assert gave_up.value.code == "timeout"
    assert await saved_networks(a) == []
    gate.opened.set()
    assert (await a.join(mesh.url))["added"] is True
    assert networks_running(await a.call("inspect")) == ["gate", f"network {NET}"]
    assert [n["id"] for n in (await a.call("networks_list"))["networks"]] == [NET]


async def test_an_add_that_finds_a_network_of_its_id_it_does_not_record_conflicts_once(
    mesh: Mesh,
) -> None:
    """The supervisor runs a `network <id>` child the manager does not record (a stop that
    never reached it): the add is refused as `conflict`, not internal, with its config not kept
    for the next daemon start, and has that child stopped, so the next add joins."""
    a = await mesh.daemon("a")
    stray = StartGate()
    stray.opened.set()
    await a.services.networks.start_child(ChildSpec(f"network {NET}", stray, Restart.TEMPORARY))
    with pytest.raises(OpFailed) as refused:
        await a.join(mesh.url)
    assert refused.value.code == "conflict"
    assert await saved_networks(a) == []
    assert (await a.join(mesh.url))["added"] is True
    assert networks_running(await a.call("inspect")) == [f"network {NET}"]
    assert a.network().config.id == NET


async def test_an_add_whose_network_fails_to_start_is_unavailable_and_leaves_nothing(
    mesh: Mesh,
) -> None:
    """The network's core cannot load its roster (a damaged database: the table is gone), so
    the network fails to start: the add is `unavailable` with the cause (it used to be
    internal), and neither a network nor its config for the next daemon start is left."""
    a = await mesh.daemon("a")

    def drop_the_roster(conn: sqlite3.Connection) -> None:
        conn.execute("DROP TABLE roster")

    await a.services.store.call(drop_the_roster, what="damage the database")
    with pytest.raises(OpFailed) as refused:
        await a.join(mesh.url)
    assert refused.value.code == "unavailable"
    assert "could not start" in str(refused.value)
    assert "no such table: roster" in str(refused.value)
    assert await saved_networks(a) == []
    assert networks_running(await a.call("inspect")) == []
    assert (await a.call("networks_list"))["networks"] == []


async def test_a_remove_that_gave_up_on_the_stop_is_done_and_keeps_no_config(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """A remove stops waiting for the network's stop (`timeout`), which the supervisor still
    carries out afterwards: the network is removed all the same, its config deleted (it used
    to stay saved, so the next daemon start joined a network no longer recorded) and, once
    the stop is done, an ask to it is `unavailable` at once (it used to wait its deadline)."""
    solo = await solo_daemon(mesh)
    removed = solo.network()
    gate = await hold_networks(solo, nursery)
    with pytest.MonkeyPatch.context() as patch:  # the remove's wait only: the gate holds it
        patch.setattr(supervisor_module, "ASK_TIMEOUT", 0.1)
        with pytest.raises(OpFailed) as gave_up:
            await solo.call("network_remove", network=NET)
    assert gave_up.value.code == "timeout"
    assert await saved_networks(solo) == []
    assert "removed but still stopping" in str(gave_up.value)
    assert (await solo.call("networks_list"))["networks"] == []
    await solo.wait_event("network_removed", network=NET)
    gate.opened.set()
    assert (await solo.join(UNREACHABLE))["added"] is True  # started after the stop
    assert networks_running(await solo.call("inspect")) == ["gate", f"network {NET}"]
    with trio.fail_after(WAIT), pytest.raises(OpError) as refused:
        await removed.ask("anything", lambda: None)
    assert refused.value.code is ErrorCode.UNAVAILABLE
