"""`meshactors state get|set|delete|list|watch [NETWORK] ...`: a network's replicated state."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from meshactors.cli.common import (
    NETWORK_WORD,
    call,
    connect,
    fail_with,
    limit_option,
    network_option,
    parse_json_arg,
    print_json,
    report,
    say,
    told_lagged,
    words_after_network,
)
from meshactors.client import ClientError, SyncClient


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `state` commands: each takes the network as `-n NET` (the only joined one by
    default) or as its first word (`state set NET KEY VALUE`)."""
    state = commands.add_parser("state", help="a network's shared key-value state").add_subparsers(
        dest="action", required=True
    )
    get = state.add_parser("get", help="print a key's value as JSON")
    network_option(get)
    get.add_argument("words", nargs="+", metavar="[NETWORK] KEY", help=NETWORK_WORD)
    get.set_defaults(run=run_get, arity=1)
    put = state.add_parser("set", help="set a key to a JSON value on every member")
    network_option(put)
    put.add_argument(
        "words",
        nargs="+",
        metavar="[NETWORK] KEY VALUE",
        help=f"VALUE: JSON, e.g. '\"dark\"'; {NETWORK_WORD}",
    )
    put.set_defaults(run=run_set, arity=2)
    delete = state.add_parser("delete", help="delete a key on every member")
    network_option(delete)
    delete.add_argument("words", nargs="+", metavar="[NETWORK] KEY", help=NETWORK_WORD)
    delete.set_defaults(run=run_delete, arity=1)
    listing = state.add_parser("list", help="print keys and values, in key order")
    network_option(listing)
    listing.add_argument("words", nargs="*", metavar="[NETWORK]", help=NETWORK_WORD)
    listing.add_argument("--prefix", default="", help="only keys starting with it")
    limit_option(listing, "keys")
    listing.add_argument("--cursor", default=None, help="next_cursor of the previous page")
    listing.set_defaults(run=run_list, arity=0)
    watch = state.add_parser("watch", help="print each change as a JSON line (Ctrl-C stops)")
    network_option(watch)
    watch.add_argument("words", nargs="*", metavar="[NETWORK]", help=NETWORK_WORD)
    watch.add_argument("--prefix", default="", help="only keys starting with it")
    watch.set_defaults(run=run_watch, arity=0)


def _words(args: argparse.Namespace) -> list[str]:
    """The command's words after its network (the first word, or -n)."""
    return words_after_network(args, args.words, args.arity)


def run_get(args: argparse.Namespace) -> int:
    (key,) = _words(args)
    answer = call(args, "state_get", network=args.network, key=key)
    return report(args, answer, json.dumps(answer["value"]))


def run_set(args: argparse.Namespace) -> int:
    key, text = _words(args)
    value = parse_json_arg(text, "the value")
    answer = call(args, "state_set", network=args.network, key=key, value=value)
    return report(args, answer, f"set {key} (version {answer['version']})")


def run_delete(args: argparse.Namespace) -> int:
    (key,) = _words(args)
    answer = call(args, "state_delete", network=args.network, key=key)
    return report(args, answer, f"deleted {key} (version {answer['version']})")


def run_list(args: argparse.Namespace) -> int:
    _words(args)
    page = call(
        args,
        "state_list",
        network=args.network,
        prefix=args.prefix,
        limit=args.limit,
        **({"cursor": args.cursor} if args.cursor is not None else {}),
    )
    if args.json:
        print_json(page)
        return 0
    for entry in page["entries"]:
        say(f"{entry['key']}\t{json.dumps(entry['value'])}")
    if page["next_cursor"] is not None:
        hint = shlex.quote(page["next_cursor"])  # a key may hold spaces and quotes
        say(f"meshactors: more after --cursor {hint}", file=sys.stderr)
    return 0


def run_watch(args: argparse.Namespace) -> int:
    _words(args)
    with connect(args) as client:
        try:
            client.call("events_subscribe")
            _check_network(client, args.network)
            for event in client.events():
                if told_lagged(event, "events (`state list` shows the map now)"):
                    continue
                if (
                    event.get("kind") == "state_changed"
                    and event.get("network") == args.network
                    and str(event.get("key", "")).startswith(args.prefix)
                ):
                    shown = {k: event[k] for k in ("key", "value", "deleted", "by", "version")}
                    print(json.dumps(shown))
                    sys.stdout.flush()
        except ClientError as exc:
            fail_with(exc)
        except KeyboardInterrupt:
            pass
    return 0


def _check_network(client: SyncClient, network: str) -> None:
    """Exit as the other state commands do (6, `no_such_network`) when `network` is not
    joined, rather than wait for its changes for ever: asked with a one-key `state_list`
    after subscribing, so no change made once it answers goes unseen."""
    try:
        client.call("state_list", network=network, limit=1)
    except ClientError as exc:
        fail_with(exc, "state watch failed: ")
