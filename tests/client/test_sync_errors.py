"""`SyncClient` (what the CLI uses) turns a daemon that went away or went quiet mid-call into
its ClientErrors, so the CLI prints one line and an exit code instead of a traceback."""

from __future__ import annotations

import socket

import pytest

from meshactors.client.errors import ClientError, ConnectionLost, DeadlineExceeded
from meshactors.client.sync import SyncClient
from meshactors.wire.ipc import MAX_FRAME_BYTES


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
