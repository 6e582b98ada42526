"""What a channel reader is told besides messages: where some may have been lost before they
reached the client (the connection lagged, or was lost until the subscription was restored),
which messages are a sender's retained value rather than new ones, and a binary message's
bytes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from meshactors.client import ChannelGap, ChannelMessage, ClientError, MeshClient
from meshactors.store.db import open_database
from meshactors.store.networks import delete_network
from tests.client.conftest import LocalDaemon
from tests.client.fakedaemon import fake_daemon
from tests.client.test_client import next_kind

WAIT = 10  # seconds any awaited step may take before the test fails
NETWORK = {"id": "lan", "brokers": ["ws://127.0.0.1:9/v1"]}  # reaches only itself


def inbound(channel: str, payload: Any, **extra: Any) -> dict[str, Any]:
    """A `channel_inbound` frame as the daemon sends it."""
    return {
        "kind": "channel_inbound",
        "network": "lan",
        "from": "peer",
        "channel": channel,
        "payload": payload,
        **extra,
    }


async def read_news_and_weather(
    tmp_path: Path, frames: list[dict[str, Any]], news_count: int, weather_count: int
) -> tuple[list[Any], list[Any]]:
    """What readers of `lan`'s news and weather get of `frames`, sent by a fake daemon."""
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        session = await daemon.next_session()
        async with (
            client.subscribe("lan", "news") as news,
            client.subscribe("lan", "weather") as weather,
        ):
            with trio.fail_after(WAIT):
                await session.send_together(frames)
                return (
                    [await news.__anext__() for _ in range(news_count)],
                    [await weather.__anext__() for _ in range(weather_count)],
                )


@pytest.mark.parametrize("names", [{}, {"channel": "news"}, {"network": ["lan"], "channel": "x"}])
async def test_a_lagged_naming_no_channel_marks_a_gap_in_every_channel(
    tmp_path: Path, names: dict[str, Any]
) -> None:
    """A notice that does not name one channel (the connection's, or a malformed one) may be
    any channel's loss: each reader gets the gap where it came."""
    lagged = {"kind": "lagged", "skipped": 5544, **names}
    frames = [inbound("news", 1), lagged, inbound("news", 2), inbound("weather", "sun")]
    assert await read_news_and_weather(tmp_path, frames, 3, 2) == (
        [
            ChannelMessage("lan", "peer", "news", 1),
            ChannelGap("lagged", 5544),
            ChannelMessage("lan", "peer", "news", 2),
        ],
        [ChannelGap("lagged", 5544), ChannelMessage("lan", "peer", "weather", "sun")],
    )


async def test_a_pumps_lagged_marks_a_gap_in_its_channel_alone(tmp_path: Path) -> None:
    """A pump's notice names its network and channel: the other channels' readers, and the
    same channel's in another network, lost nothing."""
    pump_lagged = {"kind": "lagged", "network": "lan", "channel": "news", "skipped": 3}
    elsewhere = {**pump_lagged, "network": "other", "channel": "weather"}
    frames = [
        inbound("news", 1),
        pump_lagged,
        elsewhere,
        inbound("news", 2),
        inbound("weather", "sun"),
    ]
    assert await read_news_and_weather(tmp_path, frames, 3, 1) == (
        [
            ChannelMessage("lan", "peer", "news", 1),
            ChannelGap("lagged", 3),
            ChannelMessage("lan", "peer", "news", 2),
        ],
        [ChannelMessage("lan", "peer", "weather", "sun")],
    )


async def test_a_lost_connection_marks_a_gap_before_what_the_next_one_brings(
    tmp_path: Path,
) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        first = await daemon.next_session()
        async with client.subscribe("lan", "news") as news:
            with trio.fail_after(WAIT):
                await first.send(inbound("news", 1))
                assert await news.__anext__() == ChannelMessage("lan", "peer", "news", 1)
                await first.hang_up()
                second = await daemon.next_session()
                await second.wait_op("channel_subscribe")
                await second.send(inbound("news", 5))
                assert await news.__anext__() == ChannelGap("disconnected")
                assert await news.__anext__() == ChannelMessage("lan", "peer", "news", 5)


