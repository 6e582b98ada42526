"""The durable-message ops on one real daemon: the lookup table through `send`, concurrent
accepts of one key, validation, outbox listing, abort by the CLI and HTTP, and inbox paging."""

from __future__ import annotations

import collections
import functools
import json
import sqlite3
from typing import Any

import nacl.signing
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from meshactors.clock import wall_ms
from meshactors.daemon import outbox as outbox_module
from meshactors.daemon.services import Services
from meshactors.event_hub import HUB_INBOX
from meshactors.network.message_frames import MAX_MESSAGE_BYTES, MAX_META_BYTES, MAX_REF_CHARS, Msg
from meshactors.ops.message_ops import OUTBOX_CURSOR, _outbox_cursor
from meshactors.store import inbox as inbox_db
from meshactors.store import outbox as outbox_db
from meshactors.store.events import Event
from meshactors.wire.device_id import device_id_from_public_key
from meshactors.wire.ipc import MAX_PAGE, MAX_PAGE_DATA_BYTES, ErrorCode, OpError
from meshactors.wire.peer import MAX_PEER_FRAME_BYTES, encode_frame
from tests.daemon_tree import Connect
from tests.fuzz.conftest import examples_of
from tests.fuzz.strategies import hostile_json, odd_text
from tests.network.test_binary_streams import until
from tests.store.test_outbox import request as outbox_request
from tests.support import Home

NET = "n"
ABORTED_ROWS = 2 * HUB_INBOX // outbox_db.MAX_RECIPIENTS + 1  # deliveries past the hub's inbox
ABORT_WAIT = 30.0  # seconds for the aborts' answers and their events
SLOW_TELL_ABORTS = outbox_module.TELL_INBOX + 2  # one told, a full queue, one waiting
SLOW_TELL_TIMEOUT = 0.05  # the outbox's STORE_CALL_TIMEOUT here: aborts' waits run out
LARGE_MESSAGE_CHARS = 100_000  # an inbox message about a tenth of a page's bytes
WIDE_ROWS = 20  # outbox rows to 1,000 recipients: some 3 MB listed, several pages


def new_device() -> str:
    return device_id_from_public_key(bytes(nacl.signing.SigningKey.generate().verify_key))


async def joined(connect: Any) -> Any:
    client = await connect()
    answer = await client.call(
        "network_add", config={"id": NET, "brokers": ["ws://127.0.0.1:9/v1"]}
    )
    assert answer["ok"], answer
    return client


