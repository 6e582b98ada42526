"""Durable messages with real processes: 1,000 messages queued to an offline peer arrive
exactly once although the sender is killed with SIGKILL while it drains them, and no accept
answered before a SIGKILL is lost although accepts commit in groups."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from meshactors.client.sync import SyncClient
from meshactors.wire.device_id import device_id_from_public_key
from tests.e2e.test_mesh import NET, eventually, free_port, join_approved, start_broker
from tests.support import Home, LineClient

pytestmark = pytest.mark.e2e

MESSAGES = 1000
KILL_AFTER = 50  # messages the recipient holds when the sender is killed


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = start_broker(Home(tmp_path), port)
    yield f"ws://127.0.0.1:{port}/v1"
    process.kill()
    process.communicate(timeout=30)


def inbox_all(home: Home) -> list[dict[str, Any]]:
    """Every message in the home's inbox, page by page."""
    messages: list[dict[str, Any]] = []
    cursor = None
    with SyncClient.connect(home.socket) as client:
        while True:
            params: dict[str, Any] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
            page = client.call("inbox", **params)
            messages += page["messages"]
            if not page["more"]:
                return messages
            cursor = page["next_cursor"]


def test_a_thousand_messages_arrive_once_through_a_sigkill_of_the_sender(
    homes: tuple[Home, Home], broker: str
) -> None:
    a, b = homes
    ids = join_approved(homes, broker)
    b.cli("daemon", "down")

    first = a.cli("send", NET, ids["b"], "m0", "--client-id", "m0").stdout
    assert first.startswith("accepted ")
    with SyncClient.connect(a.socket) as client:
        for i in range(1, MESSAGES):
            sent = client.call("send", network=NET, to=ids["b"], message=f"m{i}")
            assert sent["outcome"] == "accepted"
        again = client.call("send", network=NET, to=ids["b"], message="m0", client_message_id="m0")
        assert again["outcome"] == "accepted"  # still pending: the same row
    newest = a.cli("outbox", "list", "--pending", "--limit", "500").stdout.splitlines()
    assert len(newest) == 501  # a full page of rows, then where the older ones start
    cursor = newest.pop().removeprefix("(next page: --cursor ").removesuffix(")")
    oldest = a.cli("outbox", "list", "--pending", "--limit", "500", "--cursor", cursor).stdout
    ids_shown = [line.split()[0] for line in newest + oldest.splitlines()]
    assert len(set(ids_shown)) == len(ids_shown) == MESSAGES  # every row once, no hint after

    b.cli("daemon", "up", "--detach")
    eventually(lambda: True if len(inbox_all(b)) >= KILL_AFTER else None, "b to start receiving")
    pid = a.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    received_at_kill = len(inbox_all(b))
    eventually(lambda: True if a.daemon_pid() is None else None, "a's lock to be released")
    a.cli("daemon", "up", "--detach")

    def all_arrived() -> list[dict[str, Any]] | None:
        messages = inbox_all(b)
        return messages if len(messages) >= MESSAGES else None

    messages = eventually(all_arrived, "all messages at b")
    assert len(messages) == MESSAGES
    assert len({m["client_message_id"] for m in messages}) == MESSAGES
    assert sorted(m["message"] for m in messages) == sorted(f"m{i}" for i in range(MESSAGES))
    assert {m["from"] for m in messages} == {ids["a"]}

    def drained() -> bool | None:
        with SyncClient.connect(a.socket) as client:
            pending = client.call("outbox_list", status="pending", limit=1)["rows"]
            inflight = client.call("outbox_list", status="inflight", limit=1)["rows"]
        return True if not pending and not inflight else None

    eventually(drained, "a's outbox to drain")
    # The kill lands while deliveries or their acks are on the way or (the whole burst fits
    # one delivery window of 1,024) after the recipient holds every message: whatever the
    # sender had not recorded as done it sends again after its restart, and the recipient
    # must keep each message once.
    assert received_at_kill >= KILL_AFTER
    shown = b.cli("inbox", "--limit", "3").stdout
    assert "m" in shown and "next page" in shown
    with SyncClient.connect(b.socket) as client:
        first = client.call("inbox", limit=500)
        cursor = client.call("inbox", limit=MESSAGES - 503, cursor=first["next_cursor"])
    last = b.cli("inbox", "--limit", "3", "--cursor", cursor["next_cursor"]).stdout.splitlines()
    assert len(last) == 3, "the last page is full and nothing follows it: no next-page hint"


WRITERS = 8  # connections sending at once, so accepts queue up and commit in groups
IN_FLIGHT = 32  # requests each keeps outstanding
KILL_AT = 300  # accepts answered before the daemon is killed


async def test_a_sigkill_among_group_commits_loses_no_answered_accept(home: Home) -> None:
    home.cli("daemon", "up", "--detach")
    home.cli("network", "add", NET, "--broker", "ws://127.0.0.1:9/v1")
    to = device_id_from_public_key(bytes(SigningKey.generate().verify_key))
    answered: dict[str, str] = {}  # client_message_id → outbox id, for every accept answered
    enough = trio.Event()

    async def writer(n: int) -> None:
        client = LineClient(await trio.open_unix_socket(str(home.socket)))
        sent = itertools.count()

        async def send_one() -> None:
            key = f"w{n}-{next(sent)}"
            await client.send("send", network=NET, to=to, message=key, client_message_id=key)

        with contextlib.suppress(EOFError, trio.BrokenResourceError, OSError):
            for _ in range(IN_FLIGHT):
                await send_one()
            while True:
                frame = await client.frame()
                assert frame["ok"], frame
                answered[frame["data"]["client_message_id"]] = frame["data"]["id"]
                if len(answered) >= KILL_AT:
                    enough.set()
                await send_one()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(WRITERS):
                nursery.start_soon(writer, n)
            await enough.wait()
            pid = home.daemon_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # the writers end as their connections break
    await trio.to_thread.run_sync(
        eventually, lambda: True if home.daemon_pid() is None else None, "the lock released"
    )
    home.cli("daemon", "up", "--detach")
    with SyncClient.connect(home.socket) as client:
        for key, row_id in answered.items():
            again = client.call("send", network=NET, to=to, message=key, client_message_id=key)
            assert (again["outcome"], again["id"]) == ("accepted", row_id), key  # still there
