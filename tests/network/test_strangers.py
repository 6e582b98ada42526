"""Strangers (devices seen in an open network, never approved or denied) cannot keep anyone
else out of the peer table or the roster: past MAX_STRANGERS, or when the table is full, the
stranger seen longest ago that is not present is forgotten, and approved or denied devices never
are; nor can silent devices (present at the broker, never a hello), let go first. The limits
are made small here; the strangers are hand-made peers at a real broker."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from meshactors.actors import ChildSpec, Node, Supervisor, run_root
from meshactors.event_hub import EventHub
from meshactors.identity import Identity
from meshactors.network import peers as peers_module
from meshactors.network.link import InboundRecords
from meshactors.network.peers import Peers
from meshactors.network.sealing import PeerCrypto
from meshactors.store import networks as roster_db
from meshactors.store.actor import StoreActor
from meshactors.wire.broker import PresenceJoin, PresenceLeave
from meshactors.wire.device_id import device_id_from_public_key
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.peer import Bye, Frame, Ping, encode_frame
from tests.network.appclient import network_children
from tests.network.conftest import NET, Daemon, Mesh, OpFailed, approve_both
from tests.network.rawpeer import RawPeer, pending_hello


@contextlib.asynccontextmanager
async def _stranger(a: Daemon, url: str) -> AsyncIterator[RawPeer]:
    """A hand-made device present at the broker that said hello to `a` (approval pending),
    once `a` shows it pending; it leaves (and `a` has seen it leave) when the block ends."""
    raw = RawPeer(NET)
    async with trio.open_nursery() as nursery:
        await raw.join(url, nursery)
        await raw.hello(a.device_id, approval="pending")
        await a.wait_event("peer_pending", device_id=raw.device_id)
        yield raw
        nursery.cancel_scope.cancel()
    await a.wait_event("peer_left", device_id=raw.device_id)


async def _passing_stranger(a: Daemon, url: str) -> str:
    """A stranger that says hello to `a` and leaves; its device id."""
    async with _stranger(a, url) as raw:
        return raw.device_id


def _unseen_device() -> str:
    return device_id_from_public_key(bytes(SigningKey.generate().verify_key))


async def _roster(daemon: Daemon) -> dict[str, str]:
    rows = (await daemon.call("roster_list", network=NET))["roster"]
    return {row["device_id"]: row["state"] for row in rows}


def _saved_states(daemon: Daemon) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(daemon.home / "state.db")) as conn:
        rows = conn.execute("SELECT device_id, state FROM roster WHERE network = ?", (NET,))
        return dict(rows.fetchall())


async def _dropped(daemon: Daemon) -> dict[str, int]:
    core = network_children(await daemon.call("inspect"), NET)["core"]
    dropped: dict[str, int] = core["figures"]["dropped"]
    return dropped


async def test_strangers_that_came_and_went_leave_room_for_a_new_device(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers_module, "MAX_PEERS", 4)
    monkeypatch.setattr(peers_module, "MAX_STRANGERS", 2, raising=False)
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    strangers = [await _passing_stranger(a, mesh.url) for _ in range(6)]
    b = await mesh.daemon("b")
    await b.join(mesh.url)
    await approve_both(a, b)
    assert await _roster(a) == {
        strangers[4]: "pending",
        strangers[5]: "pending",
        b.device_id: "approved",
    }
    assert (await _dropped(a))["strangers_forgotten"] == 4
    await a.stop()
    assert _saved_states(a) == {
        strangers[4]: "pending",
        strangers[5]: "pending",
        b.device_id: "approved",
    }
    a = await mesh.daemon("a")  # the same home: the saved roster again
    await a.wait_status(b, "active")
    await _passing_stranger(a, mesh.url)  # still room, for a new stranger too


async def test_approved_denied_and_present_devices_are_never_forgotten(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers_module, "MAX_STRANGERS", 2, raising=False)
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    approved, denied = _unseen_device(), _unseen_device()
    await a.call("roster_approve", network=NET, device_id=approved)
    await a.call("roster_deny", network=NET, device_id=denied)
    async with _stranger(a, mesh.url) as first:
        gone = await _passing_stranger(a, mesh.url)
        async with _stranger(a, mesh.url) as third:  # takes the place of `gone`, not `first`
            assert await _roster(a) == {
                approved: "approved",
                denied: "denied",
                first.device_id: "pending",
                third.device_id: "pending",
            }
            async with _stranger(a, mesh.url) as unkept:  # every stranger present: not saved
                seen = await a.peer(unkept.device_id)
                assert seen is not None and seen["status"] == "pending"
                assert unkept.device_id not in await _roster(a)
            assert await a.peer(unkept.device_id) is None  # and forgotten once it left
    last = await _passing_stranger(a, mesh.url)  # takes the place of `first`, the oldest
    kept = {approved: "approved", denied: "denied", third.device_id: "pending", last: "pending"}
    assert await _roster(a) == kept
    dropped = await _dropped(a)
    assert (dropped["strangers_forgotten"], dropped["strangers_full"]) == (2, 1)
    assert gone not in await _roster(a)
    await a.stop()
    assert _saved_states(a) == kept


async def test_a_full_table_makes_room_for_an_approval_or_says_it_is_full(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers_module, "MAX_PEERS", 2)
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    stranger = await _passing_stranger(a, mesh.url)
    first, second, third = _unseen_device(), _unseen_device(), _unseen_device()
    await a.call("roster_approve", network=NET, device_id=first)
    await a.call("roster_approve", network=NET, device_id=second)  # the stranger made room
    assert await _roster(a) == {first: "approved", second: "approved"}
    with pytest.raises(OpFailed) as full:
        await a.call("roster_approve", network=NET, device_id=third)
    assert full.value.code == "unavailable"
    assert "peer table full (2)" in str(full.value)
    assert "2 held by devices not present" in str(full.value)
    with pytest.raises(OpFailed) as unusable:
        await a.call("roster_approve", network=NET, device_id="a" * 52)
    assert unusable.value.code == "invalid_params"
    assert await _roster(a) == {first: "approved", second: "approved"}
    assert stranger not in _saved_states(a)


async def test_devices_present_that_never_speak_leave_room_for_one_that_does(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Devices the broker says joined but that never say hello (as a hostile broker may
    make up) hold at most MAX_SILENT_PEERS places, and a device that speaks takes the place of
    the one present longest: a table full of them never keeps a real peer out."""
    monkeypatch.setattr(peers_module, "MAX_PEERS", 3)
    monkeypatch.setattr(peers_module, "MAX_SILENT_PEERS", 2, raising=False)
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    silent = [RawPeer(NET) for _ in range(4)]
    async with trio.open_nursery() as nursery:
        for raw in silent:  # present at the broker, never a word to `a`
            await raw.join(mesh.url, nursery)
            await a.wait_event("peer_sighted", device_id=raw.device_id)
        for gone in silent[:2]:  # past MAX_SILENT_PEERS: the oldest went
            await a.wait_event("peer_left", device_id=gone.device_id)
        await a.call("roster_approve", network=NET, device_id=_unseen_device())
        b = await mesh.daemon("b")  # the table is full: one approved, two silent
        await b.join(mesh.url)
        await approve_both(a, b)
        assert await a.peer(silent[2].device_id) is None  # the one present longest went
        assert await a.peer(silent[3].device_id) is not None
        assert (await _dropped(a))["silent_forgotten"] == 3
        nursery.cancel_scope.cancel()


