"""`meshactors rpc call|serve`: call a peer's method, or serve one with a command."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import trio

from meshactors.cli.common import (
    connect,
    fail_with,
    free_words,
    interrupted,
    legacy_network,
    network_of,
    network_option,
    one_line,
    parse_json_arg,
    paths_of,
)
from meshactors.cli.devices import resolve_device
from meshactors.cli.served import run_command, serve_until_stopped, served_command, stream_command
from meshactors.cli.settings import add_timeout_flag, seconds_flag
from meshactors.client import ClientError, MeshClient, RequestContext, SyncClient
from meshactors.exception_groups import one_error_bare
from meshactors.network.rpc import MAX_TIMEOUT_MS

SERVE_COMMAND_TIMEOUT = 30.0  # seconds a served command may run before it is killed (default)
CALL_WORDS = "PEER METHOD [PAYLOAD]"  # `rpc call`'s free words
CANCEL_TIMEOUT = 5.0  # seconds Ctrl-C on `rpc call --stream` waits for the cancel's answer
CLIENT_LOGGER = "meshactors.client"  # the client library's logger (one line per failure here)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `rpc call` and `rpc serve` commands."""
    rpc = commands.add_parser("rpc", help="call and serve methods").add_subparsers(
        dest="action", required=True
    )
    call = rpc.add_parser("call", help="call METHOD on PEER and print its answer's payload as JSON")
    network_option(call)
    call.add_argument(
        "words",
        nargs="+",
        metavar=CALL_WORDS,
        help="PEER: a device id, 8+ characters of it or a label (this daemon's own works too); "
        "PAYLOAD: JSON (default null)",
    )
    call.add_argument("--stream", action="store_true", help="print each chunk on its own line")
    add_timeout_flag(call, help="the call's deadline")
    call.set_defaults(run=run_call)
    serve = rpc.add_parser(
        "serve", help="serve METHOD: run CMD per call, payload JSON on stdin, stdout answers"
    )
    network_option(serve)
    serve.add_argument("method", help="the method to claim (a later claim elsewhere takes it over)")
    serve.add_argument(
        "--timeout",
        type=seconds_flag(MAX_TIMEOUT_MS / 1000),
        default=SERVE_COMMAND_TIMEOUT,
        metavar="SECONDS",
        help="seconds CMD may run per call (default %(default)g; at most a call's longest "
        f"deadline, {MAX_TIMEOUT_MS / 1000:g})",
    )
    serve.add_argument(
        "--stream", action="store_true", help="each line CMD writes answers as one stream chunk"
    )
    serve.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…")
    serve.set_defaults(run=run_serve)


def run_call(args: argparse.Namespace) -> int:
    peer, method, *rest = free_words(args, "rpc call", CALL_WORDS, "quote a payload with spaces")
    payload = parse_json_arg(rest[0] if rest else "null", "the payload")
    network = network_of(args)
    params: dict[str, Any] = {
        "network": network,
        "peer": resolve_device(args, peer, network),
        "method": method,
        "payload": payload,
    }
    if args.timeout_ms is not None:
        params["timeout_ms"] = args.timeout_ms
    with connect(args) as client:
        client.sock.settimeout(None)  # the daemon enforces the call's deadline
        request_id: str | None = None
        try:
            if not args.stream:
                print(json.dumps(_payload_of(client.call("rpc_call", **params))))
                return 0
            request_id = client.call("rpc_call_stream", **params)["request_id"]
            for event in client.events():
                if event["kind"] == "lagged":  # a chunk skipped: the daemon ended the call
                    fail_with(_lagged(event), "stream failed: ")
                if event.get("request_id") != request_id:
                    continue
                if event["kind"] == "rpc_call_stream_chunk":
                    print(json.dumps(_payload_of(event)), flush=True)
                elif event["kind"] == "rpc_call_stream_end":
                    if "error" in event:
                        fail_with(ClientError.from_wire(event["error"]), "stream failed: ")
                    return 0
        except ClientError as exc:
            fail_with(exc)
        except KeyboardInterrupt:  # Ctrl-C: the caller gave up before the (whole) answer
            _cancel(client, request_id)
            interrupted("the call was cancelled")
    return 0


def _cancel(client: SyncClient, request_id: str | None) -> None:
    """Cancel the stream `request_id` so its serving side is told; a plain call (whose id the
    daemon does not give) is cancelled by closing the connection, which follows. A second
    Ctrl-C ends the wait for the cancel's answer: closing the connection cancels it too."""
    if request_id is None:
        return
    client.sock.settimeout(CANCEL_TIMEOUT)
    # already ended, the daemon gone, or the user would not wait: the close still cancels it
    with contextlib.suppress(ClientError, KeyboardInterrupt):
        client.call("rpc_cancel", request_id=request_id)


def _lagged(notice: dict[str, Any]) -> ClientError:
    """The error a `lagged` notice ends the stream with: the daemon skipped events of this
    connection (its reader fell behind, say on a stdout nobody reads), so the stream has a hole
    (the daemon's end, `lagged` too, follows the notice)."""
    skipped = notice["skipped"]
    return ClientError("lagged", f"the daemon skipped {skipped} events of this connection")


def _payload_of(event: dict[str, Any]) -> Any:
    """The JSON payload, or {"payload_b64": …} for a binary one."""
    return {"payload_b64": event["payload_b64"]} if "payload_b64" in event else event["payload"]


def run_serve(args: argparse.Namespace) -> int:
    words, command = served_command("rpc serve", args.method, args.command)
    if len(words) > 1:  # NET METHOD -- CMD, the old form
        old, new = "rpc serve NET METHOD -- CMD", "rpc serve -n NET METHOD -- CMD"
        words = legacy_network(args, words, old, new)
    (method,) = words
    network = network_of(args)
    _log_failures_in_one_line()
    try:
        trio.run(_serve, args, network, method, command)
    except ClientError as exc:
        fail_with(exc)
    except KeyboardInterrupt:
        pass
    return 0


class OneLine(logging.Formatter):
    """`meshactors: MESSAGE` without the traceback: a failed command is not a bug here."""

    def format(self, record: logging.LogRecord) -> str:
        return f"meshactors: {one_line(record.getMessage())}"


def _log_failures_in_one_line() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    logger = logging.getLogger(CLIENT_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


async def _serve(args: argparse.Namespace, network: str, method: str, command: list[str]) -> None:
    """Serve METHOD with CMD until stopped; the commands' stderr is read, and their exits
    watched, by tasks of a nursery of the serve's own (a streamed answer's generator cannot
    hold one), and what the serve raises is raised as itself, not in that nursery's group."""
    with one_error_bare():  # the serve's (the readers raise none)
        async with trio.open_nursery() as readers:

            async def handle(payload: Any, ctx: RequestContext) -> Any:
                return await run_command(command, payload, args.timeout, readers)

            async def handle_stream(payload: Any, ctx: RequestContext) -> AsyncIterator[Any]:
                chunks = stream_command(command, payload, args.timeout, readers)
                async with contextlib.aclosing(chunks):  # its command killed in this task
                    async for chunk in chunks:
                        yield chunk

            async def claim(client: MeshClient) -> None:
                await client.serve(network, method, handle_stream if args.stream else handle)

            await serve_until_stopped(paths_of(args).socket, network, method, claim)
            readers.cancel_scope.cancel()
