"""`meshactors channel send|sub`: publish on a channel, or print what arrives on one."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from meshactors.cli.common import call, connect, fail, parse_json_arg
from meshactors.client import ClientError


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `channel send` and `channel sub` commands."""
    channel = commands.add_parser("channel", help="publish and subscribe").add_subparsers(
        dest="action", required=True
    )
    send = channel.add_parser("send", help="publish JSON to every active peer, or --to one")
    send.add_argument("network")
    send.add_argument("channel")
    send.add_argument("payload", help="JSON")
    send.add_argument("--to", default=None, metavar="PEER", help="only this device id")
    send.add_argument("--retain", action="store_true", help="late subscribers get it too")
    send.set_defaults(run=run_send)
    sub = channel.add_parser("sub", help="print each message as a JSON line (Ctrl-C stops)")
    sub.add_argument("network")
    sub.add_argument("channel")
    sub.set_defaults(run=run_sub)


def run_send(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {
        "network": args.network,
        "channel": args.channel,
        "payload": parse_json_arg(args.payload, "the payload"),
        "retain": args.retain,
    }
    if args.to is None:
        answer = call(args, "channel_send_all", **params)
    else:
        answer = call(args, "channel_send_to", peer=args.to, **params)
    print(json.dumps(answer))
    return 0


def run_sub(args: argparse.Namespace) -> int:
    with connect(args) as client:
        try:
            client.call("channel_subscribe", network=args.network, channel=args.channel)
            for event in client.events():
                if event.get("kind") == "lagged":
                    print(f"meshactors: missed {event.get('skipped')} messages", file=sys.stderr)
                elif event.get("kind") == "channel_inbound" and event["channel"] == args.channel:
                    _print_messages(event)
        except ClientError as exc:
            fail(f"{exc.code}: {exc.message}")
        except KeyboardInterrupt:
            pass
    return 0


def _print_messages(event: dict[str, Any]) -> None:
    """One JSON line per message (a batch event holds several, in `payloads`)."""
    shown = {key: event[key] for key in event if key not in ("kind", "network", "payloads")}
    for payload in event.get("payloads", []):
        print(json.dumps(shown | {"payload": payload}))
    if "payloads" not in event:
        print(json.dumps(shown))
    sys.stdout.flush()
