"""`meshactors send|inbox|outbox`: durable messages from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from meshactors.cli.common import (
    EXIT_NOT_FOUND,
    SHORT_ID,
    call,
    fail,
    free_words,
    joined_networks,
    limit_option,
    local_time,
    network_of,
    network_option,
    parse_json_arg,
    print_json,
    printable,
    report,
    say,
)
from meshactors.cli.devices import resolve_device, resolve_device_anywhere
from meshactors.wire.ipc import PRIORITIES

STATUS_FLAGS = {  # outbox list filters: a row's status (docs/protocol.md, "Row status"), each
    "pending": "only rows waiting for a delivery",
    "inflight": "only rows with a delivery on its way",
    "done": "only rows delivered to every recipient",
    "dead": "only rows finished with a delivery given up (`outbox requeue` retries it)",
    "aborted": "only rows aborted or requeued",
}
SEND_WORDS = "TO MESSAGE"  # `send`'s free words


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `send`, `inbox` and `outbox` commands."""
    send = commands.add_parser("send", help="queue a durable message (returns at once)")
    network_option(send)
    send.add_argument(
        "words",
        nargs="+",
        metavar=SEND_WORDS,
        help="TO: a device (id, 8+ characters of it, "
        "or label), '*' (every approved peer) or '@tag'",
    )
    send.add_argument(
        "--priority",
        choices=PRIORITIES,
        default="next",
        help="queue order: every due 'now' goes before any 'next', 'next' before 'low' "
        "(default %(default)s)",
    )
    send.add_argument("--meta", default=None, help="a JSON object sent with the message")
    send.add_argument("--reply-to", default=None, help="client_message_id this answers")
    send.add_argument("--client-id", default=None, help="idempotency key (default: minted)")
    send.set_defaults(run=run_send)
    inbox = commands.add_parser("inbox", help="received messages, oldest first")
    network_option(inbox, "only this network")
    inbox.add_argument("--from", dest="sender", default=None, help="only from this device")
    inbox.add_argument("--since", type=int, default=None, help="received at or after (ms)")
    limit_option(inbox, "messages")
    inbox.add_argument("--cursor", default=None, help="next_cursor of the previous page")
    inbox.set_defaults(run=run_inbox)
    outbox = commands.add_parser("outbox", help="queued sends").add_subparsers(
        dest="action", required=True
    )
    listing = outbox.add_parser("list", help="sends, newest first")
    flags = listing.add_mutually_exclusive_group()
    for status, text in STATUS_FLAGS.items():
        flags.add_argument(
            f"--{status}", dest="status", action="store_const", const=status, help=text
        )
    network_option(listing, "only this network")
    limit_option(listing, "rows")
    listing.add_argument("--cursor", default=None, help="next_cursor of the previous page")
    listing.set_defaults(run=run_outbox_list)
    requeue = outbox.add_parser("requeue", help="send a dead row again")
    requeue.add_argument("id", help="a dead row's id, as `send` and `outbox list` print it")
    requeue.add_argument(
        "--new-client-id",
        default=None,
        help="the new row's idempotency key (default: minted); it goes out as the same message",
    )
    requeue.set_defaults(run=run_outbox_requeue)
    abort = outbox.add_parser(
        "abort",
        help="give up a send not finished yet (pending, inflight or dead): it is never sent"
        " again; an attempt already on its way may still arrive",
    )
    abort.add_argument("id", help="the row's id, as `send` and `outbox list` print it")
    abort.set_defaults(run=run_outbox_abort)


def _call_given(args: argparse.Namespace, op: str, **values: Any) -> Any:
    """Call `op` with the options the user gave; a None value is one left out."""
    return call(args, op, **{key: value for key, value in values.items() if value is not None})


def run_send(args: argparse.Namespace) -> int:
    to, message = free_words(args, "send", SEND_WORDS, "quote a message with spaces")
    meta = None if args.meta is None else parse_json_arg(args.meta, "--meta")
    network = network_of(args)
    if to != "*" and not to.startswith("@"):
        to = resolve_device(args, to, network)
    answer = _call_given(
        args,
        "send",
        network=network,
        to=to,
        message=message,
        priority=args.priority,
        meta=meta,
        reply_to_id=args.reply_to,
        client_message_id=args.client_id,
    )
    if args.json:
        print_json(answer)
    else:
        say(f"{answer['outcome']} {answer['id']} (client id {answer['client_message_id']})")
    return 0


