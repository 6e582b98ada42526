"""The durable-messages benchmark: committed accepts per second and end-to-end delivery rate of
real daemon processes, each as a ratio to a raw SQLite insert loop measured in the same run.

Run by hand through `scripts/bench_durable` (`--smoke` for a quick check, `--quick` for the
headline figures on a shared machine). It prints one JSON blob on stdout (progress goes to
stderr) and, on a full run, rewrites the "Durable messages" section of docs/performance.md
between DOC_BEGIN and DOC_END, leaving the rest untouched, and sets `durable_accepts_ratio`
and `durable_delivery_msgs_per_s` at the top level of docs/bench-results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio
from nacl.signing import SigningKey

from meshactors.client._frames import FrameDecoder, answer_data, encode_request
from meshactors.daemon.outbox import PEER_WINDOW
from meshactors.store.db import open_database
from meshactors.wire.device_id import device_id_from_public_key
from meshactors.wire.ipc import MAX_CONCURRENT_REQUESTS
from scripts.demo_mesh import Home, broker

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "performance.md"
DOC_BEGIN, DOC_END = "<!-- durable:begin -->", "<!-- durable:end -->"
NET = "bench"
BODY = "m" * 128  # every message's text: 128 bytes, well under the 4 KiB event inlining cap
PIPELINE = MAX_CONCURRENT_REQUESTS  # requests kept in flight per connection (the daemon's cap)
SEND_CONNECTIONS = 4  # connections the delivery phases send over
PHASE_TIMEOUT = 180.0  # seconds any one measured phase or awaited event may take
RECEIVE_CHUNK = 64 * 1024  # bytes asked of a socket per read


@attrs.frozen
class Sizes:
    """How much work each phase does. The two delivery phases together stay well under the
    daemon's 10,000-event log, so a late subscriber still replays every `message` event."""

    baseline_rows: int
    accepts: int  # sends per connection count
    connections: tuple[int, ...]
    online: int  # messages sent while the recipient is online
    offline: int  # messages queued while it is down, then drained when it starts


SMOKE = Sizes(baseline_rows=200, accepts=64, connections=(1, 16), online=40, offline=40)
QUICK = Sizes(baseline_rows=3000, accepts=1500, connections=(16,), online=1500, offline=300)
FULL = Sizes(baseline_rows=30_000, accepts=5000, connections=(1, 4, 16), online=4000, offline=4000)
HEADLINE_CONNECTIONS = "16"  # the accept rate the headline ratio is taken at (issue 19 target)
RESULTS = ROOT / "docs" / "bench-results.json"  # the headline figures go to its top level


class BenchError(Exception):
    """The benchmark could not measure what it meant to (an error answer, a lagged stream)."""


def wall_ms() -> int:
    """Wall-clock milliseconds, the clock of the daemon's event `at_ms`."""
    return time.time_ns() // 1_000_000


def progress(text: str) -> None:
    """A progress line on stderr, so stdout carries only the JSON blob."""
    print(f"== {text}", file=sys.stderr, flush=True)