async def test_a_frame_before_hello_keeps_a_silent_device_silent(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent device that sends anything but hello has its frame dropped (`before_hello`)
    as unheard: it is still let go first, so junk buys it no place past MAX_SILENT_PEERS."""
    monkeypatch.setattr(peers_module, "MAX_SILENT_PEERS", 2, raising=False)
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    talker, *others = [RawPeer(NET) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        await talker.join(mesh.url, nursery)
        await a.wait_event("peer_sighted", device_id=talker.device_id)
        await talker.send_frame(a.device_id, Ping(1))
        await talker.send_raw(a.device_id, b"junk")  # told as rejected: the ping came before
        await a.wait_event("peer_frame_rejected", device_id=talker.device_id)
        assert (await _dropped(a))["before_hello"] == 1
        for raw in others:  # past MAX_SILENT_PEERS: the oldest silent one, the talker, goes
            await raw.join(mesh.url, nursery)
            await a.wait_event("peer_sighted", device_id=raw.device_id)
        assert await a.peer(talker.device_id) is None
        assert (await _dropped(a))["silent_forgotten"] == 1
        nursery.cancel_scope.cancel()


async def test_a_start_keeps_the_newest_strangers_saved(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await mesh.daemon("a")
    await a.join(mesh.url)
    await a.stop()
    approved = _unseen_device()
    strangers = [_unseen_device() for _ in range(4)]
    rows = [(approved, "approved", 0)] + [(s, "pending", at) for at, s in enumerate(strangers, 1)]
    with contextlib.closing(sqlite3.connect(a.home / "state.db")) as conn, conn:
        conn.executemany(
            "INSERT INTO roster (network, device_id, label, state, updated_at, role)"
            " VALUES (?, ?, NULL, ?, ?, NULL)",
            [(NET, *row) for row in rows],
        )
    monkeypatch.setattr(peers_module, "MAX_STRANGERS", 2, raising=False)
    a = await mesh.daemon("a")
    kept = {approved: "approved", strangers[2]: "pending", strangers[3]: "pending"}
    assert await _roster(a) == kept
    await a.stop()
    assert _saved_states(a) == kept


STRANGER_KEYS = 8  # devices in the generated runs: enough to pass both small limits
MODEL_PEERS, MODEL_STRANGERS, MODEL_SILENT = 5, 2, 2  # the limits the generated runs are held to

steps = st.lists(
    st.tuples(
        st.sampled_from(["join", "hello", "ping", "bye", "leave", "approve", "deny", "remove"]),
        st.integers(0, STRANGER_KEYS - 1),
    ),
    max_size=40,
)


@attrs.define(eq=False)
class _TableRun:
    """A peer table run in the test's own task, as core runs it, with what the operator
    decided and who is present at the broker, to hold it to the rules after each step."""

    peers: Peers
    keys: list[SigningKey]
    sealers: dict[int, PeerCrypto] = attrs.field(factory=dict)
    present: set[int] = attrs.field(factory=set)
    decided: dict[int, str] = attrs.field(factory=dict)
    kept: set[int] = attrs.field(factory=set)  # present strangers with a pending entry

    def device(self, index: int) -> str:
        return device_id_from_public_key(bytes(self.keys[index].verify_key))

    async def step(self, action: str, index: int) -> None:
        device_id = self.device(index)
        if action in ("join", "hello") and index not in self.present:
            await self.peers.on_link_event(PresenceJoin(device_id, "daemon"))
            self.present.add(index)
        if action == "hello":
            await self.say_hello(index)
            self.assert_admitted(device_id)
            if self.roster().get(device_id) == "pending":
                self.kept.add(index)
        elif action == "bye":  # to peers it handshook; it may leave later, or never
            if self.table().get(device_id, {}).get("status") in ("pending", "denied", "active"):
                await self.say(index, Bye("leaving"))
                self.kept.discard(index)
        elif action == "ping":  # to anyone, hello said or not: before it, dropped unheard
            await self.say(index, Ping(index))
        elif action == "leave":
            await self.peers.on_link_event(PresenceLeave(device_id))
            self.present.discard(index)
            self.kept.discard(index)
        elif action == "remove":
            await self.peers.forget(device_id)
            self.decided.pop(index, None)
            self.kept.discard(index)
        elif action != "join":
            self.kept.discard(index)
            try:
                await (
                    self.peers.approve(device_id, None)
                    if action == "approve"
                    else self.peers.deny(device_id)
                )
            except OpError as refused:
                assert refused.code is ErrorCode.UNAVAILABLE
                self.assert_full_of_others()
                self.assert_held_as_said(refused.message)
            else:
                self.decided[index] = "approved" if action == "approve" else "denied"
        await self.peers.settle(queued=lambda: 0)
        self.assert_rules()

    async def say_hello(self, index: int) -> None:
        await self.say(index, pending_hello())

    async def say(self, index: int, frame: Frame) -> None:
        key = self.keys[index]
        sealer = self.sealers.setdefault(
            index, PeerCrypto.for_peer(key, self.peers.identity.device_id)
        )
        sealed = sealer.seal(encode_frame(frame))
        await self.peers.on_link_event(InboundRecords([(bytes(key.verify_key), sealed)]))

    def table(self) -> dict[str, dict[str, Any]]:
        return {p["device_id"]: p for p in self.peers.list_peers(include_all=True)}

    def roster(self) -> dict[str, str]:
        return {row["device_id"]: row["state"] for row in self.peers.list_roster()}

    def silent(self) -> set[str]:
        """The devices in the table only as present at the broker, no entry: never a hello
        (sighted) or a Bye (offline) since they joined."""
        roster = self.roster()
        return {
            d
            for d, p in self.table().items()
            if p["status"] in ("sighted", "offline") and d not in roster
        }

    def assert_full_of_others(self) -> None:
        """The table is full, and not of strangers that left nor of silent devices."""
        table, roster = self.table(), self.roster()
        assert len(table) == MODEL_PEERS
        assert not self.silent()
        assert all(
            roster.get(d) in ("approved", "denied") or p["status"] != "offline"
            for d, p in table.items()
        )

    def assert_held_as_said(self, refusal: str) -> None:
        """A refusal for a full table says truly what holds its places."""
        away = sum(p["status"] == "offline" for p in self.table().values())
        said = f"{away} held by devices not present" if away else "present at the"
        assert said in refusal

    def assert_admitted(self, device_id: str) -> None:
        """A device present at the broker is in the table unless it is full of others."""
        if device_id not in self.table():
            self.assert_full_of_others()

    def assert_rules(self) -> None:
        table, roster = self.table(), self.roster()
        assert len(table) <= MODEL_PEERS
        assert list(roster.values()).count("pending") <= MODEL_STRANGERS
        assert len(self.silent()) <= MODEL_SILENT
        assert {self.device(i): state for i, state in self.decided.items()} == {
            d: s for d, s in roster.items() if s != "pending"
        }
        assert {self.device(i) for i in self.kept} <= set(roster)
        assert set(roster) <= set(table)  # every roster entry has its place
        # nor is any place held for good: one with no entry goes when it leaves the broker
        assert set(table) - set(roster) <= {self.device(i) for i in self.present}
        assert set(self.peers._silent) <= set(table)  # to be let go, each has its place


@contextlib.asynccontextmanager
async def _table_run(home: Path) -> AsyncIterator[_TableRun]:
    """A peer table with a real store in `home`, loaded, as core holds it, for the block."""
    store = StoreActor(home / "state.db")
    peers = Peers(NET, Identity(SigningKey.generate()), store, EventHub(store))
    keys = [SigningKey(bytes([index + 1]) * 32) for index in range(STRANGER_KEYS)]
    tree = Supervisor(children=[ChildSpec("store", store)])
    async with trio.open_nursery() as nursery:
        await nursery.start(run_root, tree, Node(name="tree", kind="supervisor"))
        save = functools.partial(roster_db.save_network, network_id=NET, config={}, now_ms=0)
        await store.call(save, what="save network")
        await peers.load()
        yield _TableRun(peers, keys)
        nursery.cancel_scope.cancel()


async def _run_steps(home: Path, actions: list[tuple[str, int]]) -> None:
    async with _table_run(home) as run:
        for action, index in actions:
            await run.step(action, index)
        await run.peers.save_unsaved()
        saved = await run.peers.store.call(
            functools.partial(roster_db.roster, network=NET), what="read roster"
        )
        assert {e.device_id: e.state for e in saved} == run.roster()
        await run.peers.load()  # as a restarted core: the same roster, the same rules
        run.present.clear()
        run.assert_rules()


async def test_a_stranger_that_comes_back_is_forgotten_after_those_seen_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order is that of the last hello, not of the first: a stranger that keeps coming
    back is not the first to go whenever it is away."""
    monkeypatch.setattr(peers_module, "MAX_STRANGERS", 2, raising=False)
    async with _table_run(tmp_path) as run:
        for action, index in [("hello", 0), ("leave", 0), ("hello", 1), ("leave", 1)]:
            await run.step(action, index)
        await run.step("hello", 0)  # back again, after 1 was seen
        await run.step("leave", 0)
        await run.step("hello", 2)
        assert run.roster() == {run.device(0): "pending", run.device(2): "pending"}


def _model_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold the peer table to the generated runs' limits."""
    monkeypatch.setattr(peers_module, "MAX_PEERS", MODEL_PEERS)
    monkeypatch.setattr(peers_module, "MAX_STRANGERS", MODEL_STRANGERS, raising=False)
    monkeypatch.setattr(peers_module, "MAX_SILENT_PEERS", MODEL_SILENT, raising=False)


async def test_a_device_that_says_bye_and_leaves_holds_no_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Approved, removed while present, then Bye and gone: no entry keeps it in the table, and
    a full table's refusal names what holds its places."""
    _model_limits(monkeypatch)
    async with _table_run(tmp_path) as run:
        for action, index in [("hello", 0), ("approve", 0), ("remove", 0), ("bye", 0)]:
            await run.step(action, index)
        await run.step("leave", 0)
        assert run.table() == {}
        for index in range(MODEL_PEERS):  # present, each with a pending entry or none
            await run.step("hello", index)
        await run.step("approve", MODEL_PEERS)  # refused: every place is held by one present


@given(steps)
@example(  # approved while silent, then removed: silent again, so let go first
    [
        *[("join", 4), ("hello", 0), ("hello", 1), ("hello", 3), ("hello", 5)],
        *[("approve", 4), ("remove", 4), ("hello", 2)],
    ]
)
@example(  # a frame before hello: still silent, let go first, and a leaver gets no place
    [("join", 0), ("ping", 0), ("join", 1), ("join", 2), ("leave", 2), ("ping", 2)]
)
@example(  # a silent device removed, never approved: still silent, not counted twice
    [("join", 1), ("join", 3), ("remove", 1), ("join", 0), ("join", 2)]
)
@settings(deadline=None, max_examples=100)
def test_generated_runs_keep_strangers_from_keeping_anyone_out(
    actions: list[tuple[str, int]],
) -> None:
    with (
        tempfile.TemporaryDirectory() as home,
        pytest.MonkeyPatch.context() as monkeypatch,
    ):
        _model_limits(monkeypatch)
        trio.run(_run_steps, Path(home), actions)
