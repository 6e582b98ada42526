"""Fault scenarios for scripts/chaos: each is bounded in time and ends with a Verdict.

SCENARIOS maps a name to a Scenario; `run_scenario` turns any exception or overrun into a
FAIL. Scenarios that need RPC streaming or durable messages are registered as `pending` (SKIP
with the reason) until those features land: replace their `run` and drop `pending`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import trio

from meshactors.client import ClientError, EventStream, MeshClient
from meshactors.control.event_stream import EVENT_CAPACITY, LAG_DISCONNECT_LIMIT
from meshactors.network.config import NetworkConfig
from scripts.benchlib import resources, swarm
from scripts.benchlib.baseline import free_port
from scripts.benchlib.stats import latency_summary

SCENARIO_TIMEOUT = 300.0  # seconds any one scenario may run before it is a FAIL
RSS_BOUND_KIB = 64 * 1024  # growth of daemon RSS a stalled reader may cause at most
LATENCY_FACTOR = 10.0  # other clients' p99 under the fault may grow at most this much…
LATENCY_FLOOR_S = 0.05  # …or to this, whichever is larger (a loaded 2-core CI box)
STALL_FLOOD_S = 2.0  # seconds the stalled client floods requests before it stops reading
CHURN_IN_FLIGHT = 16  # network updates the churning client keeps outstanding
RTT_EVERY_S = 0.05  # how often the observing client samples its status round trip
STALL_READ_TIMEOUT = 60.0  # seconds the stalled client may read to its lag marker or the end
UNREACHABLE_BROKER = "ws://127.0.0.1:9/v1"  # the discard port: the link stays in backoff
FULL_TMPFS = "8m"  # the "disk full" tmpfs: the database and its WAL fit before the filler
FULL_NETWORK = "full"  # the network of full_state's daemon and its peer
FULL_SENDS = 20  # durable sends due to the peer that comes back while the disk is full
FULL_POLL_S = 0.1  # how often full_state reads the outbox's refusals while it waits for one
CORRUPT_BYTES = 64 * 1024  # random bytes written as the "garbage" state.db
MESSAGE_SHOWN = 160  # characters of the daemon's refusal kept in a verdict
CORRUPT_EVENTS = 2000  # events logged in a real database before it is damaged (~120 pages)
BROKER_DOWN_S = 2.0  # how long the broker stays dead in broker_restart
# the longest a wait for a network's phase goes without looking at it (its events, which wake
# it sooner, are paced and may not come)
PHASE_LOOK_S = 0.25


@attrs.frozen
class Verdict:
    """One scenario's outcome: PASS, FAIL or SKIP, a one-line reason and its figures."""

    name: str
    status: str
    detail: str
    figures: dict[str, Any] = attrs.field(factory=dict)

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail}"


Run = Callable[[bool], Verdict]


def in_trio(scenario: Callable[[bool], Awaitable[Verdict]]) -> Run:
    """A scenario written for trio, run in its own trio.run under SCENARIO_TIMEOUT."""

    async def bounded(smoke: bool) -> Verdict:
        with trio.fail_after(SCENARIO_TIMEOUT):
            return await scenario(smoke)

    return functools.wraps(scenario)(lambda smoke: trio.run(bounded, smoke))


@attrs.frozen
class Scenario:
    """A registered fault: `run(smoke)`; `pending` names what it waits for (SKIP until then)."""

    name: str
    run: Run | None
    pending: str | None = None


def _verdict(name: str, ok: bool, detail: str, **figures: Any) -> Verdict:
    return Verdict(name, "PASS" if ok else "FAIL", detail, figures)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(home: Path) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted(home.iterdir()) if p.is_file()}


# -- a client that stops reading --------------------------------------------------------------


