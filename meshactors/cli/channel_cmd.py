"""`meshactors channel send|subscribe`: publish on a channel, or print what arrives on one."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from meshactors.cli.common import (
    EXIT_USAGE,
    call,
    fail,
    fail_with,
    free_words,
    network_of,
    network_option,
    parse_json_arg,
    paths_of,
    say,
    told_lagged,
)
from meshactors.cli.devices import resolve_device
from meshactors.cli.settings import add_milliseconds_flag
from meshactors.client import (
    ChannelMessage,
    ClientError,
    EventStream,
    Lagged,
    MeshClient,
)
from meshactors.client.mesh import ChannelItem
from meshactors.network.channels import MAX_TTL_MS, REMOVED

CHANNEL_SEND_WORDS = "CHANNEL PAYLOAD"  # `channel send`'s free words
SUBSCRIBE_WORDS = "CHANNEL"  # `channel subscribe`'s
RELIABLE_TTL_S = 10.0  # seconds `channel send --reliable` resends before answering `timeout`
LOST_DAEMON = "lost the daemon; messages sent until it is back are lost"  # `channel subscribe`


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `channel send` and `channel subscribe` (alias `sub`) commands."""
    channel = commands.add_parser("channel", help="publish and subscribe").add_subparsers(
        dest="action", required=True
    )
    send = channel.add_parser("send", help="publish JSON to every active peer, or --to one")
    network_option(send)
    send.add_argument("words", nargs="+", metavar=CHANNEL_SEND_WORDS, help="PAYLOAD: JSON")
    send.add_argument("--to", default=None, metavar="PEER", help="only this device (id or label)")
    send.add_argument("--retain", action="store_true", help="late subscribers get it too")
    send.add_argument(
        "--reliable",
        action="store_true",
        help="with --to an active peer: resend until its daemon acknowledges, answer who "
        "received it; a peer not active now fails at once (exit 7; `send` queues for later)",
    )
    add_milliseconds_flag(
        send,
        "--ttl",
        max_ms=MAX_TTL_MS,
        default_s=RELIABLE_TTL_S,
        help="with --reliable: how long it keeps resending",
    )
    send.set_defaults(run=run_send)
    sub = channel.add_parser(
        "subscribe",
        aliases=["sub"],
        help="print each message as a JSON line (Ctrl-C stops); exits 6 once the network is "
        "removed",
    )
    network_option(sub)
    sub.add_argument("words", nargs="+", metavar=SUBSCRIBE_WORDS, help="one channel's name")
    sub.set_defaults(run=run_sub)


def run_send(args: argparse.Namespace) -> int:
    if args.reliable and (args.to is None or args.retain):
        fail("--reliable goes to one peer: give --to PEER (and no --retain)", EXIT_USAGE)
    if args.ttl_ms is not None and not args.reliable:
        fail("--ttl is how long --reliable resends: give --reliable too", EXIT_USAGE)
    words = free_words(args, "channel send", CHANNEL_SEND_WORDS, "quote a payload with spaces")
    network = network_of(args)
    params: dict[str, Any] = {
        "network": network,
        "channel": words[0],
        "payload": parse_json_arg(words[1], "the payload"),
    }
    if args.reliable:
        peer = resolve_device(args, args.to, network)
        ttl_ms = round(RELIABLE_TTL_S * 1000) if args.ttl_ms is None else args.ttl_ms
        answer = call(args, "channel_send_reliable", peer=peer, ttl_ms=ttl_ms, **params)
        print(json.dumps(answer))
        return 0
    params["retain"] = args.retain
    if args.to is None:
        answer = call(args, "channel_send_all", **params)
    else:
        peer = resolve_device(args, args.to, network)
        answer = call(args, "channel_send_to", peer=peer, **params)
    print(json.dumps(answer))
    return 0


def run_sub(args: argparse.Namespace) -> int:
    (channel,) = free_words(args, "channel subscribe", SUBSCRIBE_WORDS, "one channel at a time")
    network = network_of(args)
    try:
        refused = trio.run(_follow, paths_of(args).socket, network, channel)
    except ClientError as exc:
        fail_with(exc)
    except KeyboardInterrupt:
        return 0
    if refused is not None:
        fail_with(refused, f"{_ended(network, channel)}; subscribing again failed: ")
    return 0


async def _follow(socket: Path, network: str, channel: str) -> ClientError | None:
    """Print the channel's messages through the client library's `subscribe`, which restores
    the subscription after a reconnect and after the daemon ended it (its network was
    removed), until Ctrl-C; the refusal that ended the reader for good (`no_such_network`) is
    returned, for the command to exit with it."""
    async with MeshClient(socket) as client:
        with client.events() as events:  # before the subscribe: no client event goes unseen
            async with client.subscribe(network, channel) as reader:
                refused = None
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_tell_resubscribed, events, network, channel)
                        refused = await _print_items(reader)
                        nursery.cancel_scope.cancel()
                except* KeyboardInterrupt:  # Ctrl-C, which the nursery wraps: a stop as well
                    pass
    return refused


async def _print_items(reader: AsyncIterator[ChannelItem | Lagged]) -> ClientError | None:
    """One JSON line per message, a line on stderr where some may have been lost; the refusal
    that ended the reader, if one did."""
    try:
        async for item in reader:
            if isinstance(item, ChannelMessage):
                _print_message(item)
            elif isinstance(item, Lagged) or item.reason == "lagged":
                told_lagged({"kind": "lagged", "skipped": item.skipped}, "messages")
            elif item.reason == "disconnected":
                say(f"meshactors: {LOST_DAEMON}", file=sys.stderr, flush=True)
    except ClientError as exc:
        return exc
    return None


async def _tell_resubscribed(events: EventStream, network: str, channel: str) -> None:
    """Say on stderr when the library subscribed again after the daemon ended the channel."""
    async for event in events:
        ours = (event.get("network"), event.get("channel")) == (network, channel)
        if event.get("kind") == "client_resubscribed" and ours:
            said = f"{_ended(network, channel)}; subscribed again, messages may be lost"
            say(f"meshactors: {said}", file=sys.stderr, flush=True)


def _ended(network: str, channel: str) -> str:
    """How `channel subscribe` says the daemon ended its subscription (the network was removed:
    the only reason the daemon has)."""
    return f"{channel} on {network} ended ({REMOVED})"


def _print_message(message: ChannelMessage) -> None:
    """The message as a JSON line, as the daemon's `channel_inbound` carries it."""
    shown: dict[str, Any] = {"from": message.peer, "channel": message.channel}
    if message.data is None:
        shown["payload"] = message.payload
    else:
        shown["payload_b64"] = base64.b64encode(message.data).decode()
    if message.retained:
        shown["retained"] = True
    print(json.dumps(shown), flush=True)
