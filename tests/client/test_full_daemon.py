"""A daemon too full to take a client (`unavailable`: MAX_CLIENTS connections held) is waited
for on the client's first connect like one still starting: retried until connect_timeout, and
only then its refusal raised."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshactors.client import ClientError, MeshClient, reconnect
from tests.client.conftest import LocalDaemon, count_connects

FULL_CONNECT_TIMEOUT = 0.5  # seconds the client waits for room that is never made


@pytest.fixture
async def one_place(local: LocalDaemon) -> Path:
    """The socket of the local daemon, started with room for one client at once."""
    local.max_clients = 1
    await local.start()
    return local.paths.socket


async def test_a_first_connect_to_a_full_daemon_waits_for_room(
    one_place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = one_place
    retried = trio.Event()
    clients_seen: list[int] = []

    async def connect_late() -> None:
        async with MeshClient(socket, connect_timeout=15) as late:
            clients_seen.append((await late.status())["clients"])

    with trio.fail_after(20):
        # the holder takes the one place, and leaves it once the late client was refused
        async with trio.open_nursery() as nursery, MeshClient(socket) as holder:
            assert (await holder.status())["clients"] == 1
            count_connects(monkeypatch, reconnect, "open_connection", retried)
            nursery.start_soon(connect_late)
            await retried.wait()  # refused once, and trying again
    assert clients_seen == [1]


async def test_a_daemon_full_for_the_whole_connect_timeout_raises_its_refusal(
    one_place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket = one_place
    async with MeshClient(socket) as holder:
        assert (await holder.status())["clients"] == 1
        opened = count_connects(monkeypatch, reconnect, "open_connection", trio.Event())
        started = trio.current_time()
        with trio.fail_after(20), pytest.raises(ClientError) as refused:
            async with MeshClient(socket, connect_timeout=FULL_CONNECT_TIMEOUT):
                pass
        assert trio.current_time() - started >= FULL_CONNECT_TIMEOUT
        assert len(opened) > 1
        assert refused.value.code == "unavailable"
        assert "clients at once" in refused.value.message
        assert (await holder.status())["clients"] == 1  # the holder was never disturbed