@in_trio
async def slow_reader(smoke: bool) -> Verdict:
    """A client subscribes to events, floods requests, then stops reading while another client
    makes events. The other client gets every answer and the daemon's RSS stays bounded; when
    the stalled client reads again it finds a `lagged` marker; once it has missed more than
    LAG_DISCONNECT_LIMIT events it is cut off (full size only: ~74,000 events). The others'
    latency is reported at every size but bounded only at full size (scripts/chaos): a bound
    on time belongs to a run by hand, not to the test suite on a machine of any load."""
    name = "slow_reader"
    lag_churn = 2 * EVENT_CAPACITY  # past the subscriber's queue and the socket's buffers
    cut_churn = 0 if smoke else LAG_DISCONNECT_LIMIT + 2 * EVENT_CAPACITY
    figures: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="chaos-") as tmp,
        resources.running_daemon(Path(tmp)) as (pid, sock),
    ):
        async with MeshClient(sock) as churner, MeshClient(sock) as observer:
            before = await _rtts(observer, 200)
            rss_before = resources.rss_kib(pid)
            known = await _client_names(observer)
            stalled = await _stalled_subscriber(sock)
            (stalled_name,) = await _client_names(observer) - known
            during: list[float] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_sample_rtts, observer, during)
                await _churn(churner, lag_churn)
                figures["rss_after_lag_kib"] = resources.rss_kib(pid) - rss_before
                figures["lagged_skipped"] = await _read_until_lagged(stalled)
                if not smoke:
                    began = time.perf_counter()
                    await _churn(churner, cut_churn)  # stalled again, now for good
                    figures["churn_s"] = round(time.perf_counter() - began, 1)
                    figures["rss_after_cut_kib"] = resources.rss_kib(pid) - rss_before
                nursery.cancel_scope.cancel()
            figures["cut_off"] = stalled_name not in await _client_names(observer)
            if figures["cut_off"]:
                figures["closed_by_daemon"] = await _read_until_closed(stalled)
            await stalled.aclose()
    base, under = latency_summary(before), latency_summary(during)
    bound = max(base["p99_us"] * LATENCY_FACTOR, LATENCY_FLOOR_S * 1e6)
    growth = max(figures["rss_after_lag_kib"], figures.get("rss_after_cut_kib", 0))
    events = lag_churn + cut_churn
    ok = growth <= RSS_BOUND_KIB and figures["lagged_skipped"] > 0 and len(during) > 0
    if not smoke:
        ok = ok and under["p99_us"] <= bound and figures.get("closed_by_daemon") is True
    what = f"read again: `lagged` skipped {figures['lagged_skipped']}" + (
        ""
        if smoke
        else "; stalled for good: "
        + ("cut off by the daemon" if figures.get("closed_by_daemon") else "NOT cut off")
    )
    return _verdict(
        name,
        ok,
        f"others' status p99 {base['p99_us']:.0f}→{under['p99_us']:.0f} µs "
        f"(bound {bound:.0f}{', not applied at smoke size' if smoke else ''}); "
        f"RSS +{growth} KiB over {events} events; stalled client {what}",
        status_before=base,
        status_during=under,
        events=events,
        **figures,
    )


async def _stalled_subscriber(sock: Path) -> trio.SocketStream:
    """A raw connection that subscribed to events and flooded requests until the daemon
    stopped reading it (backpressure), and that reads nothing."""
    stalled = await trio.open_unix_socket(str(sock))
    await stalled.send_all(b'{"id":0,"op":"events_subscribe"}\n')
    with trio.move_on_after(STALL_FLOOD_S):
        while True:
            await stalled.send_all(b'{"id":1,"op":"inspect"}\n' * 64)
    return stalled


async def _churn(client: MeshClient, count: int) -> None:
    """`count` events: network updates of an unreachable network, CHURN_IN_FLIGHT at a time."""
    config = {"id": "churn", "brokers": [UNREACHABLE_BROKER]}
    with contextlib.suppress(ClientError):  # already added by an earlier churn
        await client.call("network_add", {"config": config})
    slots = trio.Semaphore(CHURN_IN_FLIGHT)

    async def update(n: int) -> None:
        try:
            await client.call("network_update", {"config": config | {"label": f"l{n}"}})
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for n in range(count):
            await slots.acquire()
            nursery.start_soon(update, n)


