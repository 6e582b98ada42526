"""`meshactors network|peers|roster|capabilities|profile|events`: the mesh from the command line."""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from typing import Any

from meshactors.cli import members_cmd
from meshactors.cli.common import (
    EXIT_NOT_FOUND,
    SHORT_ID,
    call,
    connect,
    eviction,
    fail,
    fail_with,
    label_option,
    local_time,
    membership_of,
    network_id_argument,
    network_of,
    network_option,
    parse_json_arg,
    print_json,
    printable,
    report,
    say,
)
from meshactors.cli.devices import resolve_device
from meshactors.client.sync import ClientError
from meshactors.wire.peer import MAX_TEXT_CHARS, PROFILE_STATUSES

EVENT_FIELDS_SHOWN = (
    *("network", "phase", "previous", "status", "reason", "purge", "reconnect"),
    *("since", "oldest_kept", "skipped"),  # the stream's own notices: events_gap, lagged
)
TAGS_CELL_CHARS = 40  # the widest TAGS cell of `meshactors peers` (--json shows every tag)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `network`, `peers`, `roster`, `capabilities`, `profile` and `events` commands."""
    _register_network(commands)
    peers = commands.add_parser("peers", help="a network's peers")
    network_option(peers)
    peers.add_argument("--all", action="store_true", help="also control planes and invisible")
    peers.set_defaults(run=run_peers)
    _register_roster(commands)
    caps_parser = commands.add_parser("capabilities", aliases=["caps"], help="capability adverts")
    caps = caps_parser.add_subparsers(dest="action", required=True)
    caps_set = caps.add_parser("set", help="advertise capabilities in a network")
    network_option(caps_set)
    caps_set.add_argument("--tag", action="append", default=[], help="repeat for several")
    caps_set.add_argument(
        "--app-version",
        default="",
        help=f"your program's version, shown to peers (at most {MAX_TEXT_CHARS} characters)",
    )
    caps_set.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="connections your program takes, told to peers as is (0-2^31, default 0)",
    )
    caps_set.add_argument(
        "--extra", default="{}", help="any JSON object, passed on untouched (default %(default)s)"
    )
    caps_set.set_defaults(run=run_caps_set)
    profile = commands.add_parser("profile", help="your profile").add_subparsers(
        dest="action", required=True
    )
    profile_set = profile.add_parser(
        "set", help="change the global (or one network's) profile; fields not given are kept"
    )
    profile_set.add_argument("-n", "--network", default=None, help="only this network")
    profile_set.add_argument("--display-name", default=None, help='"" clears it')
    profile_set.add_argument(
        "--status", choices=PROFILE_STATUSES, default=None, help="what peers see you doing"
    )
    profile_set.add_argument("--summary", default=None, help='"" clears it')
    shown = profile_set.add_mutually_exclusive_group()
    shown.add_argument(
        "--invisible", dest="visible", action="store_false", help="hide from peers' lists"
    )
    shown.add_argument("--visible", dest="visible", action="store_true", help="show again")
    profile_set.set_defaults(run=run_profile_set, visible=None)
    profile_show = profile.add_parser("show", help="your global (or one network's) profile")
    profile_show.add_argument("-n", "--network", default=None, help="in this network")
    profile_show.set_defaults(run=run_profile_show)
    events = commands.add_parser("events", help="follow the daemon's events (Ctrl-C stops)")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--since", type=int, default=None, help="replay events after this id")
    events.set_defaults(run=run_events)