async def test_a_connection_lost_again_before_any_message_marks_one_gap(tmp_path: Path) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        first = await daemon.next_session()
        async with client.subscribe("lan", "news") as news:
            with trio.fail_after(WAIT):
                daemon.hang_up_on.add("channel_subscribe")  # the next replay fails half-way
                await first.hang_up()
                await (await daemon.next_session()).wait_op("channel_subscribe")
                daemon.hang_up_on.clear()
                third = await daemon.next_session()
                await third.wait_op("channel_subscribe")
                await third.send(inbound("news", 5))
                assert await news.__anext__() == ChannelGap("disconnected")
                assert await news.__anext__() == ChannelMessage("lan", "peer", "news", 5)


async def test_a_retained_value_is_flagged_and_reaches_a_later_local_reader_too(
    running: LocalDaemon,
) -> None:
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.channel_send_to("lan", "cfg", me, {"v": 1}, retain=True)
        kept = ChannelMessage("lan", me, "cfg", {"v": 1}, retained=True)
        with trio.fail_after(WAIT):
            async with client.subscribe("lan", "cfg") as first:
                assert await first.__anext__() == kept
                async with client.subscribe("lan", "cfg") as second:
                    assert await second.__anext__() == kept
                    await client.channel_send_to("lan", "cfg", me, {"v": 2})
                    for reader in (first, second):
                        new = await reader.__anext__()
                        assert new == ChannelMessage("lan", me, "cfg", {"v": 2})


async def test_a_later_message_of_the_sender_may_replace_its_retained_value(
    tmp_path: Path,
) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        session = await daemon.next_session()
        async with client.subscribe("lan", "cfg") as first:
            with trio.fail_after(WAIT):
                await session.send(inbound("cfg", "old", retained=True))
                await session.send(inbound("cfg", "new"))  # retained or not: the frame says not
                await session.send({**inbound("cfg", "other's", retained=True), "from": "other"})
                for _ in range(3):
                    await first.__anext__()
                async with client.subscribe("lan", "cfg") as second:
                    await session.send(inbound("cfg", "live"))
                    assert [await second.__anext__() for _ in range(2)] == [
                        ChannelMessage("lan", "other", "cfg", "other's", retained=True),
                        ChannelMessage("lan", "peer", "cfg", "live"),
                    ]


async def test_binary_messages_are_sent_and_received_as_bytes(running: LocalDaemon) -> None:
    blob = bytes(range(256))  # not text in any encoding
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        await client.channel_send_to("lan", "files", me, data=b"kept", retain=True)
        with trio.fail_after(WAIT):
            async with client.subscribe("lan", "files") as files:
                kept = ChannelMessage("lan", me, "files", None, retained=True, data=b"kept")
                assert await files.__anext__() == kept
                await client.channel_send_to("lan", "files", me, data=blob)
                await client.channel_send_reliable("lan", "files", me, data=b"", ttl_ms=10_000)
                await client.channel_send_to("lan", "files", me, {"json": "still"})
                assert [await files.__anext__() for _ in range(3)] == [
                    ChannelMessage("lan", me, "files", None, data=blob),
                    ChannelMessage("lan", me, "files", None, data=b""),
                    ChannelMessage("lan", me, "files", {"json": "still"}),
                ]


async def test_a_message_with_both_a_payload_and_data_is_refused(running: LocalDaemon) -> None:
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        me = (await client.status())["device_id"]
        with pytest.raises(ClientError) as refused:
            await client.channel_send_to("lan", "files", me, {"n": 1}, data=b"x")
    assert refused.value.code == "invalid_params"


async def test_a_binary_message_that_is_not_base64_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        session = await daemon.next_session()
        async with client.subscribe("lan", "files") as files:
            with trio.fail_after(WAIT):
                bad = {k: v for k, v in inbound("files", None).items() if k != "payload"}
                await session.send(bad | {"payload_b64": "not base64!"})
                await session.send(bad | {"payload_b64": "aGk="})
                assert await files.__anext__() == ChannelMessage(
                    "lan", "peer", "files", None, data=b"hi"
                )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("dropped" in message for message in warnings)