def run_inbox(args: argparse.Namespace) -> int:
    if args.sender is None:
        sender = None
    elif args.network is None:  # every network's inbox: the sender may be in any of them
        sender = resolve_device_anywhere(args, args.sender)
    elif args.network not in joined_networks(args):  # left, inbox kept: its peers are gone
        _check_scope(args, [], "inbox", "messages")  # a typo, not a network left, exits 6
        sender = resolve_device_anywhere(args, args.sender, unjoined=args.network)
    else:
        sender = resolve_device(args, args.sender)
    filters = {"network": args.network, "since": args.since, "from": sender}
    answer = _call_given(args, "inbox", limit=args.limit, cursor=args.cursor, **filters)
    _check_scope(args, answer["messages"], "inbox", "messages")
    if args.json:
        print_json(answer)
        return 0
    for m in answer["messages"]:
        received = local_time(m["received_at"])
        say(f"{received}  {m['network']}  {m['from'][:SHORT_ID]}  {printable(str(m['message']))}")
    if _has_next_page(args, "inbox", "messages", answer, answer["more"], **filters):
        say(f"(next page: --cursor {answer['next_cursor']})")
    return 0


def _check_scope(args: argparse.Namespace, found: list[Any], op: str, key: str) -> None:
    """Exit 6 when -n names no joined network and `op` (whose answer lists under `key`) finds
    nothing of it at all: a typo, not an empty list (a network left without --purge keeps its
    messages, so they are listed). Asked unfiltered: kept messages that the page's filters
    (--from, --cursor, a status) leave out still make the network one."""
    if found or args.network is None or args.network in joined_networks(args):
        return
    if call(args, op, network=args.network, limit=1)[key]:
        return
    message = f"no network {args.network!r} is joined, and no message of one by that id matches"
    fail(message, EXIT_NOT_FOUND, "no_such_network")


def _has_next_page(
    args: argparse.Namespace, op: str, key: str, page: dict[str, Any], cut: bool, **filters: Any
) -> bool:
    """Whether anything follows `page` of `op` (listed under `key`, asked with `filters`),
    which the daemon says it `cut` short (the inbox's `more`, the outbox's `next_cursor`):
    never the page's length alone, as a page of large rows is cut before its limit (then
    the row that did not fit follows), and a page cut at its limit may hold the last row."""
    if not cut:
        return False
    if len(page[key]) < args.limit:
        return True
    after = _call_given(args, op, limit=1, cursor=page["next_cursor"], **filters)
    return bool(after[key])


def run_outbox_list(args: argparse.Namespace) -> int:
    filters = {"status": args.status, "network": args.network}
    answer = _call_given(args, "outbox_list", limit=args.limit, cursor=args.cursor, **filters)
    rows = answer["rows"]
    _check_scope(args, rows, "outbox_list", "rows")
    if args.json:  # the op's answer, as `inbox` and `state list` print theirs: a script pages
        print_json(answer)  # by passing next_cursor back as --cursor until it is null
        return 0
    if not rows:
        say("outbox is empty" if args.cursor is None else "no older rows")
    else:
        say("\n".join(_row_line(row) for row in rows))
    cut = answer["next_cursor"] is not None
    if _has_next_page(args, "outbox_list", "rows", answer, cut, **filters):
        say(f"(next page: --cursor {answer['next_cursor']})")
    return 0


def _row_line(row: dict[str, Any]) -> str:
    """One outbox row as `outbox list` prints it."""
    destination = row["destination"]
    to = {"all": "*", "tag": "@" + destination["ref"]}.get(
        destination["kind"], destination["ref"][:SHORT_ID]
    )
    done = sum(d["status"] == "done" for d in row["deliveries"])
    error = f"  last_error={printable(row['last_error'])}" if row["last_error"] else ""
    return (
        f"{row['id']}  {row['status']:<8}  {row['network']}  to {to}"
        f"  {done}/{len(row['deliveries'])} delivered{error}"
    )


def run_outbox_requeue(args: argparse.Namespace) -> int:
    answer = _call_given(
        args, "outbox_requeue", outbox_id=args.id, new_client_message_id=args.new_client_id
    )
    row = answer["row"]
    text = f"requeued {args.id} as {row['id']} (client id {row['client_message_id']})"
    return report(args, answer, text)


def run_outbox_abort(args: argparse.Namespace) -> int:
    answer = call(args, "outbox_abort", outbox_id=args.id)
    deliveries = answer["row"]["deliveries"]
    done = sum(d["status"] == "done" for d in deliveries)
    return report(args, answer, f"aborted {args.id} ({done}/{len(deliveries)} delivered)")