def _register_network(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    actions = commands.add_parser("network", help="join, change and leave networks")
    network = actions.add_subparsers(dest="action", required=True)
    add = network.add_parser("add", help="join a network through one or more brokers")
    network_id_argument(add)
    add.add_argument("--broker", action="append", required=True, help="ws://HOST:PORT/v1")
    label_option(add, "the network")
    add.add_argument(
        "--auto-approve",
        action="store_true",
        help="approve every device seen in it, without `roster approve` (default: off)",
    )
    add.set_defaults(run=run_network_add)
    update = network.add_parser("update", help="change a joined network's config")
    network_id_argument(update)
    update.add_argument("--broker", action="append", default=None, help="replaces the list")
    label_option(update, "the network", "unchanged")
    update.add_argument(
        "--auto-approve",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="auto_approve",
        help="approve every device seen from now on, or stop (default: unchanged)",
    )
    update.set_defaults(run=run_network_update)
    remove = network.add_parser("remove", help="leave a network")
    network_id_argument(remove)
    remove.add_argument("--purge", action="store_true", help="also its settings and messages")
    remove.set_defaults(run=run_network_remove)
    listing = network.add_parser("list", help="joined networks and their phases")
    listing.set_defaults(run=run_network_list)
    members_cmd.register_network_actions(network)


def _register_roster(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    roster = commands.add_parser("roster", help="approve, deny and forget devices")
    actions = roster.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="a network's roster")
    network_option(listing)
    listing.set_defaults(run=run_roster_list)
    for name, run, text in (
        ("approve", run_roster_approve, "approve a device"),
        ("deny", run_roster_deny, "deny a device"),
        ("remove", run_roster_remove, "forget a device (cut off at once)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("device_id", help="a device id, its first 8+ characters, or a label")
        network_option(action)
        if name == "approve":
            label_option(action, "the device", "the one it had")
        action.set_defaults(run=run)


def _short(device_id: str) -> str:
    return device_id[:SHORT_ID]


def _listing(
    args: argparse.Namespace,
    items: list[dict[str, Any]],
    empty: str,
    header: list[str],
    row: Callable[[dict[str, Any]], list[str]],
) -> int:
    """Print `items` as JSON with --json, else as a table of one `row` each (or `empty`),
    every cell `printable`: a peer's or broker's words stay in their cell."""
    if args.json:
        print_json(items)
        return 0
    if not items:
        say(empty)
        return 0
    rows = [header, *([printable(cell) for cell in row(item)] for item in items)]
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(header))]
    for cells in rows:
        say("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)))
    return 0


def run_network_add(args: argparse.Namespace) -> int:
    config = {"id": args.id, "brokers": args.broker, "auto_approve": args.auto_approve}
    if args.label is not None:
        config["label"] = args.label
    answer = call(args, "network_add", config=config)
    return report(args, answer, f"{'joined' if answer['added'] else 'already joined'} {args.id}")


def run_network_update(args: argparse.Namespace) -> int:
    current = next((n for n in call(args, "networks_list")["networks"] if n["id"] == args.id), None)
    if current is None:
        fail(f"not joined to a network {args.id!r}", EXIT_NOT_FOUND, "no_such_network")
    config = {
        "id": args.id,
        "brokers": args.broker if args.broker is not None else current["brokers"],
        "label": args.label if args.label is not None else current["label"],
        "auto_approve": current["auto_approve"] if args.auto_approve is None else args.auto_approve,
    }
    answer = call(args, "network_update", config=config)
    text = f"updated {args.id}{' (reconnecting)' if answer['reconnect'] else ''}"
    return report(args, answer, text)


def run_network_remove(args: argparse.Namespace) -> int:
    answer = call(args, "network_remove", network=args.id, purge=args.purge)
    dropped = f", {answer['purged_unsent']} undelivered sends dropped"
    purged = f" and purged its data{dropped}" if args.purge else ""
    return report(args, answer, f"left {args.id}{purged}")


def run_network_list(args: argparse.Namespace) -> int:
    networks = call(args, "networks_list")["networks"]
    header = ["ID", "PHASE", "LABEL", "AUTO", "LINK", "ACTIVE", "BROKERS", "LINK ERROR"]
    return _listing(args, networks, "no networks joined", header, _network_row)


def _network_row(n: dict[str, Any]) -> list[str]:
    auto = "yes" if n["auto_approve"] else "no"
    active, brokers = str(n["peers"]["active"]), " ".join(n["brokers"])
    error = n["link_error"]
    problem = "-" if error is None else f"{error['kind']}: {error['reason']}"
    problem = membership_note(n) or problem  # why its link stays parked, or no peer is active
    return [n["id"], n["phase"], n["label"] or "-", auto, n["link"], active, brokers, problem]


def membership_note(network: dict[str, Any]) -> str | None:
    """For a closed network (as networks_list and status show it) this device was evicted
    from, `evicted by DEVICE at TIME`; one whose invite was refused, `invite refused by
    DEVICE: REASON`; None otherwise."""
    if (evicted := eviction(network)) is not None:
        return f"evicted by {_short(evicted['by'])} at {local_time(evicted['at'])}"
    refused = membership_of(network).get("invite_refused")
    if refused is not None:
        return f"invite refused by {_short(refused['by'])}: {refused['reason']}"
    return None


def run_peers(args: argparse.Namespace) -> int:
    peers = call(args, "peers_list", network=network_of(args), all=args.all)["peers"]
    header = ["DEVICE", "LABEL", "STATUS", "ROLE", "RTT", "NAME", "TAGS"]
    return _listing(args, peers, "no peers", header, _peer_row)


def _peer_row(p: dict[str, Any]) -> list[str]:
    rtt = "-" if p["rtt_ms"] is None else f"{p['rtt_ms']:.1f}ms"
    name = (p["profile"] or {}).get("display_name") or "-"
    tags = tags_cell((p["capabilities"] or {}).get("tags", []))
    status = p["status"] if not p["incompatible"] else f"incompatible ({p['incompatible']})"
    return [_short(p["device_id"]), p["label"] or "-", status, p["role"] or "-", rtt, name, tags]


def tags_cell(tags: list[str]) -> str:
    """A peer's tags for its row, within TAGS_CELL_CHARS: as many as fit, comma-separated,
    then `+N` for the N left out (a first tag too long is cut, ending in `…`), so one peer's
    long advert does not widen every row of the table; `-` for none."""
    cell = ",".join(tags)
    if len(cell) <= TAGS_CELL_CHARS:
        return cell or "-"
    for shown in range(len(tags) - 1, 0, -1):
        cell = ",".join(tags[:shown]) + f",+{len(tags) - shown}"
        if len(cell) <= TAGS_CELL_CHARS:
            return cell
    rest = "…" + (f",+{len(tags) - 1}" if len(tags) > 1 else "")
    return tags[0][: TAGS_CELL_CHARS - len(rest)] + rest


def run_roster_list(args: argparse.Namespace) -> int:
    roster = call(args, "roster_list", network=network_of(args))["roster"]
    return _listing(
        args,
        roster,
        "roster is empty",
        ["DEVICE", "LABEL", "STATE", "STATUS"],
        lambda r: [r["device_id"], r["label"] or "-", r["state"], r["status"]],
    )


def run_roster_approve(args: argparse.Namespace) -> int:
    network = network_of(args)
    device = resolve_device(args, args.device_id, network)
    answer = call(args, "roster_approve", network=network, device_id=device, label=args.label)
    text = f"approved {_short(device)} in {network} (now {answer['peer']['status']})"
    return report(args, answer, text)


def run_roster_deny(args: argparse.Namespace) -> int:
    network = network_of(args)
    device = resolve_device(args, args.device_id, network)
    answer = call(args, "roster_deny", network=network, device_id=device)
    return report(args, answer, f"denied {_short(device)} in {network}")


def run_roster_remove(args: argparse.Namespace) -> int:
    network = network_of(args)
    device = resolve_device(args, args.device_id, network)
    answer = call(args, "roster_remove", network=network, device_id=device)
    return report(args, answer, f"removed {_short(device)} from {network}")


def run_caps_set(args: argparse.Namespace) -> int:
    extra = parse_json_arg(args.extra, "--extra")
    capabilities = {
        "tags": args.tag,
        "app_version": args.app_version,
        "max_connections": args.max_connections,
        "extra": extra,
    }
    network = network_of(args)
    answer = call(args, "capabilities_set", network=network, capabilities=capabilities)
    return report(args, answer, f"capabilities set in {network}")


def run_profile_set(args: argparse.Namespace) -> int:
    given = {
        "display_name": args.display_name,
        "status": args.status,
        "summary": args.summary,
        "visible": args.visible,
        "network": args.network,
    }
    params = {key: value for key, value in given.items() if value is not None}
    answer = call(args, "profile_set", **params)
    return report(args, answer, f"profile set{' in ' + args.network if args.network else ''}")


def run_profile_show(args: argparse.Namespace) -> int:
    params = {} if args.network is None else {"network": args.network}
    shown = call(args, "profile_get", **params)
    if args.json:
        print_json(shown)
        return 0
    profile = shown["profile"]
    scope = "global" if args.network is None or shown["inherited"] else args.network
    say(f"display_name  {profile['display_name'] or '-'}")
    say(f"status        {profile['status']}")
    say(f"summary       {profile['summary'] or '-'}")
    say(f"visible       {'yes' if profile['visible'] else 'no'}")
    say(f"scope         {scope}")
    return 0


def run_events(args: argparse.Namespace) -> int:
    with connect(args) as client:
        try:
            params = {} if args.since is None else {"since": args.since}
            try:
                client.call("events_subscribe", **params)
            except ClientError as exc:
                fail_with(exc, "cannot start the event stream: ")
            for event in client.events():
                print(format_event(event, as_json=args.json), flush=True)
        except ClientError as exc:
            fail_with(exc, "event stream ended: ")
        except KeyboardInterrupt:
            pass
    return 0


def format_event(event: dict[str, Any], *, as_json: bool) -> str:
    """One event as a readable line (time, id, kind, the fields that say what happened)."""
    if as_json:
        return json.dumps(event, separators=(",", ":"), sort_keys=True)
    at = event.get("at_ms")
    when = (
        datetime.datetime.fromtimestamp(at / 1000).strftime("%H:%M:%S")
        if isinstance(at, int)
        else "--:--:--"
    )
    parts = [when, f"#{event.get('event_id', '-')}", str(event.get("kind"))]
    if "device_id" in event:
        label = event.get("label")
        parts.append(_short(event["device_id"]) + (f" ({label})" if label else ""))
    parts += [f"{key}={event[key]}" for key in EVENT_FIELDS_SHOWN if key in event]
    return printable("  ".join(parts))
