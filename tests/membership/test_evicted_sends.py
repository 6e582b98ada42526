"""Durable sends and an evict: what could never be delivered is refused, and what waits dies."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import trio

from meshactors.paths import resolve_paths
from tests.membership.conftest import CLOSED, team
from tests.network.conftest import Daemon, Mesh, OpFailed


async def refused(daemon: Daemon, to: str) -> str:
    """The error message of a send `daemon` must refuse with `conflict`."""
    return await conflict(daemon, "send", network=CLOSED, to=to, message="never")


async def conflict(daemon: Daemon, op: str, **params: object) -> str:
    """The error message of an op `daemon` must refuse with `conflict`."""
    with pytest.raises(OpFailed) as error:
        await daemon.call(op, **params)
    assert error.value.code == "conflict"
    return str(error.value)


async def test_sends_to_and_from_an_evicted_device_are_refused_and_waiting_ones_die(
    mesh: Mesh,
) -> None:
    owner, target, away = await team(mesh, "owner", "target", "away")
    await away.stop()
    await target.wait_status(away, "offline")
    outgoing = await target.call("send", network=CLOSED, to=away.device_id, message="out")
    await target.stop()
    await owner.wait_status(target, "offline")
    incoming = await owner.call("send", network=CLOSED, to=target.device_id, message="in")
    await owner.call("members_evict", network=CLOSED, device_id=target.device_id)
    dead = await owner.wait_event("message_dead", id=incoming["id"])
    assert (dead["recipient"], dead["error"]) == (target.device_id, "evicted")
    assert "was evicted from team" in await refused(owner, target.device_id)
    said = await conflict(owner, "outbox_requeue", outbox_id=incoming["id"])
    assert f"{target.device_id} was evicted from team" in said
    # the device learns of it once back: its own waiting send dies, and it may send no more
    target = await mesh.daemon("target")
    await target.wait_event("evicted", network=CLOSED)
    dead = await target.wait_event("message_dead", id=outgoing["id"])
    assert (dead["recipient"], dead["error"]) == (away.device_id, "evicted")
    assert "this device was evicted" in await refused(target, owner.device_id)
    assert "this device was evicted" in await refused(target, "*")
    (row,) = (await target.call("outbox_list", network=CLOSED))["rows"]
    assert (row["status"], row["last_error"]) == ("dead", "evicted")
    said = await conflict(target, "outbox_requeue", outbox_id=outgoing["id"])
    assert "this device was evicted" in said
    for daemon in (owner, target):  # nothing was requeued
        rows = (await daemon.call("outbox_list", network=CLOSED))["rows"]
        assert [row["status"] for row in rows] == ["dead"]


async def test_a_call_to_or_from_an_evicted_device_says_it_was_evicted(mesh: Mesh) -> None:
    """The evict, not a missing or inactive peer, is what the caller is told."""
    owner, target = await team(mesh, "owner", "target")
    await owner.call("members_evict", network=CLOSED, device_id=target.device_id)
    await target.wait_event("evicted", network=CLOSED)
    for caller, callee, said in (
        (owner, target, f"{target.device_id} was evicted from team"),
        (target, owner, "this device was evicted from team"),
    ):
        with pytest.raises(OpFailed) as error:
            await caller.call("rpc_call", network=CLOSED, peer=callee.device_id, method="m")
        assert error.value.code in ("no_such_peer", "peer_not_active")
        assert said in str(error.value)


async def cli_error(daemon: Daemon, *words: str) -> dict[str, Any]:
    """The JSON error `meshactors WORDS… --json` prints against `daemon`, and its exit status."""
    socket = str(resolve_paths({"MESHACTORS_HOME": str(daemon.home)}).socket)
    done = await trio.run_process(
        [sys.executable, "-m", "meshactors", "--socket", socket, *words, "--json"],
        stdin=b"",
        capture_stdout=True,
        check=False,
    )
    error: dict[str, Any] = json.loads(done.stdout)["error"]
    return {"status": done.returncode, **error}


@pytest.mark.parametrize(
    "command",
    [
        ("rpc", "call", "-n", CLOSED, "{peer}", "m"),
        ("channel", "send", "-n", CLOSED, "news", "1", "--to", "{peer}"),
        ("stream", "send", "-n", CLOSED, "{peer}", "m"),
    ],
)
async def test_a_peer_named_by_label_on_an_evicted_device_says_it_was_evicted(
    mesh: Mesh, command: tuple[str, ...]
) -> None:
    """Its link, and with it every peer and label, is gone: the evict is still the answer."""
    owner, target = await team(mesh, "owner", "target")
    await owner.call("members_evict", network=CLOSED, device_id=target.device_id)
    await target.wait_event("peer_left", network=CLOSED, device_id=owner.device_id)
    answers = []
    for peer in (owner.device_id, owner.name):  # the daemon's own answer, then the label's
        words = [word.format(peer=peer) for word in command]
        answers.append(await cli_error(target, *words))
    by_id, by_label = answers
    assert by_label == by_id
    assert by_label["message"] == "this device was evicted from team"
