"""`meshactors rpc call|serve`: call a peer's method, or serve one with a command."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

from meshactors.cli.common import connect, fail, parse_json_arg, paths_of
from meshactors.client import ClientError, MeshClient, RequestContext

SERVE_COMMAND_TIMEOUT = 30.0  # seconds a served command may run before it is killed (default)
MAX_ERROR_CHARS = 2000  # stderr of a failed command sent back as the error message


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `rpc call` and `rpc serve` commands."""
    rpc = commands.add_parser("rpc", help="call and serve methods").add_subparsers(
        dest="action", required=True
    )
    call = rpc.add_parser("call", help="call METHOD on PEER and print its answer's payload as JSON")
    call.add_argument("network")
    call.add_argument("peer", help="a device id (this daemon's own works too)")
    call.add_argument("method")
    call.add_argument("payload", nargs="?", default="null", help="JSON (default null)")
    call.add_argument("--stream", action="store_true", help="print each chunk on its own line")
    call.add_argument("--timeout", type=float, default=None, help="seconds (daemon default 30)")
    call.set_defaults(run=run_call)
    serve = rpc.add_parser(
        "serve", help="serve METHOD: run CMD per call, payload JSON on stdin, stdout answers"
    )
    serve.add_argument("network")
    serve.add_argument("method")
    serve.add_argument("--timeout", type=float, default=SERVE_COMMAND_TIMEOUT)
    serve.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…")
    serve.set_defaults(run=run_serve)


def run_call(args: argparse.Namespace) -> int:
    payload = parse_json_arg(args.payload, "the payload")
    params: dict[str, Any] = {
        "network": args.network,
        "peer": args.peer,
        "method": args.method,
        "payload": payload,
    }
    if args.timeout is not None:
        params["timeout_ms"] = max(1, round(args.timeout * 1000))
    with connect(args) as client:
        client.sock.settimeout(None)  # the daemon enforces the call's deadline
        try:
            if not args.stream:
                print(json.dumps(_payload_of(client.call("rpc_call", **params))))
                return 0
            request_id = client.call("rpc_call_stream", **params)["request_id"]
            for event in client.events():
                if event.get("request_id") != request_id:
                    continue
                if event["kind"] == "rpc_call_stream_chunk":
                    print(json.dumps(_payload_of(event)), flush=True)
                elif event["kind"] == "rpc_call_stream_end":
                    if "error" in event:
                        error = event["error"]
                        fail(f"stream failed: {error['code']}: {error['message']}")
                    return 0
        except ClientError as exc:
            fail(f"{exc.code}: {exc.message}")
    return 0


def _payload_of(event: dict[str, Any]) -> Any:
    """The JSON payload, or {"payload_b64": …} for a binary one."""
    return {"payload_b64": event["payload_b64"]} if "payload_b64" in event else event["payload"]


def run_serve(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("give the command to run after --", 2)
    try:
        trio.run(_serve, args, command)
    except ClientError as exc:
        fail(f"{exc.code}: {exc.message}")
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(args: argparse.Namespace, command: list[str]) -> None:
    async def handle(payload: Any, ctx: RequestContext) -> Any:
        return await run_command(command, payload, args.timeout)

    async with MeshClient(paths_of(args).socket) as client:
        await client.serve(args.network, args.method, handle)
        print(f"serving {args.method} on {args.network}; Ctrl-C stops", file=sys.stderr)
        await trio.sleep_forever()


async def run_command(command: list[str], payload: Any, timeout: float) -> Any:
    """Run `command` with `payload` as JSON on stdin; its stdout (JSON, else text) answers, a
    failure raises with its stderr as the message."""
    with trio.move_on_after(timeout) as scope:
        done = await trio.run_process(
            command,
            stdin=json.dumps(payload).encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if scope.cancelled_caught:
        raise RuntimeError(f"{command[0]} ran longer than {timeout:g}s")
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip()[-MAX_ERROR_CHARS:]
        raise RuntimeError(detail or f"{command[0]} exited {done.returncode}")
    text = done.stdout.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
