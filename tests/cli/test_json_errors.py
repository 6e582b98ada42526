"""Under --json a command prints the whole error object the daemon sent, its details beside
`code` and `message`, whichever command met it."""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

import nacl.signing
import trio

from meshactors.cli.common import EXIT_REFUSED
from meshactors.daemon.services import Services
from meshactors.wire.device_id import device_id_from_public_key
from tests.support import Home, LineClient, answer_one_request_with, listening_unix_socket

JSON_ERRORS_NET = "n"
REFUSAL_WAIT = 30.0  # seconds the stand-in daemon waits for `daemon down` to connect


async def test_send_prints_the_whole_conflict_the_daemon_answered(daemon: Services) -> None:
    client = LineClient(await trio.open_unix_socket(str(daemon.paths.socket)))
    config = {"id": JSON_ERRORS_NET, "brokers": ["ws://127.0.0.1:9/v1"]}
    assert (await client.call("network_add", config=config))["ok"]
    peer = device_id_from_public_key(bytes(nacl.signing.SigningKey.generate().verify_key))
    home = Home(daemon.paths.socket.parent)
    send = functools.partial(home.cli, "send", "-n", JSON_ERRORS_NET, "--client-id", "k1", peer)
    await trio.to_thread.run_sync(send, "first")

    again = functools.partial(send, "second", "--json", check=False)
    refused = await trio.to_thread.run_sync(again)

    params = {"network": JSON_ERRORS_NET, "to": peer, "client_message_id": "k1"}
    answered = await client.call("send", message="second", **params)
    await client.stream.aclose()
    assert refused.returncode == EXIT_REFUSED, refused.stderr
    printed = json.loads(refused.stdout)["error"]
    assert printed == answered["error"]
    assert printed["reason"] == "pending_fingerprint_mismatch"  # a detail, not code or message


def test_daemon_down_prints_the_whole_error_shutdown_was_answered_with(tmp_path: Path) -> None:
    home = Home(tmp_path)
    error = {"code": "unavailable", "message": "busy", "retry_after_ms": 250}
    with listening_unix_socket(home.socket) as sock:  # no pid file names it
        sock.settimeout(REFUSAL_WAIT)
        answering = threading.Thread(target=answer_one_request_with, args=(sock, error))
        answering.start()
        result = home.cli("daemon", "down", "--json", check=False)
        answering.join()

    assert result.returncode == EXIT_REFUSED, result.stderr
    printed = json.loads(result.stdout)["error"]
    assert (printed["code"], printed["retry_after_ms"]) == ("unavailable", 250)
    assert printed["message"].startswith(f"something on {home.socket} answered shutdown with")