def sqlite_baseline(directory: Path, rows: int) -> float:
    """Rows/s of a raw sqlite3 loop, one outbox-shaped INSERT and COMMIT per row, in a file
    opened like the daemon's store (WAL, synchronous=NORMAL, the same schema and indexes)."""
    conn = open_database(directory / "baseline.db")
    recipient = ghost_device_id()
    began = time.perf_counter()
    for i in range(rows):
        now = wall_ms()
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO outbox (id, network, client_message_id, request_fingerprint,"
            " destination_kind, destination_ref, priority, message, meta_json, reply_to_id,"
            " status, created_at, updated_at) VALUES (?, ?, ?, ?, 'peer', ?, 'next', ?, 'null',"
            " NULL, 'pending', ?, ?)",
            (f"{i:026d}", NET, f"k{i:025d}", os.urandom(32), recipient, BODY, now, now),
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - began
    conn.close()
    return rows / elapsed


def socket_of(home: Home) -> Path:
    """The control socket of the daemon in `home`."""
    return home.path / "daemon.sock"


def ghost_device_id() -> str:
    """The id of a fresh key no daemon runs: sends to it are accepted and never attempted."""
    return device_id_from_public_key(bytes(SigningKey.generate().verify_key))


@attrs.define(eq=False)
class Lines:
    """One raw JSON-lines connection to a daemon's socket (no client library in the way)."""

    stream: trio.SocketStream
    decoder: FrameDecoder = attrs.field(factory=FrameDecoder)
    ready: list[dict[str, Any]] = attrs.field(factory=list)

    async def send(self, request_id: int, op: str, **params: Any) -> None:
        """Write one request line."""
        await self.send_many(request_id, 1, op, **params)

    async def send_many(self, first_id: int, count: int, op: str, **params: Any) -> None:
        """Write `count` requests with ids from `first_id` in one write, as a pipelining
        client writes what its window has room for."""
        lines = [encode_request(first_id + n, op, params) for n in range(count)]
        await self.stream.send_all(b"".join(lines))

    async def frame(self) -> dict[str, Any]:
        """The next frame (answer or event) from the daemon."""
        while not self.ready:
            chunk = await self.stream.receive_some(RECEIVE_CHUNK)
            if not chunk:
                raise BenchError("the daemon closed the connection")
            self.ready = self.decoder.feed(chunk)
        return self.ready.pop(0)

    async def subscribe(self, since: int | None) -> int:
        """`events_subscribe` (replaying after `since`); returns the newest logged event id."""
        await self.send(0, "events_subscribe", **({} if since is None else {"since": since}))
        while not is_answer(frame := await self.frame()):
            pass  # none can come before the answer; be lenient anyway
        return int(answer_data(frame)["last_event_id"])

    async def event(self) -> dict[str, Any]:
        """The next event frame; BenchError if the daemon says some were skipped."""
        while is_answer(frame := await self.frame()):
            pass
        if frame["kind"] in ("lagged", "events_gap"):
            raise BenchError(f"the event stream lost events: {frame}")
        return frame


def is_answer(frame: dict[str, Any]) -> bool:
    """Answers carry `ok`. (Not the client's `is_event`, which takes `message_delivered`, whose
    data has an `id`, for an answer.)"""
    return "ok" in frame


@asynccontextmanager
async def connected(socket: Path) -> AsyncIterator[Lines]:
    """A Lines connection for the block."""
    stream = await trio.open_unix_socket(str(socket))
    async with stream:
        yield Lines(stream)


@attrs.frozen
class Burst:
    """A timed run of sends: how many, when the first was written, when the first answer came
    (wall clock, to compare with event `at_ms`) and when the last did."""

    count: int
    began: float  # perf_counter
    first_answer_ms: int  # wall clock
    ended: float  # perf_counter

    @property
    def per_s(self) -> float:
        """Committed accepts per second over the run."""
        return self.count / (self.ended - self.began)


async def send_burst(socket: Path, to: str, count: int, connections: int) -> Burst:
    """`count` sends split over `connections` connections, each pipelined up to PIPELINE
    requests in flight (the requests it has room for go in one write); every answer must be
    a committed accept."""
    first_answer: list[int] = []

    async def one_connection(share: int) -> None:
        async with connected(socket) as lines:
            window = trio.Semaphore(PIPELINE)

            async def write() -> None:
                sent = 0
                while sent < share:
                    await window.acquire()
                    room = 1  # and every other place free now, written together
                    while sent + room < share and _took(window):
                        room += 1
                    await lines.send_many(sent + 1, room, "send", network=NET, to=to, message=BODY)
                    sent += room

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                for _ in range(share):
                    data = answer_data(await lines.frame())
                    if data["outcome"] != "accepted":
                        raise BenchError(f"a send was not accepted: {data}")
                    if not first_answer:
                        first_answer.append(wall_ms())
                    window.release()

    shares = [count // connections + (i < count % connections) for i in range(connections)]
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for share in shares:
            nursery.start_soon(one_connection, share)
    return Burst(count, began, first_answer[0], time.perf_counter())


def _took(window: trio.Semaphore) -> bool:
    """Take a free place of `window` if there is one, without waiting."""
    try:
        window.acquire_nowait()
    except trio.WouldBlock:
        return False
    return True


async def event_times(lines: Lines, kind: str, count: int, **match: str) -> tuple[int, int]:
    """Read a subscribed connection until `count` events of `kind` whose fields equal `match`;
    the `at_ms` of the first and the last (when the daemon logged them)."""
    stamps: list[int] = []
    while len(stamps) < count:
        event = await lines.event()
        if event["kind"] == kind and all(event.get(k) == v for k, v in match.items()):
            stamps.append(int(event["at_ms"]))
    return stamps[0], stamps[-1]


async def wait_event(
    socket: Path,
    kind: str,
    *,
    since: int | None,
    then: Callable[[], object] | None = None,
    **match: str,
) -> None:
    """Subscribe, run `then` in a thread (the action that causes the event), and wait for an
    event of `kind` whose fields equal `match`."""
    with trio.fail_after(PHASE_TIMEOUT):
        async with connected(socket) as lines:
            await lines.subscribe(since)
            if then is not None:
                await trio.to_thread.run_sync(then)
            await event_times(lines, kind, 1, **match)


async def accepts_phase(socket: Path, sizes: Sizes) -> dict[int, float]:
    """Committed accepts/s to a device that never comes, per connection count."""
    rates = {}
    for connections in sizes.connections:
        with trio.fail_after(PHASE_TIMEOUT):
            burst = await send_burst(socket, ghost_device_id(), sizes.accepts, connections)
        rates[connections] = burst.per_s
    return rates


async def online_phase(a: Home, b: Home, to: str, count: int) -> dict[str, float]:
    """Send `count` messages to an active peer, timed from the first accept to the last
    `message` event on the recipient and to the last `message_delivered` (ack) on the sender.
    Waiting for every ack also leaves nothing in flight for the offline phase."""
    with trio.fail_after(PHASE_TIMEOUT):
        async with (
            connected(socket_of(b)) as inbox,
            connected(socket_of(a)) as acks,
        ):
            await inbox.subscribe(None)
            await acks.subscribe(None)
            last: dict[str, int] = {}

            async def last_of(lines: Lines, kind: str, **match: str) -> None:
                _, last[kind] = await event_times(lines, kind, count, **match)

            async with trio.open_nursery() as nursery:  # read both streams as events come
                nursery.start_soon(partial(last_of, inbox, "message", network=NET))
                nursery.start_soon(partial(last_of, acks, "message_delivered", recipient=to))
                burst = await send_burst(socket_of(a), to, count, SEND_CONNECTIONS)
    return {
        "accepts_per_s": burst.per_s,
        "delivered_per_s": count / max(last["message"] - burst.first_answer_ms, 1) * 1000,
        "acked_per_s": count / max(last["message_delivered"] - burst.first_answer_ms, 1) * 1000,
    }


async def offline_phase(a: Home, b: Home, to: str, count: int) -> tuple[dict[str, float], float]:
    """Queue `count` messages while the peer is down, start it, and time the drain; the rates
    and the seconds from its start to its first message."""
    b_socket = socket_of(b)
    async with connected(b_socket) as lines:
        b_newest = await lines.subscribe(None)
    await wait_event(
        socket_of(a),
        "peer_left",
        since=None,
        then=partial(b.run, "daemon", "down", show=False),
        device_id=to,
    )
    with trio.fail_after(PHASE_TIMEOUT):
        burst = await send_burst(socket_of(a), to, count, SEND_CONNECTIONS)
        started_ms = wall_ms()
        await trio.to_thread.run_sync(partial(b.run, "daemon", "up", "--detach", show=False))
        async with connected(b_socket) as watcher:
            await watcher.subscribe(b_newest)  # replays what arrived before we subscribed
            first_ms, last_ms = await event_times(watcher, "message", count, network=NET)
    rates = {
        "accepts_per_s": burst.per_s,
        "drain_per_s": count / max(last_ms - first_ms, 1) * 1000,
        "start_to_last_per_s": count / max(last_ms - started_ms, 1) * 1000,
    }
    return rates, (first_ms - started_ms) / 1000


def daemon_up(stack: ExitStack, home: Home, url: str) -> str:
    """Start a daemon in `home`, join it to NET through `url`; its device id. The stack stops
    it (`daemon down` is a no-op for one already down)."""
    home.path.mkdir()
    home.run("daemon", "up", "--detach", show=False)
    stack.callback(home.run, "daemon", "down", show=False)
    home.run("network", "add", NET, "--broker", url, show=False)
    return str(home.json("identity", "show")["device_id"])


def measure(sizes: Sizes) -> dict[str, Any]:
    """Run every phase against real processes in a temporary directory; the figures."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-durable-")))
        progress(f"baseline: {sizes.baseline_rows} raw SQLite inserts, one commit each")
        baseline = sqlite_baseline(workdir, sizes.baseline_rows)
        url = stack.enter_context(broker(workdir))

        progress(f"accepts: {sizes.accepts} sends over {sizes.connections} connections")
        solo = Home("solo", workdir / "solo")
        daemon_up(stack, solo, url)
        accepts = trio.run(accepts_phase, socket_of(solo), sizes)
        solo.run("daemon", "down", show=False)

        progress("two daemons, approved both ways")
        a, b = Home("a", workdir / "a"), Home("b", workdir / "b")
        a_id, b_id = daemon_up(stack, a, url), daemon_up(stack, b, url)
        a.run("roster", "approve", "-n", NET, b_id, show=False)
        b.run("roster", "approve", "-n", NET, a_id, show=False)
        for home, peer in ((a, b_id), (b, a_id)):
            trio.run(partial(wait_event, socket_of(home), "peer_active", since=0, device_id=peer))

        progress(f"delivery to an online peer: {sizes.online} messages")
        online = trio.run(online_phase, a, b, b_id, sizes.online)
        progress(f"queued for an offline peer, drained when it starts: {sizes.offline} messages")
        offline, first_message_s = trio.run(offline_phase, a, b, b_id, sizes.offline)
    return {
        "sizes": attrs.asdict(sizes),
        "baseline_rows_per_s": baseline,
        "accepts_per_s": {str(n): rate for n, rate in accepts.items()},
        "online": online,
        "offline": offline,
        "drain_first_message_s": first_message_s,
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    return {
        "nproc": os.cpu_count(),
        "cpu": models[0] if models else platform.processor() or "unknown",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "date": datetime.date.today().isoformat(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # before the run: the machine is shared
    }


def with_ratios(figures: dict[str, Any]) -> dict[str, Any]:
    """The figures with every rate rounded and paired with its ratio to the baseline."""
    baseline = figures["baseline_rows_per_s"]

    def rated(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: rated(item) for key, item in value.items()}
        return {"value": round(value), "ratio": round(value / baseline, 3)}

    rates = {key: figures[key] for key in ("accepts_per_s", "online", "offline")}
    return {
        "baseline_rows_per_s": round(baseline),
        **rated(rates),
        "drain_first_message_s": round(figures["drain_first_message_s"], 3),
        "sizes": figures["sizes"],
    }


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The two figures issue 19 sets targets for, as docs/bench-results.json carries them at
    its top level: accepts/s at 16 connections over the raw SQLite loop of the same run
    (target at least 0.5), and delivery to an online peer in messages/s (at least 5,000)."""
    return {
        "durable_accepts_ratio": report["accepts_per_s"][HEADLINE_CONNECTIONS]["ratio"],
        "durable_delivery_msgs_per_s": report["online"]["delivered_per_s"]["value"],
    }


def write_headline(path: Path, figures: dict[str, float]) -> None:
    """Set the headline figures at the top level of the results file, keeping every other
    key (other benchmarks write theirs to the same file)."""
    results = json.loads(path.read_text()) if path.exists() else {}
    if not isinstance(results, dict):
        raise BenchError(f"{path} does not hold a JSON object; left untouched")
    path.write_text(json.dumps({**results, **figures}, indent=2) + "\n")


def render(report: dict[str, Any]) -> str:
    """The "Durable messages" section of docs/performance.md, markers included."""
    m, sizes = report["machine"], report["sizes"]
    rows = [("raw SQLite INSERT + COMMIT (the baseline)", report["baseline_rows_per_s"], 1.0)]
    rows += [
        (f"committed accepts, {n} connection{'s' if n != '1' else ''}", f["value"], f["ratio"])
        for n, f in report["accepts_per_s"].items()
    ]
    online, offline = report["online"], report["offline"]
    rows += [
        ("accepts while delivering to an online peer", *_pair(online["accepts_per_s"])),
        ("delivery, first accept → last `message` on the peer", *_pair(online["delivered_per_s"])),
        ("delivery, first accept → last ack on the sender", *_pair(online["acked_per_s"])),
        ("accepts while the peer is offline", *_pair(offline["accepts_per_s"])),
        ("drain after the peer starts, first → last `message`", *_pair(offline["drain_per_s"])),
        ("drain, peer's `daemon up` → last `message`", *_pair(offline["start_to_last_per_s"])),
    ]
    table = "\n".join(f"| {name} | {value:,} /s | {ratio:.3f} |" for name, value, ratio in rows)
    head = headline(report)
    return f"""{DOC_BEGIN}
## Durable messages

Measured by `scripts/bench_durable` on {m["date"]}: {m["nproc"]} CPUs ({m["cpu"]}),
Python {m["python"]}, SQLite {m["sqlite"]}, load average {m["load_avg_1m"]} when it began;
the benchmark client, the broker and the daemons share those CPUs. Every rate is divided by
the baseline measured in the same run: a raw `sqlite3` loop doing one outbox-shaped `INSERT`
and `COMMIT` per row in a file opened like the daemon's store (WAL, `synchronous=NORMAL`,
the same schema), {sizes["baseline_rows"]} rows.

| figure | rate | ratio to the baseline |
|---|---|---|
{table}

Headline figures of this run (a full run of this script, or `scripts/bench`, writes its
own to the top level of docs/bench-results.json): `durable_accepts_ratio`
{head["durable_accepts_ratio"]} (accepts at {HEADLINE_CONNECTIONS} connections ÷ the baseline;
target ≥ 0.5), `durable_delivery_msgs_per_s` {head["durable_delivery_msgs_per_s"]:,} (the
delivery row above, first accept → last `message`; target ≥ 5,000).

- An accept is one `send` answered by the daemon once its writes (look-up, outbox row,
  delivery row) are committed; the sends one connection has queued go to the store as one
  call, and calls that queue together commit in one transaction. Raw JSON lines over the
  Unix socket, each connection pipelined up to {PIPELINE} requests in flight (the requests
  it has room for go in one write); {sizes["accepts"]} sends per connection count, to a
  device id that never comes online (nothing is delivered). The store runs one call at a
  time in its worker thread, so more connections add accepts only by letting more of them
  share a commit.
- Delivery: a broker and two approved daemons as processes; {sizes["online"]} messages
  from A to B over {SEND_CONNECTIONS} connections, B's events subscribed before the first send.
  End times are the daemons' event `at_ms`. A claims a send to B in its accept's own
  transaction while B has a place in its window (`PEER_WINDOW`, {PEER_WINDOW} in flight), sends
  what it claimed together in `msg_batch` frames, and B acks each stored batch in one
  `msg_acks` frame.
- Drain: {sizes["offline"]} messages accepted while B is down, then `meshactors daemon up`
  for B; B stored the first of them {report["drain_first_message_s"]:.2f} s after that command
  began (daemon start, broker link, handshake).
{DOC_END}"""


def _pair(figure: dict[str, Any]) -> tuple[int, float]:
    return figure["value"], figure["ratio"]


def update_doc(text: str, section: str, markers: tuple[str, str] = (DOC_BEGIN, DOC_END)) -> str:
    """`text` with everything from the begin to the end marker replaced by `section`, or
    `section` appended when the markers are absent; a half-marked file is refused, never
    clobbered."""
    begin_marker, end_marker = markers
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 and end < 0:
        head = text.rstrip("\n")
        return f"{head}\n\n{section}\n" if head else f"# Performance\n\n{section}\n"
    if begin < 0 or end < begin:
        raise BenchError(f"{begin_marker} and {end_marker} must both appear, in that order")
    return text[:begin] + section + text[end + len(end_marker) :]


def main(argv: list[str] | None = None) -> None:
    """Measure, print the JSON blob, and write the doc section (a full run, or --doc)."""
    parser = argparse.ArgumentParser(prog="scripts/bench_durable", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; writes no doc")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the headline figures only, at a tenth of the full sizes; writes nothing by default",
    )
    parser.add_argument("--doc", type=Path, default=None, help=f"the file to update ({DOC})")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"the results file whose headline keys to set ({RESULTS}; full runs by default)",
    )
    parser.add_argument(
        "--history", action="store_true", help="only the cost with 0 and 1,000,000 rows of history"
    )
    args = parser.parse_args(argv)
    if args.history:
        from scripts.benchlib import durable_history  # it imports this module's helpers

        durable_history.main(args.smoke, args.doc if args.doc is not None or args.smoke else DOC)
        return
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    report = {"machine": machine(), **with_ratios(measure(sizes))}
    report.update(headline(report))
    print(json.dumps(report, indent=2))
    full = sizes is FULL
    doc: Path | None = args.doc if args.doc is not None or not full else DOC
    if doc is not None:
        old = doc.read_text() if doc.exists() else ""
        doc.write_text(update_doc(old, render(report)))
        progress(f"wrote {doc}")
    results: Path | None = args.results if args.results is not None or not full else RESULTS
    if results is not None:
        write_headline(results, headline(report))
        progress(f"wrote the headline figures to {results}")


if __name__ == "__main__":
    main()
