"""`meshactors channel send|subscribe`: publish on a channel, or print what arrives on one."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from meshactors.cli.common import (
    EXIT_USAGE,
    call,
    connect,
    fail,
    fail_with,
    free_words,
    network_of,
    network_option,
    parse_json_arg,
    told_lagged,
)
from meshactors.cli.devices import resolve_device
from meshactors.cli.settings import add_milliseconds_flag
from meshactors.client import ClientError
from meshactors.client.sync import SyncClient
from meshactors.network.channels import MAX_TTL_MS

CHANNEL_SEND_WORDS = "CHANNEL PAYLOAD"  # `channel send`'s free words
SUBSCRIBE_WORDS = "CHANNEL"  # `channel subscribe`'s
RELIABLE_TTL_S = 10.0  # seconds `channel send --reliable` resends before answering `timeout`


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
    sub.add_argument("words", nargs="+", metavar=SUBSCRIBE_WORDS)
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
    with connect(args) as client:
        try:
            client.call("channel_subscribe", network=network, channel=channel)
            for event in client.events():
                if told_lagged(event, "messages"):
                    continue
                if event.get("kind") == "channel_inbound" and event["channel"] == channel:
                    _print_messages(event)
                elif _ended(event, network, channel):
                    _subscribe_again(client, network, channel, str(event.get("reason")))
        except ClientError as exc:
            fail_with(exc)
        except KeyboardInterrupt:
            pass
    return 0


def _ended(event: dict[str, Any], network: str, channel: str) -> bool:
    """Whether `event` says the daemon ended our subscription (`channel_unsubscribed`)."""
    ours = (event.get("network"), event.get("channel")) == (network, channel)
    return event.get("kind") == "channel_unsubscribed" and ours


def _subscribe_again(client: SyncClient, network: str, channel: str, reason: str) -> None:
    """The daemon ended the subscription (its network was removed): subscribe again at once,
    as the client library does, saying on stderr that messages may have been lost; a refusal
    (`no_such_network`, exit 6) ends the command with one line rather than leave it waiting
    for messages that can no longer come."""
    ended = f"{channel} on {network} ended ({reason})"
    try:
        client.call("channel_subscribe", network=network, channel=channel)
    except ClientError as exc:
        fail_with(exc, f"{ended}; subscribing again failed: ")
    print(f"meshactors: {ended}; subscribed again, messages may be lost", file=sys.stderr)


def _print_messages(event: dict[str, Any]) -> None:
    """One JSON line per message (a batch event holds several, in `payloads`)."""
    shown = {key: event[key] for key in event if key not in ("kind", "network", "payloads")}
    for payload in event.get("payloads", []):
        print(json.dumps(shown | {"payload": payload}))
    if "payloads" not in event:
        print(json.dumps(shown))
    sys.stdout.flush()