async def test_send_answers_by_the_lookup_table(connect: Any, daemon: Services) -> None:
    client = await joined(connect)
    peer = new_device()
    send = functools.partial(client.call, "send", network=NET, to=peer, client_message_id="k1")
    first = await send(message="hi")
    assert first["data"]["outcome"] == "accepted"
    assert first["data"]["status"] == "pending"
    again = await send(message="hi")
    assert again["data"]["outcome"] == "accepted"  # pending + match
    assert again["data"]["id"] == first["data"]["id"]
    clash = await send(message="changed")
    assert clash["error"]["code"] == "conflict"
    assert clash["error"]["reason"] == "pending_fingerprint_mismatch"
    assert len(clash["error"]["fingerprint_prefix"]) == 16

    def finish(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE deliveries SET status = 'done'")
        conn.execute("UPDATE outbox SET status = 'done'")

    await daemon.store.call(finish, what="test: mark done")
    duplicate = await send(message="hi")
    assert duplicate["data"]["outcome"] == "duplicate"
    assert duplicate["data"]["id"] == first["data"]["id"]
    late_clash = await send(message="changed")
    assert late_clash["error"]["reason"] == "done_fingerprint_mismatch"


async def test_one_key_sent_concurrently_from_many_connections_makes_one_row(
    connect: Any,
) -> None:
    await joined(connect)
    peer = new_device()
    clients = [await connect() for _ in range(8)]
    answers: list[dict[str, Any]] = []

    async def send(client: Any) -> None:
        answers.append(
            await client.call("send", network=NET, to=peer, message="x", client_message_id="same")
        )

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(send, client)
    assert {a["data"]["outcome"] for a in answers} == {"accepted"}
    assert len({a["data"]["id"] for a in answers}) == 1
    rows = (await clients[0].call("outbox_list", limit=50))["data"]["rows"]
    assert len(rows) == 1


async def test_bad_sends_are_refused_with_clear_codes(connect: Any, daemon: Services) -> None:
    client = await joined(connect)
    peer = new_device()
    cases = [
        ({"network": "nope", "to": peer, "message": "x"}, "no_such_network"),
        ({"network": NET, "to": "bob", "message": "x"}, "invalid_params"),
        ({"network": NET, "to": daemon.identity.device_id, "message": "x"}, "invalid_params"),
        ({"network": NET, "to": peer, "message": 5}, "invalid_params"),
        ({"network": NET, "to": peer, "message": "x", "priority": "urgent"}, "invalid_params"),
        ({"network": NET, "to": peer, "message": "x" * 200_000}, "payload_too_large"),
        ({"network": NET, "to": "*", "message": "x"}, "no_recipients"),
        ({"network": NET, "to": "@", "message": "x"}, "invalid_params"),
    ]
    for params, code in cases:
        answer = await client.call("send", **params)
        assert answer["error"]["code"] == code, (params, answer)


async def test_outbox_list_filters_and_requeue_refuses_what_it_cannot(
    connect: Any, daemon: Services
) -> None:
    client = await joined(connect)
    peer = new_device()
    sent = (await client.call("send", network=NET, to=peer, message="x"))["data"]
    pending = (await client.call("outbox_list", status="pending", limit=10))["data"]["rows"]
    assert [row["id"] for row in pending] == [sent["id"]]
    assert (await client.call("outbox_list", status="done", limit=10))["data"]["rows"] == []
    bad = await client.call("outbox_list", status="lost", limit=10)
    assert bad["error"]["code"] == "invalid_params"
    missing = await client.call("outbox_requeue", outbox_id="nope")
    assert missing["error"]["code"] == "not_found"
    still_tried = await client.call("outbox_requeue", outbox_id=sent["id"])
    assert still_tried["error"]["code"] == "not_requeueable"  # pending: may yet arrive
    await daemon.store.call(
        functools.partial(
            outbox_db.mark_failed,
            outbox_id=sent["id"],
            recipient=peer,
            error_code="invalid_message",
            permanent=True,
            now_ms=wall_ms(),  # recent: the retention pass beside keeps it
        ),
        what="test: the delivery dies",
    )
    requeued = (await client.call("outbox_requeue", outbox_id=sent["id"]))["data"]
    assert requeued["superseded"] == sent["id"]
    again = await client.call("outbox_requeue", outbox_id=sent["id"])
    assert again["error"]["code"] == "not_requeueable"


async def test_outbox_list_pages_past_max_page_by_cursor(connect: Any, daemon: Services) -> None:
    client = await connect()

    def fill(conn: sqlite3.Connection) -> list[str]:
        now = wall_ms()  # not yet expired: the outbox's TTL sweep, running beside, leaves them
        return [
            outbox_db.accept(conn, **outbox_request(client_message_id=f"pg-{i}", now_ms=now + i)).id
            for i in range(MAX_PAGE + 100)
        ]

    newest_first = list(reversed(await daemon.store.call(fill, what="test: 600 sends")))
    for limit in (MAX_PAGE, 7):
        seen: list[str] = []
        page = (await client.call("outbox_list", limit=limit))["data"]
        while page["next_cursor"] is not None:
            seen += [row["id"] for row in page["rows"]]
            page = await client.call("outbox_list", limit=limit, cursor=page["next_cursor"])
            page = page["data"]
        seen += [row["id"] for row in page["rows"]]
        assert seen == newest_first
    full = (await client.call("outbox_list", limit=MAX_PAGE, status="pending"))["data"]
    rest = await client.call(
        "outbox_list", limit=MAX_PAGE, status="pending", cursor=full["next_cursor"]
    )
    assert len(rest["data"]["rows"]) == 100
    assert rest["data"]["next_cursor"] is None  # neither full nor cut by bytes: the end
    newest = newest_first[0]
    for cursor in ("", "abc", f"1.{newest}x", f"\u0661.{newest}", f"{2**63}.{newest}", newest):
        bad = await client.call("outbox_list", cursor=cursor)
        assert bad["error"]["code"] == "invalid_params", cursor
        assert "not an outbox cursor" in bad["error"]["message"]


async def test_a_purge_answers_how_many_undelivered_sends_it_dropped(
    connect: Any, daemon: Services
) -> None:
    client = await joined(connect)
    peer = new_device()
    sent = [(await client.call("send", network=NET, to=peer, message=m))["data"] for m in "abc"]
    await daemon.store.call(
        functools.partial(
            outbox_db.mark_failed,
            outbox_id=sent[0]["id"],
            recipient=peer,
            error_code="rejected",
            permanent=True,
            now_ms=wall_ms(),  # recent: the retention pass beside keeps it
        ),
        what="test: one send dies",
    )
    removed = await client.call("network_remove", network=NET, purge=True)
    assert removed["data"]["purged_unsent"] == 2  # the dead one was told of by message_dead
    told = (await daemon.events.replay(0, 1000)).events
    assert [e.data["purged_unsent"] for e in told if e.kind == "network_removed"] == [2]
    assert (await client.call("outbox_list"))["data"]["rows"] == []
    rejoined = await joined(connect)
    await rejoined.call("send", network=NET, to=peer, message="kept")
    kept = await rejoined.call("network_remove", network=NET)
    assert kept["data"]["purged_unsent"] == 0  # without purge the send stays


async def test_inspects_pending_follows_an_abort_and_a_purge_at_once(
    connect: Any, daemon: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "IDLE_POLL_S", 3600.0)  # no idle pass recounts them
    client = await joined(connect)
    peer = new_device()
    sent = [(await client.call("send", network=NET, to=peer, message=m))["data"] for m in "ab"]

    async def pending(count: int) -> bool:
        return daemon.outbox.figures()["pending"] == count

    await until(functools.partial(pending, 2))  # a send pokes the outbox: counted at once
    await client.call("outbox_abort", outbox_id=sent[0]["id"])
    await until(functools.partial(pending, 1))
    await client.call("network_remove", network=NET, purge=True)
    await until(functools.partial(pending, 0))


async def test_outbox_abort_by_the_cli_and_by_http(
    connect: Any, daemon: Services, http: Connect
) -> None:
    client = await joined(connect)
    peer = new_device()
    by_cli, by_http = [
        (await client.call("send", network=NET, to=peer, message=text))["data"]["id"]
        for text in ("cli", "http")
    ]
    home = Home(daemon.paths.socket.parent)
    cli = functools.partial(home.cli, check=False)
    aborted = await trio.to_thread.run_sync(cli, "outbox", "abort", by_cli)
    assert (aborted.returncode, aborted.stdout) == (0, f"aborted {by_cli} (0/1 delivered)\n")
    again = await trio.to_thread.run_sync(cli, "outbox", "abort", by_cli)
    assert again.returncode == 7  # refused
    assert "conflict" in again.stderr and "is aborted" in again.stderr, again.stderr
    missing = await trio.to_thread.run_sync(cli, "outbox", "abort", "nope")
    assert missing.returncode == 6  # not found

    body = json.dumps({"outbox_id": by_http}).encode()
    response = await (await http()).request("POST", "/v1/outbox/abort", body)
    assert response.status == 200
    row = response.json()["data"]["row"]
    assert (row["id"], row["status"]) == (by_http, "aborted")
    shown = (await client.call("outbox_list", status="aborted", limit=10))["data"]["rows"]
    assert row in shown
    conflict = await (await http()).request("POST", "/v1/outbox/abort", body)
    assert (conflict.status, conflict.code) == (409, "conflict")


async def test_pipelined_aborts_of_many_recipients_tell_each_delivery_dead(
    connect: Any, daemon: Services
) -> None:
    # Their deliveries are twice what the event hub's inbox holds: aborts answered together
    # (the store runs calls that queue together in one trip) must not flood it.
    client = await joined(connect)
    recipients = [f"dev-{n}" for n in range(outbox_db.MAX_RECIPIENTS)]
    rows = []
    for n in range(ABORTED_ROWS):
        accept = functools.partial(
            outbox_db.accept,
            **outbox_request(
                network=NET, recipients=recipients, client_message_id=f"many-{n}", now_ms=wall_ms()
            ),
        )
        rows.append((await daemon.store.call(accept, what="test: a send to many")).id)
    told = len(rows) * len(recipients)
    watch, _ = await daemon.events.subscribe(told + 1)
    for row_id in rows:
        await client.send("outbox_abort", outbox_id=row_id)
    with trio.fail_after(ABORT_WAIT):
        answers = [await client.frame() for _ in rows]
        assert all(answer["ok"] for answer in answers), answers
        dead: collections.Counter[str] = collections.Counter()
        while sum(dead.values()) < told:
            assert daemon.events.figures()["dropped"] == 0
            event = await watch.receive()
            assert isinstance(event, Event)
            if event.kind == "message_dead":
                assert event.data["error"] == outbox_db.ABORTED
                dead[event.data["id"]] += 1
    assert dead == dict.fromkeys(rows, len(recipients))
    assert daemon.events.figures()["dropped"] == 0


async def test_aborts_the_outbox_is_slow_to_tell_are_answered_ok_and_all_told(
    connect: Any, daemon: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The outbox is held telling another batch: one abort's deliveries wait to be told, the
    # queue behind it fills, and one more abort waits for a place past its deadline.
    client = await joined(connect)
    rows = [
        (await client.call("send", network=NET, to=new_device(), message="x"))["data"]["id"]
        for _ in range(SLOW_TELL_ABORTS)
    ]
    watch, _ = await daemon.events.subscribe(SLOW_TELL_ABORTS + 1)
    monkeypatch.setattr(outbox_module, "STORE_CALL_TIMEOUT", SLOW_TELL_TIMEOUT)
    async with daemon.outbox._telling:
        for row_id in rows:
            await client.send("outbox_abort", outbox_id=row_id)
        with trio.fail_after(ABORT_WAIT):
            first = await client.frame()  # past the shortened deadline, its events untold
    with trio.fail_after(ABORT_WAIT):
        answers = [first, *[await client.frame() for _ in rows[1:]]]
        assert all(answer["ok"] for answer in answers), answers
        dead = set()
        while len(dead) < len(rows):
            event = await watch.receive()
            assert isinstance(event, Event)
            if event.kind == "message_dead":
                dead.add(event.data["id"])
    assert dead == set(rows)
    shown = (await client.call("outbox_list", status="aborted", limit=MAX_PAGE))["data"]["rows"]
    assert {row["id"] for row in shown} == set(rows)


async def test_outbox_abort_refuses_bad_ids_with_a_clear_code(connect: Any) -> None:
    client = await joined(connect)
    texts = odd_text | st.integers(1, 200_000).map(lambda n: "0" * n)
    drawn = await examples_of(
        st.integers()
        | st.integers(max_value=-1)
        | st.integers(min_value=2**64)
        | hostile_json
        | texts
    )
    for outbox_id in [*drawn, None, True, -1, 2**200, 1.5, [], {}]:
        answer = await client.call("outbox_abort", outbox_id=outbox_id)
        code = answer["error"]["code"]
        assert code in ("invalid_params", "not_found"), (outbox_id, answer)
        if not isinstance(outbox_id, str):
            assert code == "invalid_params", (outbox_id, answer)
        assert len(answer["error"]["message"]) < 1000  # the id is cut short, not echoed whole
    for params in ({}, {"outbox_id": "x", "extra": 1}):
        answer = await client.call("outbox_abort", **params)
        assert answer["error"]["code"] == "invalid_params", answer


@given(st.text(max_size=60) | st.from_regex(OUTBOX_CURSOR, fullmatch=True))
def test_an_outbox_cursor_is_parsed_or_refused_as_invalid_params(text: str) -> None:
    try:
        parsed = _outbox_cursor(text)
    except OpError as error:
        assert error.code is ErrorCode.INVALID_PARAMS
    else:
        created_at, _, row_id = text.partition(".")
        assert parsed == (int(created_at), row_id)


async def test_inbox_pages_by_cursor_and_filters_by_sender(connect: Any, daemon: Services) -> None:
    client = await connect()
    senders = [new_device(), new_device()]
    base = wall_ms()  # recent: the retention pass beside keeps them
    for i in range(5):
        await daemon.store.call(
            functools.partial(
                inbox_db.store_message,
                network=NET,
                sender=senders[i % 2],
                client_message_id=f"c{i}",
                message=f"m{i}",
                meta=None,
                priority="next",
                reply_to_id=None,
                sent_at=i,
                now_ms=base + i,
            ),
            what="test: store",
        )
    first = (await client.call("inbox", limit=3))["data"]
    assert [m["message"] for m in first["messages"]] == ["m0", "m1", "m2"]
    rest = (await client.call("inbox", limit=3, cursor=first["next_cursor"]))["data"]
    assert [m["message"] for m in rest["messages"]] == ["m3", "m4"]
    mine = (await client.call("inbox", limit=10, **{"from": senders[1]}))["data"]
    assert [m["message"] for m in mine["messages"]] == ["m1", "m3"]
    recent = (await client.call("inbox", limit=10, since=base + 3))["data"]
    assert [m["message"] for m in recent["messages"]] == ["m3", "m4"]
    for cursor in ("abc", "", "-1", "\u00b2", "1\u0663", "99999999999999999999"):
        bad = await client.call("inbox", limit=10, cursor=cursor)
        assert bad["error"]["code"] == "invalid_params", cursor


async def test_an_inbox_page_of_large_messages_is_cut_by_bytes_and_its_cursor_goes_on(
    connect: Any, daemon: Services
) -> None:
    client = await connect()
    # a page holds about ten of these; one past the bound comes alone, small ones end it
    sizes = [LARGE_MESSAGE_CHARS] * 25 + [2 * MAX_PAGE_DATA_BYTES] + [10] * 3

    def fill(conn: sqlite3.Connection) -> list[int]:
        base = wall_ms()  # recent: the retention pass beside keeps them
        return [
            inbox_db.store_message(
                conn,
                network=NET,
                sender="dev-big",
                client_message_id=f"big-{i}",
                message="x" * size,
                meta=None,
                priority="next",
                reply_to_id=None,
                sent_at=i,
                now_ms=base + i,
            )[0].seq
            for i, size in enumerate(sizes)
        ]

    stored = await daemon.store.call(fill, what="test: large messages")
    cli = functools.partial(Home(daemon.paths.socket.parent).cli, "inbox", "--limit", "500")
    first = (await trio.to_thread.run_sync(cli)).stdout.splitlines()
    assert len(first) < len(stored) and first[-1].startswith("(next page: --cursor ")
    seen: list[int] = []
    cut = 0
    page = (await client.call("inbox", limit=MAX_PAGE))["data"]
    while True:
        assert page["messages"]  # a row always fits: paging moves on
        largest = max(len(json.dumps(m)) for m in page["messages"])
        assert len(json.dumps(page)) <= MAX_PAGE_DATA_BYTES + largest
        seen += [m["seq"] for m in page["messages"]]
        if not page["more"]:
            break
        cut += 1
        page = await client.call("inbox", limit=MAX_PAGE, cursor=page["next_cursor"])
        page = page["data"]
    assert seen == stored  # each once, in order
    assert cut >= 4


async def test_an_outbox_list_page_of_many_deliveries_is_cut_by_bytes_and_its_cursor_goes_on(
    connect: Any, daemon: Services
) -> None:
    client = await connect()
    recipients = [f"{n:052d}" for n in range(1000)]  # ~150 KB a row as listed

    def fill(conn: sqlite3.Connection) -> list[str]:
        now = wall_ms()  # not yet expired: the outbox's TTL sweep, running beside, leaves them
        return [
            outbox_db.accept(
                conn,
                **outbox_request(
                    recipients=recipients, client_message_id=f"wide-{i}", now_ms=now + i
                ),
            ).id
            for i in range(WIDE_ROWS)
        ]

    newest_first = list(reversed(await daemon.store.call(fill, what="test: wide sends")))
    home = Home(daemon.paths.socket.parent)
    cli = functools.partial(home.cli, "outbox", "list", "--limit", "500")
    first = (await trio.to_thread.run_sync(cli)).stdout.splitlines()
    assert len(first) < WIDE_ROWS and first[-1].startswith("(next page: --cursor ")
    seen: list[str] = []
    page = (await client.call("outbox_list", limit=MAX_PAGE))["data"]
    assert 0 < len(page["rows"]) < WIDE_ROWS and page["next_cursor"] is not None  # cut
    while True:
        largest = max(len(json.dumps(row)) for row in page["rows"])
        assert len(json.dumps(page)) <= MAX_PAGE_DATA_BYTES + largest
        seen += [row["id"] for row in page["rows"]]
        if page["next_cursor"] is None:
            break
        page = await client.call("outbox_list", limit=MAX_PAGE, cursor=page["next_cursor"])
        page = page["data"]
    assert seen == newest_first  # each once, newest first


async def test_send_refuses_a_well_formed_id_that_roster_deny_calls_unusable(
    connect: Any,
) -> None:
    client = await joined(connect)
    unusable = "a" * 52  # canonical base32, but no curve point: no session can ever be sealed
    denied = await client.call("roster_deny", network=NET, device_id=unusable)
    assert denied["error"]["code"] == "invalid_params"
    sent = await client.call("send", network=NET, to=unusable, message="x")
    assert sent["error"]["code"] == "invalid_params"
    assert "not a usable device id" in sent["error"]["message"]
    listed = await client.call("outbox_list")
    assert listed["data"]["rows"] == []


async def test_pipelined_sends_on_one_connection_commit_in_one_store_call_each_answered(
    connect: Any, daemon: Services
) -> None:
    client = await joined(connect)
    peer = new_device()

    def line(request_id: int, **params: Any) -> bytes:
        body = {"network": NET, "to": peer, "message": "m", **params}
        return json.dumps({"id": request_id, "op": "send", **body}).encode() + b"\n"

    lines = [line(n, client_message_id=f"k{n}") for n in range(1, 41)]
    lines[4] = line(5, client_message_id="k1")  # a repeat of k1's key and body: k1's id
    lines[5] = line(6, client_message_id="k1", message="other")  # the key taken: a conflict
    lines[6] = line(7, priority="urgent")  # refused by the store inside the run, alone
    lines[7] = line(8, to="*", meta={"big": "x" * MAX_META_BYTES})  # refused before the store
    calls_before = daemon.store.calls
    await client.send_raw(b"".join(lines))  # read together: one in-order run
    answers = {frame["id"]: frame for frame in [await client.frame() for _ in lines]}
    # one store call accepted the whole run of 40; the few others are the daemon's own (the
    # event log, the outbox's passes), where one call per send would make 40 or more
    assert daemon.store.calls - calls_before < len(lines) // 4
    assert answers[5]["data"]["id"] == answers[1]["data"]["id"]
    assert answers[6]["error"]["code"] == "conflict"
    assert answers[7]["error"]["code"] == "invalid_params"
    assert answers[8]["error"]["code"] == "payload_too_large"
    accepted = {n: a["data"]["id"] for n, a in answers.items() if n not in (5, 6, 7, 8)}
    assert len(set(accepted.values())) == len(accepted) == 36
    rows = (await client.call("outbox_list", limit=50))["data"]["rows"]
    assert {row["id"] for row in rows} == set(accepted.values())


async def test_an_oversize_meta_is_refused_naming_how_it_was_measured(connect: Any) -> None:
    """6,008 bytes as UTF-8, but counted as the peer frame carries it (each é is `\\u00e9`)."""
    client = await joined(connect)
    over = await client.call(
        "send", network=NET, to=new_device(), message="x", meta={"m": "é" * 3000}
    )
    assert over["error"] == {
        "code": "payload_too_large",
        "message": f"meta is 18008 bytes as ASCII-escaped JSON; the limit is {MAX_META_BYTES}",
    }


@pytest.mark.parametrize("char", ["x", "\u4e2d", "\U0001f600", "\x01", '"'])
async def test_the_longest_message_a_send_takes_fits_a_peer_frame(connect: Any, char: str) -> None:
    """The message limit counts the text as the peer frame carries it, where JSON escapes
    every non-ASCII character: counted as UTF-8, 43,690 x U+4E2D passed the op and then no
    recipient could take the frame."""
    client = await joined(connect)
    longest = MAX_MESSAGE_BYTES // (len(json.dumps(char)) - 2)
    meta = {"m": "y" * (MAX_META_BYTES - 10)}
    over = await client.call("send", network=NET, to=new_device(), message=char * (longest + 1))
    assert over["error"]["code"] == "payload_too_large"
    sent = await client.call(
        "send", network=NET, to=new_device(), message=char * longest, meta=meta
    )
    assert sent["ok"], sent
    frame = Msg("r" * MAX_REF_CHARS, "k" * 128, char * longest, meta, "next", "r" * 128, 2**53)
    assert len(encode_frame(frame)) <= MAX_PEER_FRAME_BYTES


async def test_a_send_is_accepted_when_the_networks_core_does_not_answer(
    connect: Any, daemon: Services
) -> None:
    """The evicted check asks core; a core that cannot answer must not refuse a durable send
    (the outbox buries it once it learns of an evict)."""
    client = await joined(connect)
    network = daemon.networks.get(NET)
    network.retire()  # every ask to its core now fails at once, `unavailable`
    answer = await client.call(
        "send", network=NET, to=new_device(), message="hi", client_message_id="k-core"
    )
    assert answer["data"]["outcome"] == "accepted", answer
