"""`SyncClient` (what the CLI uses) turns a daemon that went away or went quiet mid-call into
its ClientErrors, so the CLI prints one line and an exit code instead of a traceback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshactors.client.errors import (
    ClientError,
    ConnectionLost,
    DaemonNotRunning,
    DeadlineExceeded,
    SocketPathTooLong,
)
from meshactors.client.sync import SyncClient
from meshactors.paths import MAX_SOCKET_PATH_BYTES
from meshactors.wire.ipc import MAX_FRAME_BYTES

NO_SUCH_DIRECTORY = Path("/nonexistent-meshactors-home")  # nothing ever listens under it
FILE_NAME_CHARACTERS = st.characters(exclude_characters="/\x00", exclude_categories=["Cs"])


def test_a_daemon_gone_mid_call_is_connection_lost() -> None:
    ours, theirs = socket.socketpair()
    theirs.close()
    with SyncClient(ours) as client, pytest.raises(ConnectionLost) as lost:
        client.call("status")
    assert lost.value.code == "connection_lost"


def test_a_reset_while_waiting_for_the_answer_is_connection_lost() -> None:
    ours, theirs = socket.socketpair()
    ours.sendall(b"unread\n")  # closing with unread bytes resets the connection
    theirs.close()
    with SyncClient(ours) as client, pytest.raises(ConnectionLost):
        client.call("status")


def test_a_daemon_that_never_answers_is_a_deadline() -> None:
    ours, theirs = socket.socketpair()
    ours.settimeout(0.05)
    with SyncClient(ours, timeout=0.05) as client, pytest.raises(DeadlineExceeded) as late:
        client.call("status")
    assert late.value.code == "deadline" and "status" in late.value.message
    theirs.close()


def test_a_request_over_the_line_cap_is_refused_before_it_is_sent() -> None:
    # The daemon would answer it `frame_too_large` with no id, which no call can match.
    ours, theirs = socket.socketpair()
    ours.settimeout(0.05)
    with SyncClient(ours, timeout=0.05) as client, pytest.raises(ClientError) as refused:
        client.call("send", message="x" * MAX_FRAME_BYTES)
    assert refused.value.code == "frame_too_large"
    assert theirs.recv(1) == b""  # the client closed, having sent nothing
    theirs.close()


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(st.characters(exclude_characters="/\x00", exclude_categories=["Cs"]), min_size=1)
)
@example(name="s" * (MAX_SOCKET_PATH_BYTES - len(str(NO_SUCH_DIRECTORY)) - 1))  # fits exactly
@example(name="s" * (MAX_SOCKET_PATH_BYTES - len(str(NO_SUCH_DIRECTORY))))  # one byte over
@example(name="é" * 40)  # 80 bytes but 40 characters: counted in bytes
def test_a_socket_path_too_long_is_named_with_the_limit_and_the_fix(name: str) -> None:
    path = NO_SUCH_DIRECTORY / name
    with pytest.raises(DaemonNotRunning) as failure:
        SyncClient.connect(path)

    size = len(os.fsencode(path))
    assert failure.value.code == "not_running"
    assert str(path) in failure.value.message
    if size <= MAX_SOCKET_PATH_BYTES:
        assert not isinstance(failure.value, SocketPathTooLong)
        assert failure.value.hint == "start one with `meshactors daemon up`"
    else:
        assert isinstance(failure.value, SocketPathTooLong)
        assert f"the path is {size} bytes, longer than the {MAX_SOCKET_PATH_BYTES}" in str(
            failure.value
        )
        assert failure.value.hint == "use a shorter MESHACTORS_HOME, or --socket PATH"
