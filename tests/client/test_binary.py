"""A binary stream whose connection fails under it (its daemon killed: the connection reset)
raises StreamError `connection_lost` from every call, never a bare socket error; send_all's is
also the BrokenResourceError a trio Stream's send_all may raise."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshactors.client import MeshClient, StreamBroken, StreamError
from meshactors.wire.pipe_frames import END_FRAME, encode
from tests.client.fakedaemon import fake_daemon

WAIT = 10  # seconds any awaited step may take before the test fails


async def test_a_reset_connection_under_a_binary_stream_is_a_stream_error(tmp_path: Path) -> None:
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        await daemon.next_session()  # the client's own connection
        with trio.fail_after(WAIT):
            streams = []
            for _ in range(2):
                stream = await client.open_stream("lan", "peer", "bulk")
                session = await daemon.next_session()
                await stream.send_all(b"left unread")  # so closing resets the connection
                await session.hang_up()
                streams.append(stream)
            reading, finishing = streams
            with pytest.raises(StreamError) as received:
                await reading.receive_some()
            assert received.value.code == "connection_lost"
            with pytest.raises(StreamError) as sent:
                await reading.send_all(b"more")
            assert sent.value.code == "connection_lost"
            assert isinstance(sent.value, trio.BrokenResourceError)
            with pytest.raises(StreamError) as finished:
                await finishing.finish()
            assert finished.value.code == "connection_lost"


async def test_a_connection_closed_cleanly_mid_stream_breaks_the_read_waiting_on_it(
    tmp_path: Path,
) -> None:
    """The daemon closes the connection with nothing unread and no error frame (it stopped, or
    was killed after reading all we sent): the stream broke, it was not cancelled (a cancel
    always comes as an error frame), and the read raises StreamBroken `connection_lost`."""
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        await daemon.next_session()  # the client's own connection
        with trio.fail_after(WAIT):
            stream = await client.open_stream("lan", "peer", "bulk")
            await (await daemon.next_session()).hang_up()
            for _ in range(2):  # and again: the failure stays
                with pytest.raises(StreamBroken) as received:
                    await stream.receive_some()
                assert received.value.code == "connection_lost"


async def test_a_connection_closed_before_our_end_fails_the_finish_waiting_on_it(
    tmp_path: Path,
) -> None:
    """The daemon closes the connection cleanly (no reset frame, nothing unread) before our
    end was sent: the stream did not finish, it broke, and `finish` (waiting for a reset from
    the other end) raises so, rather than returning as it does after a finished stream."""
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        await daemon.next_session()  # the client's own connection
        with trio.fail_after(WAIT):
            stream = await client.open_stream("lan", "peer", "bulk")
            await (await daemon.next_session()).hang_up()
            with pytest.raises(StreamBroken) as finished:
                await stream.finish()
            assert finished.value.code == "connection_lost"


async def test_finish_returns_only_once_both_ends_ended(tmp_path: Path) -> None:
    """The daemon closes a finished stream's connection after the other end's end frame; a
    close with our end sent but not the other's (its daemon died after reading ours) is no
    finish, and `finish` raises StreamBroken rather than returning as if it were."""
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        await daemon.next_session()  # the client's own connection
        with trio.fail_after(WAIT):
            for theirs_ended in (True, False):
                stream = await client.open_stream("lan", "peer", "bulk")
                session = await daemon.next_session()
                await stream.send_eof()
                assert await session.stream.receive_some() == END_FRAME  # nothing left unread
                if theirs_ended:
                    await session.stream.send_all(b"".join(encode(b"unread data")) + END_FRAME)
                await session.hang_up()
                if theirs_ended:
                    await stream.finish()
                else:
                    with pytest.raises(StreamBroken) as finished:
                        await stream.finish()
                    assert finished.value.code == "connection_lost"


async def test_data_after_our_end_is_refused(tmp_path: Path) -> None:
    """As trio's HalfCloseableStream says, send_all after send_eof raises ClosedResourceError
    (the daemon would take the data for broken framing and reset the stream)."""
    async with (
        fake_daemon(tmp_path / "daemon.sock") as daemon,
        MeshClient(daemon.path) as client,
    ):
        await daemon.next_session()  # the client's own connection
        with trio.fail_after(WAIT):
            stream = await client.open_stream("lan", "peer", "bulk")
            await daemon.next_session()
            await stream.send_eof()
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_all(b"late")