async def test_a_reader_whose_network_is_removed_raises_no_such_network(
    running: LocalDaemon,
) -> None:
    """The daemon ends the subscription with its network: the client subscribes again at once,
    as it claims a method again, and the refusal ends the reader with its error."""
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        stream = client.events()
        async with client.subscribe("lan", "news") as news:
            with trio.fail_after(WAIT):
                await client.network_remove("lan")
                assert await news.__anext__() == ChannelGap("unsubscribed")
                with pytest.raises(ClientError) as ended:
                    await news.__anext__()
                assert ended.value.code == "no_such_network"
                failed = await next_kind(stream, "client_replay_failed")
                assert (failed["channel"], failed["code"]) == ("news", "no_such_network")
        await client.ensure_networks([NETWORK])  # back: a new reader reads, and ends cleanly
        me = (await client.status())["device_id"]
        async with client.subscribe("lan", "news") as again:
            await client.channel_send_to("lan", "news", me, "back")
            with trio.fail_after(WAIT):
                assert await again.__anext__() == ChannelMessage("lan", me, "news", "back")


def forget_network(db: Path, network_id: str) -> None:
    """Remove a network from a stopped daemon's database, as `network_remove` would have."""
    conn = open_database(db)
    try:
        assert delete_network(conn, network_id, purge=False).known
    finally:
        conn.close()


async def test_a_reader_whose_network_went_while_the_daemon_was_down_raises(
    running: LocalDaemon,
) -> None:
    """The network is gone when the client reconnects: the replay's refusal of the subscription
    ends the reader with it, as the refusal of a subscribe again after `channel_unsubscribed`
    does, rather than leave it waiting for messages that cannot come."""
    async with MeshClient(running.paths.socket) as client:
        await client.ensure_networks([NETWORK])
        stream = client.events()
        async with client.subscribe("lan", "news") as news:
            with trio.fail_after(WAIT):
                await running.stop()
                await next_kind(stream, "client_disconnected")
                await trio.to_thread.run_sync(forget_network, running.paths.state_db, "lan")
                await running.start()
                assert await news.__anext__() == ChannelGap("disconnected")
                with pytest.raises(ClientError) as ended:
                    await news.__anext__()
                assert ended.value.code == "no_such_network"
                failed = await next_kind(stream, "client_replay_failed")
                assert (failed["channel"], failed["code"]) == ("news", "no_such_network")


async def test_a_subscription_the_daemon_ended_is_subscribed_again(tmp_path: Path) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        session = await daemon.next_session()
        stream = client.events()
        async with client.subscribe("lan", "news") as news:
            with trio.fail_after(WAIT):
                ended = {"network": "lan", "channel": "news", "reason": "network_removed"}
                await session.send({"kind": "channel_unsubscribed", **ended})
                await session.wait_op("channel_subscribe", times=2)
                again = await next_kind(stream, "client_resubscribed")
                assert again == {"kind": "client_resubscribed", "network": "lan", "channel": "news"}
                await session.send(inbound("news", 2))
                assert await news.__anext__() == ChannelGap("unsubscribed")
                assert await news.__anext__() == ChannelMessage("lan", "peer", "news", 2)


async def test_a_subscribe_again_past_its_deadline_leaves_the_readers_to_the_replay(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The daemon ended the subscription and does not answer the subscribe again in time (as
    one that went down for longer than the call's deadline): the readers are not ended for it,
    and the next connection's replay subscribes again."""
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path, call_timeout=WAIT / 2) as client,
    ):
        session = await daemon.next_session()
        stream = client.events()
        async with client.subscribe("lan", "news") as news:
            with trio.fail_after(WAIT * 2):
                daemon.never_answered.add("channel_subscribe")
                ended = {"network": "lan", "channel": "news", "reason": "network_removed"}
                await session.send({"kind": "channel_unsubscribed", **ended})
                failed = await next_kind(stream, "client_replay_failed")
                assert (failed["channel"], failed["code"]) == ("news", "deadline")
                daemon.never_answered.clear()
                await session.hang_up()
                again = await daemon.next_session()
                await again.wait_op("channel_subscribe")
                await again.send(inbound("news", 2))
                assert await news.__anext__() == ChannelGap("unsubscribed")
                assert await news.__anext__() == ChannelMessage("lan", "peer", "news", 2)