async def _sample_rtts(client: MeshClient, samples: list[float]) -> None:
    """A status round trip every RTT_EVERY_S until cancelled: the other clients' latency."""
    while True:
        samples += await _rtts(client, 1)
        await trio.sleep(RTT_EVERY_S)


async def _frames(stream: trio.SocketStream) -> AsyncIterator[dict[str, Any]]:
    """The JSON frames the daemon wrote to a raw connection, until it closes."""
    buffer = b""
    while chunk := await stream.receive_some(1 << 20):
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            yield json.loads(line)


async def _read_until_lagged(stream: trio.SocketStream) -> int:
    """Read again until the `lagged` marker; how many events it says were skipped (0: none)."""
    with trio.fail_after(STALL_READ_TIMEOUT):
        async for frame in _frames(stream):
            if frame.get("kind") == "lagged":
                return int(frame["skipped"])
    return 0


async def _read_until_closed(stream: trio.SocketStream) -> bool:
    """Whether the daemon closed the connection (after what it had already written)."""
    with trio.move_on_after(STALL_READ_TIMEOUT):
        try:
            async for _ in _frames(stream):
                pass
        except trio.BrokenResourceError:
            pass  # reset by the daemon: closed as well
        return True
    return False


async def _rtts(client: MeshClient, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        await client.call("status")
        samples.append(time.perf_counter() - began)
    return samples


async def _client_names(client: MeshClient) -> set[str]:
    """The names of the daemon's client actors, from its inspect tree."""
    return _clients((await client.call("inspect"))["children"])


def _clients(children: list[dict[str, Any]]) -> set[str]:
    found = set()
    for child in children:
        if child["kind"] == "client":
            found.add(child["name"])
        found |= _clients(child["children"])
    return found


# -- read-only and full state directories -----------------------------------------------------


@contextlib.contextmanager
def _mounted(args: list[str], target: Path) -> Iterator[str | None]:
    """Mount (yields None) or yield why it is not possible here."""
    result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        yield f"mount not permitted here ({result.stderr.strip() or result.returncode})"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def read_only_state(smoke: bool) -> Verdict:
    """`daemon up` on a read-only state directory: a clear error, exit 3, nothing changed."""
    name = "read_only_state"
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        source, home = Path(tmp) / "src", Path(tmp) / "ro"
        source.mkdir()
        home.mkdir()
        with resources.running_daemon(source):
            pass  # a home with identity, host record and database, then stopped
        for leftover in ("daemon.sock", "daemon.pid"):
            (source / leftover).unlink(missing_ok=True)
        before = _digests(source)
        with _mounted(["--bind", "-o", "ro", str(source)], home) as refused:
            if refused:
                return Verdict(name, "SKIP", refused)
            sock = Path(tmp) / "rw" / "daemon.sock"
            sock.parent.mkdir()
            result = resources.cli(home, "--socket", str(sock), "daemon", "up", check=False)
        after = _digests(source)
    message = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
    ok = result.returncode == 3 and before == after and "read-only" in message.lower()
    return _verdict(
        name, ok, f"exit {result.returncode}: {message!r}; files unchanged: {before == after}"
    )


@in_trio
async def full_state(smoke: bool) -> Verdict:
    """The state directory's disk fills while the daemon runs, with durable sends queued for a
    peer that then comes back: writes fail with a clear error, the daemon stays up (its outbox
    waits, refused, instead of crashing), and once space is back it works, the peer gets
    every send, and the database is intact."""
    name = "full_state"
    with (
        tempfile.TemporaryDirectory(prefix="chaos-") as tmp,
        resources.running_broker() as url,
        contextlib.ExitStack() as stack,
    ):
        home, peer = Path(tmp) / "home", Path(tmp) / "peer"
        home.mkdir()
        peer.mkdir()
        refused = stack.enter_context(
            _mounted(["-t", "tmpfs", "-o", f"size={FULL_TMPFS}", "tmpfs"], home)
        )
        if refused:
            return Verdict(name, "SKIP", refused)
        with contextlib.ExitStack() as daemons:
            _pid, sock = daemons.enter_context(resources.running_daemon(home))
            daemons.enter_context(resources.running_daemon(peer))
            peer_id = await _joined(peer / "daemon.sock", url)
            async with MeshClient(sock) as client:
                await _joined(sock, url)
                await _until_active(client, FULL_NETWORK, peer_id)
                resources.cli(peer, "daemon", "down")
                for n in range(FULL_SENDS):  # due to the peer once it is back
                    params = {"network": FULL_NETWORK, "to": peer_id, "message": f"f{n}"}
                    await client.call("send", params | {"client_message_id": f"f{n}"})
                filler = home / "filler"
                with contextlib.suppress(OSError), filler.open("wb") as out:
                    while True:
                        out.write(b"\0" * 4096)
                        out.flush()
                resources.cli(peer, "daemon", "up", "--detach")
                await _until_refused(client)
                errors = []
                for n in range(20):  # each add writes a config row and an event
                    config = {"id": f"full{n}", "brokers": [UNREACHABLE_BROKER]}
                    try:
                        await client.call("network_add", {"config": config})
                    except ClientError as exc:
                        errors.append(exc.code)
                status_ok = "device_id" in await client.call("status")
                filler.unlink()
                await client.call(
                    "network_add", {"config": {"id": "after", "brokers": [UNREACHABLE_BROKER]}}
                )
                listed = {n["id"] for n in (await client.call("networks_list"))["networks"]}
                inbox = MeshClient(peer / "daemon.sock", events_since=0)  # replays them all
                events = inbox.events()  # before connecting: no replayed event can be missed
                async with inbox:
                    arrived: set[str] = set()
                    await _arrivals(events, arrived, FULL_SENDS)
                outbox = _node(await client.call("inspect"), "outbox")
        integrity = _integrity(home / "state.db")
    ok = bool(errors) and set(errors) == {"storage"} and status_ok and "after" in listed
    ok = ok and integrity == "ok" and len(arrived) == FULL_SENDS and outbox["restarts"] == 0
    return _verdict(
        name,
        ok,
        f"{len(errors)} of 20 writes refused with {sorted(set(errors))}; daemon answered; "
        f"after freeing space a write worked; the peer back meanwhile got {len(arrived)} of "
        f"{FULL_SENDS} sends, the outbox refused {outbox['figures']['storage_refused']} times "
        f"and restarted {outbox['restarts']} times; integrity_check {integrity}",
        codes=sorted(set(errors)),
        arrived=len(arrived),
        outbox_restarts=outbox["restarts"],
        storage_refused=outbox["figures"]["storage_refused"],
    )


async def _joined(sock: Path, url: str) -> str:
    """Join the daemon at `sock` to FULL_NETWORK through `url`; returns its device id."""
    async with MeshClient(sock) as client:
        config = {"id": FULL_NETWORK, "brokers": [url], "auto_approve": True}
        await client.call("network_add", {"config": config})
        return str((await client.call("status"))["device_id"])


async def _until_refused(client: MeshClient) -> None:
    """Return once the daemon's outbox has had a write refused (`storage_refused`; another
    process's figure: read until it moves, within the scenario's bound)."""
    while True:
        outbox = _node(await client.call("inspect"), "outbox")
        if outbox["figures"]["storage_refused"]:
            return
        await trio.sleep(FULL_POLL_S)


def _node(tree: dict[str, Any], kind: str) -> dict[str, Any]:
    """The first node of `kind` in an inspect tree."""
    nodes = [tree]
    while nodes:
        node = nodes.pop(0)
        if node["kind"] == kind:
            return node
        nodes.extend(node["children"])
    raise LookupError(kind)


def _integrity(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# -- a corrupt database at start --------------------------------------------------------------


def _garbage(db: Path) -> None:
    """Random bytes where the database was."""
    db.write_bytes(os.urandom(CORRUPT_BYTES))


def _damaged_pages(db: Path) -> None:
    """A real database whose pages after the first (header and schema) are random bytes."""
    data = db.read_bytes()
    page = int.from_bytes(data[16:18], "big") or 65536  # the header's page size (1 means 64K)
    db.write_bytes(data[:page] + os.urandom(len(data) - page))


def _truncated(db: Path) -> None:
    """A real database cut to half of its pages."""
    data = db.read_bytes()
    page = int.from_bytes(data[16:18], "big") or 65536
    db.write_bytes(data[: page * (len(data) // page // 2)])


CORRUPTIONS = {"garbage": _garbage, "damaged_pages": _damaged_pages, "truncated": _truncated}


def _populated_home(home: Path) -> None:
    """A home whose state.db is real (made by a daemon) and holds CORRUPT_EVENTS logged events,
    checkpointed into the main file; the daemon is stopped again."""
    with resources.running_daemon(home):
        pass
    for leftover in ("daemon.sock", "daemon.pid"):
        (home / leftover).unlink(missing_ok=True)
    with contextlib.closing(sqlite3.connect(home / "state.db")) as conn:
        conn.executemany(
            "INSERT INTO events (kind, data_json, at_ms) VALUES ('filler', ?, 0)",
            [(json.dumps({"n": n, "pad": "x" * 200}),) for n in range(CORRUPT_EVENTS)],
        )
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (home / "state.db-wal").unlink(missing_ok=True)
    (home / "state.db-shm").unlink(missing_ok=True)


def _refused_untouched(home: Path) -> tuple[bool, str]:
    """`daemon up` on a corrupt state.db: whether it refused (exit 3, a message naming the
    database) and left it byte-identical with no -wal/-shm; and what it said."""
    before = _digest(home / "state.db")
    result = resources.cli(home, "daemon", "up", check=False)
    after = _digest(home / "state.db")
    extra = sorted(p.name for p in home.iterdir() if p.name.startswith("state.db-"))
    said = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # not logs
    message = " ".join(" ".join(said).split()) or "(no message)"  # the CLI's, may span lines
    ok = result.returncode == 3 and before == after and not extra and "database" in message.lower()
    shown = message if len(message) <= MESSAGE_SHOWN else message[: MESSAGE_SHOWN - 1] + "…"
    return ok, f"exit {result.returncode}: {shown!r}, identical {before == after}, extra {extra}"


def corrupt_database(smoke: bool) -> Verdict:
    """A corrupt state.db at start (random bytes; at full size also a real database with its
    pages damaged, and one truncated): `daemon up` exits 3 with a clear message each time and
    overwrites nothing."""
    name = "corrupt_database"
    outcomes: dict[str, str] = {}
    passed = []
    for kind, corrupt in list(CORRUPTIONS.items())[: 1 if smoke else None]:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            home = Path(tmp)
            if kind != "garbage":
                _populated_home(home)
            corrupt(home / "state.db")
            ok, outcomes[kind] = _refused_untouched(home)
            passed.append(ok)
    return _verdict(
        name,
        all(passed),
        "; ".join(f"{kind}: {outcome}" for kind, outcome in outcomes.items()),
        **outcomes,
    )


# -- broker kill and restart ------------------------------------------------------------------

MESH_NETWORK = "chaos"
STREAM_METHOD = "slow"
STREAM_CHUNK_EVERY_S = 0.1  # the serving client's pace: a stream that is surely mid-flight
STREAM_CHUNKS = 20  # chunks of the call made after the restart (it must complete)
STREAM_ERROR_BOUND_S = 10.0  # the interrupted caller must get its error within this
STREAM_BREAK_CODES = frozenset({"peer_not_active", "link_down", "handler_gone"})  # documented


@attrs.define(eq=False)
class _Mesh:
    """N in-process daemons in one network on a broker process that can be killed."""

    port: int
    broker: subprocess.Popen[bytes]
    members: list[swarm.Member]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        """SIGKILL the broker and reap it."""
        self.broker.kill()
        self.broker.wait()

    async def wait_all(self, phase: str) -> None:
        """Until every member's network is in `phase`."""
        with trio.fail_after(swarm.ROUND_TIMEOUT):
            async with trio.open_nursery() as waiting:
                for member in self.members:
                    waiting.start_soon(_until_phase, member, phase)

    async def restart(self) -> list[float]:
        """After BROKER_DOWN_S, start the broker on the same port again: the seconds each
        member took to be active again by itself."""
        await trio.sleep(BROKER_DOWN_S)  # the outage: links back off while it lasts
        self.broker = _start_broker(self.port)
        restarted = time.perf_counter()
        back: list[float] = []

        async def wait_back(member: swarm.Member) -> None:
            await _until_phase(member, "active")
            back.append(time.perf_counter() - restarted)

        with trio.fail_after(swarm.ROUND_TIMEOUT):
            async with trio.open_nursery() as waiting:
                for member in self.members:
                    waiting.start_soon(wait_back, member)
        return back


async def _until_phase(member: swarm.Member, phase: str) -> None:
    """Return once `member`'s network is in `phase` as status and networks_list show it, the
    authority: its network_phase events are paced, and a phase held past the pace may change
    again untold (docs/protocol.md, Events). Its events of the network say when to look again,
    and it looks every PHASE_LOOK_S besides: the changes may all go untold."""
    network = member.network(MESH_NETWORK)
    while (await network.summary())["phase"] != phase:
        with trio.move_on_after(PHASE_LOOK_S):  # a phase back to the one told last is not told
            await member.wait(lambda event: event.data.get("network") == MESH_NETWORK, 1)


@contextlib.asynccontextmanager
async def _mesh(size: int) -> AsyncIterator[_Mesh]:
    """A broker process and `size` daemons with a fully active mesh, all stopped afterwards."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        mesh = _Mesh(port, _start_broker(port), [])
        try:
            async with trio.open_nursery() as nursery:
                for i in range(size):
                    mesh.members.append(await swarm.start_member(Path(tmp), i, size, nursery))
                config = NetworkConfig(MESH_NETWORK, [mesh.url], auto_approve=True)
                for member in mesh.members:
                    await member.add_network(config)
                with trio.fail_after(swarm.FORM_TIMEOUT):
                    await swarm.all_wait(mesh.members, lambda e: e.kind == "peer_active", size - 1)
                yield mesh
                nursery.cancel_scope.cancel()
        finally:
            mesh.kill()


def _spread(back: list[float]) -> dict[str, float]:
    """Reconnect times' min, max and standard deviation, in seconds."""
    return {
        "min_s": round(min(back), 3),
        "max_s": round(max(back), 3),
        "stdev_s": round(statistics.pstdev(back), 3),
    }


def _spread_text(back: list[float], size: int) -> str:
    figures = _spread(back)
    return (
        f"{len(back)}/{size} daemons active again without a command, "
        f"{figures['min_s']:.2f}-{figures['max_s']:.2f} s after restart "
        f"(spread {figures['max_s'] - figures['min_s']:.2f} s, stdev {figures['stdev_s']:.2f} s)"
    )


@in_trio
async def broker_restart(smoke: bool) -> Verdict:
    """SIGKILL the broker under N connected daemons and restart it on the same port: every
    daemon comes back by itself, at times spread by the link's jitter."""
    name, size = "broker_restart", 4 if smoke else 20
    async with _mesh(size) as mesh:
        mesh.kill()
        await mesh.wait_all("degraded")
        back = await mesh.restart()
    return _verdict(
        name,
        len(back) == size,
        _spread_text(back, size),
        reconnect_s=sorted(round(b, 3) for b in back),
        reconnect=_spread(back),
    )


async def _slow_chunks(payload: Any, context: Any) -> AsyncIterator[int]:
    """The served streaming method: `payload` chunks (forever if null), one per interval."""
    n = 0
    while payload is None or n < payload:
        yield n
        n += 1
        await trio.sleep(STREAM_CHUNK_EVERY_S)


@in_trio
async def broker_restart_under_rpc_stream(smoke: bool) -> Verdict:
    """Kill the broker while a streamed call runs between two daemons: the caller gets a clear
    error code within STREAM_ERROR_BOUND_S; after the restart the peers are active by
    themselves, reconnects spread by jitter, and a new streamed call completes."""
    name, size = "broker_restart_under_rpc_stream", 3 if smoke else 10
    async with _mesh(size) as mesh:
        caller_home, server_home = (m.services.paths for m in mesh.members[:2])
        server_id = mesh.members[1].services.identity.device_id
        async with (
            MeshClient(server_home.socket) as server,
            MeshClient(caller_home.socket) as caller,
        ):
            await server.serve(MESH_NETWORK, STREAM_METHOD, _slow_chunks)
            code, chunks = "(none: the stream went on)", 0
            async with caller.rpc_call_stream(
                MESH_NETWORK, server_id, STREAM_METHOD, None, timeout_ms=600_000
            ) as stream:
                await anext(stream)
                mesh.kill()
                killed = time.perf_counter()
                with trio.move_on_after(STREAM_ERROR_BOUND_S):
                    try:
                        async for _ in stream:
                            chunks += 1
                    except ClientError as error:
                        code = error.code
                error_s = time.perf_counter() - killed
            back = await mesh.restart()
            with trio.fail_after(swarm.ROUND_TIMEOUT):
                await _until_active(caller, MESH_NETWORK, server_id)
                async with caller.rpc_call_stream(
                    MESH_NETWORK, server_id, STREAM_METHOD, STREAM_CHUNKS
                ) as again:
                    after = [chunk async for chunk in again]
    completed = after == list(range(STREAM_CHUNKS))
    ok = code in STREAM_BREAK_CODES and error_s < STREAM_ERROR_BOUND_S
    ok = ok and len(back) == size and completed
    return _verdict(
        name,
        ok,
        f"caller got {code!r} {error_s:.2f} s after the kill ({chunks} more chunks first); "
        f"{_spread_text(back, size)}; a new stream of {STREAM_CHUNKS} chunks "
        f"{'completed' if completed else 'did not complete'}",
        error_code=code,
        error_s=round(error_s, 3),
        chunks_after_kill=chunks,
        reconnect_s=sorted(round(b, 3) for b in back),
        reconnect=_spread(back),
        stream_after_restart=completed,
    )


def _start_broker(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "meshactors", "broker", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resources.wait_port(port, process)
    return process


# -- SIGKILL a sender mid-drain -----------------------------------------------------------------

DRAIN_NETWORK = "drain"
KILL_FRACTION = 0.05  # share of the messages the recipient holds when the sender is killed
INBOX_PAGE = 500  # messages per inbox page read for the verdict


@in_trio
async def sigkill_mid_drain(smoke: bool) -> Verdict:
    """N durable sends queued to an offline peer; it comes back, the sender is SIGKILLed
    mid-drain and restarted: the recipient's inbox holds exactly N distinct messages."""
    name, total = "sigkill_mid_drain", 100 if smoke else 1000
    with (
        tempfile.TemporaryDirectory(prefix="chaos-") as tmp,
        resources.running_broker() as url,
        contextlib.ExitStack() as stack,
    ):
        sender, recipient = Path(tmp) / "a", Path(tmp) / "b"
        ids = {}
        for home in (sender, recipient):
            home.mkdir()
            stack.enter_context(resources.running_daemon(home))
            async with MeshClient(home / "daemon.sock") as client:
                config = {"id": DRAIN_NETWORK, "brokers": [url], "auto_approve": True}
                await client.call("network_add", {"config": config})
                ids[home] = (await client.call("status"))["device_id"]
        async with MeshClient(sender / "daemon.sock") as client:
            await _until_active(client, DRAIN_NETWORK, ids[recipient])
            resources.cli(recipient, "daemon", "down")
            for n in range(total):
                params = {"network": DRAIN_NETWORK, "to": ids[recipient], "message": f"m{n}"}
                await client.call("send", params | {"client_message_id": f"m{n}"})
        began = time.perf_counter()
        resources.cli(recipient, "daemon", "up", "--detach")
        inbox = MeshClient(recipient / "daemon.sock", events_since=0)  # replays from the start
        events = inbox.events()  # before connecting: no replayed event can be missed
        async with inbox:
            arrived: set[str] = set()
            await _arrivals(events, arrived, max(1, int(total * KILL_FRACTION)))
            pid = int((sender / "daemon.pid").read_text().split()[0])
            await _sigkill(pid)
            at_kill = len(arrived)
            resources.cli(sender, "daemon", "up", "--detach")
            await _arrivals(events, arrived, total)
            drain_s = time.perf_counter() - began
            stored = await inbox_all(inbox)
    ids_stored = [m["client_message_id"] for m in stored]
    distinct = set(ids_stored)
    expected = {f"m{n}" for n in range(total)}
    ok = len(stored) == total and distinct == expected and at_kill < total
    return _verdict(
        name,
        ok,
        f"{len(stored)} in the inbox, {len(distinct)} distinct of {total} sent "
        f"(sender SIGKILLed at {at_kill} received); drained in {drain_s:.2f} s",
        messages=total,
        received_at_kill=at_kill,
        inbox=len(stored),
        distinct=len(distinct),
        drain_s=round(drain_s, 3),
    )


async def _until_active(client: MeshClient, network: str, peer: str) -> None:
    """Return once `peer` is active in `network` as `client`'s daemon sees it."""
    with client.events() as events, trio.fail_after(swarm.FORM_TIMEOUT):
        peers = (await client.call("peers_list", {"network": network}))["peers"]
        if any(p["device_id"] == peer and p["status"] == "active" for p in peers):
            return
        async for event in events:
            if event["kind"] == "peer_active" and (event["network"], event["device_id"]) == (
                network,
                peer,
            ):
                return


async def _arrivals(events: EventStream, arrived: set[str], count: int) -> None:
    """Read `message` events into `arrived` (client message ids) until it holds `count`."""
    with trio.fail_after(SCENARIO_TIMEOUT):
        while len(arrived) < count:
            event = await anext(events)
            if event["kind"] == "message":
                arrived.add(event["client_message_id"])


async def _sigkill(pid: int) -> None:
    """SIGKILL `pid` (not our child) and wait until it is gone, via a pidfd."""
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(resources.CLI_TIMEOUT):
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def inbox_all(client: MeshClient) -> list[dict[str, Any]]:
    """Every message in the inbox, page by page."""
    messages: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await client.inbox(limit=INBOX_PAGE, cursor=cursor)
        messages += page["messages"]
        if not page["more"]:  # a page of large messages is cut short before INBOX_PAGE
            return messages
        cursor = page["next_cursor"]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("slow_reader", slow_reader),
        Scenario("read_only_state", read_only_state),
        Scenario("full_state", full_state),
        Scenario("corrupt_database", corrupt_database),
        Scenario("broker_restart", broker_restart),
        Scenario("sigkill_mid_drain", sigkill_mid_drain),
        Scenario("broker_restart_under_rpc_stream", broker_restart_under_rpc_stream),
    ]
}


def run_scenario(scenario: Scenario, smoke: bool) -> Verdict:
    """Run one scenario; an exception (a trio one's overrun too) is a FAIL, pending is SKIP."""
    if scenario.run is None:
        return Verdict(scenario.name, "SKIP", f"needs {scenario.pending}")
    try:
        return scenario.run(smoke)
    except Exception as exc:
        return Verdict(scenario.name, "FAIL", f"{type(exc).__name__}: {exc}")
