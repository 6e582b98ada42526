"""`meshactors stream send|serve`: pipe bytes to a peer's program, or serve a method with a
command whose stdin and stdout are the stream (docs/protocol.md, "Binary streams")."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys

import trio

from meshactors.cli.common import (
    NETWORK_WORD,
    fail_with,
    interrupted,
    network_option,
    paths_of,
    words_after_network,
)
from meshactors.cli.devices import resolve_device
from meshactors.cli.served import (
    Receive,
    command_running,
    serve_until_stopped,
    served_command,
)
from meshactors.cli.settings import add_timeout_flag
from meshactors.client import BinaryStream, ClientError, MeshClient
from meshactors.exception_groups import first_leaf

COPY_BYTES = 256 * 1024  # bytes read from stdin or a command's stdout per write to the stream


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `stream send` and `stream serve` commands."""
    stream = commands.add_parser("stream", help="binary streams between programs").add_subparsers(
        dest="action", required=True
    )
    send = stream.add_parser(
        "send", help="send stdin to PEER's program serving METHOD; what it sends back → stdout"
    )
    network_option(send)
    send.add_argument(
        "words",
        nargs="+",
        metavar="[NETWORK] PEER METHOD",
        help=f"PEER: a device id, 8+ characters of it or a label; {NETWORK_WORD}",
    )
    add_timeout_flag(send, help="to wait for accept")
    send.set_defaults(run=run_send)
    serve = stream.add_parser(
        "serve", help="serve METHOD: run CMD per stream, its stdin and stdout the stream's bytes"
    )
    network_option(serve)
    serve.add_argument(
        "method",
        metavar="[NETWORK] METHOD",
        help=f"the method to claim; {NETWORK_WORD}",
    )
    serve.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…")
    serve.set_defaults(run=run_serve)


async def pump(receive: Receive, stream: BinaryStream) -> None:
    """Copy a source (`receive` its next bytes) into the stream until it ends."""
    while data := await receive(COPY_BYTES):
        await stream.send_all(data)


async def drain(stream: BinaryStream, sink: trio.abc.SendStream) -> bool:
    """Copy what the other end sends into `sink` until it ends; False when the sink's reader
    went away first (`| head` has all it wanted)."""
    while data := await stream.receive_some():
        try:
            await sink.send_all(data)
        except trio.BrokenResourceError:
            return False
    return True


def run_send(args: argparse.Namespace) -> int:
    peer, method = words_after_network(args, args.words, 2)
    peer = resolve_device(args, peer, args.network)
    try:
        try:
            trio.run(_send, args, peer, method, args.timeout_ms)
        except* KeyboardInterrupt:  # Ctrl-C: closing the stream resets it for the other end
            interrupted("the stream was cancelled")
    except ClientError as exc:
        fail_with(exc)
    return 0


async def _send(args: argparse.Namespace, peer: str, method: str, timeout_ms: int | None) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    stdout = trio.lowlevel.FdStream(os.dup(sys.stdout.fileno()))
    async with MeshClient(paths_of(args).socket) as client, stdin, stdout:
        stream = await client.open_stream(args.network, peer, method, timeout_ms=timeout_ms)
        try:
            async with stream:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send_all, stdin, stream)
                    if not await drain(stream, stdout):  # stdout's reader left: close the
                        nursery.cancel_scope.cancel()  # stream unfinished, which resets it
                        return  # (`cancelled`) for the other end, and exit 0 as after `| head`
                await stream.finish()  # a failure after the other end's end still counts
        except* ClientError as failed:
            raise first_leaf(failed) from None


async def _send_all(source: trio.abc.ReceiveStream, stream: BinaryStream) -> None:
    """Send stdin, then the end; a stream the daemon closed says why on the reading side."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await pump(source.receive_some, stream)
        await stream.send_eof()


def run_serve(args: argparse.Namespace) -> int:
    words, command = served_command("stream serve", args.method, args.command)
    (method,) = words_after_network(args, words, 1)
    try:
        trio.run(_serve, args, method, command)
    except ClientError as exc:
        fail_with(exc)
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(args: argparse.Namespace, method: str, command: list[str]) -> None:
    async def handle(stream: BinaryStream) -> None:
        await run_piped(command, stream)

    async def claim(client: MeshClient) -> None:
        await client.serve_stream(args.network, method, handle)

    await serve_until_stopped(paths_of(args).socket, args.network, method, claim)


async def run_piped(command: list[str], stream: BinaryStream) -> None:
    """Run `command` with the stream's bytes on its stdin and its stdout into the stream; a
    failure raises with its exit status and stderr's tail (the stream is reset with it), as
    does a reset of the stream while it runs, which kills it. After an exit 0 its stdout is
    copied to its end; after a failed one, as long as more comes within PIPES_CLOSE_GRACE
    (`CommandPipes`): a process that left its group may hold stdout open for ever. Once it
    has exited and its stdout ended, what it left running in its group is killed."""
    watching = trio.CancelScope()

    async def feed(stdin: trio.abc.SendStream) -> None:
        """The stream's bytes into stdin; then, until the command is done, the stream read
        for its reset (the opener cancelled): a silent command would never see it."""
        with watching:
            async with stdin:
                with contextlib.suppress(trio.BrokenResourceError):  # the connection broke
                    await drain(stream, stdin)  # False: it stopped reading, fine
            await stream.finish()  # raises (our end is not sent yet) unless cancelled first

    async with (
        trio.open_nursery() as nursery,
        command_running(command, subprocess.PIPE, nursery) as pipes,
    ):
        assert pipes.process.stdin is not None
        nursery.start_soon(feed, pipes.process.stdin)
        await pump(pipes.receive_output, stream)
        failure = await pipes.exit_failure()
        watching.cancel()
    if failure is not None:  # before our end: the opener reads the failure, not a clean end
        raise failure
    await stream.send_eof()
