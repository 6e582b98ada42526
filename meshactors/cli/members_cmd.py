"""`meshactors members …` and `network create|import|join-invite`: closed networks."""

from __future__ import annotations

import argparse
from typing import Any

from meshactors.cli.common import (
    SHORT_ID,
    call,
    label_option,
    local_time,
    network_id_argument,
    network_of,
    network_option,
    print_json,
    report,
    say,
)
from meshactors.cli.devices import resolve_device
from meshactors.cli.settings import seconds_flag
from meshactors.membership.part import MAX_TTL_S

ROLES = ("owner", "admin", "member")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `members` command group."""
    members = commands.add_parser("members", help="a closed network's members and invites")
    actions = members.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every device the membership log names")
    network_option(listing)
    listing.set_defaults(run=run_members_list)
    for name, run, text in (
        ("grant", run_members_grant, "grant a device a role"),
        ("revoke", run_members_revoke, "take a role back from a device"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("device_id", help="a device id, its first 8+ characters, or a label")
        action.add_argument("--role", choices=ROLES, default="member", help="default %(default)s")
        network_option(action)
        action.set_defaults(run=run)
    evict = actions.add_parser("evict", help="evict a device for good (a lost or stolen one)")
    evict.add_argument("device_id", help="a device id, its first 8+ characters, or a label")
    network_option(evict)
    evict.set_defaults(run=run_members_evict)
    invite = actions.add_parser("invite", help="print an invite token for new devices")
    network_option(invite)
    invite.add_argument("--role", choices=ROLES, default="member", help="default %(default)s")
    invite.add_argument(
        "--ttl",
        type=seconds_flag(MAX_TTL_S),
        default=24 * 3600.0,
        metavar="SECONDS",
        help=f"it holds (default %(default)g, at most {MAX_TTL_S})",
    )
    invite.add_argument(
        "--uses", type=int, default=1, help="devices it admits (default %(default)s)"
    )
    invite.set_defaults(run=run_members_invite)


def register_network_actions(network: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `network create`, `network import` and `network join-invite`."""
    create = network.add_parser("create", help="create a closed network owned by this device")
    network_id_argument(create)
    create.add_argument("--closed", action="store_true", required=True, help="(required)")
    create.add_argument("--broker", action="append", required=True, help="ws://HOST:PORT/v1")
    label_option(create, "the network")
    create.set_defaults(run=run_network_create)
    imported = network.add_parser("import", help="join a closed network by its bootstrap")
    network_id_argument(imported)
    imported.add_argument("--bootstrap", required=True, help="the owner's bootstrap string")
    imported.add_argument("--broker", action="append", required=True, help="ws://HOST:PORT/v1")
    label_option(imported, "the network")
    imported.set_defaults(run=run_network_import)
    join = network.add_parser("join-invite", help="join a closed network by an invite token")
    join.add_argument("token", help="the token `members invite` printed")
    label_option(join, "the network", "none; a network joined already keeps its own")
    join.set_defaults(run=run_network_join_invite)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {"id": args.id, "brokers": args.broker}
    if args.label is not None:
        config["label"] = args.label
    return config


def run_network_create(args: argparse.Namespace) -> int:
    answer = call(args, "network_create_closed", config=_config(args))
    if args.json:
        print_json(answer)
    else:
        say(f"created closed network {args.id}, owned by this device; its bootstrap:")
        say(answer["bootstrap"])
    return 0


def run_network_import(args: argparse.Namespace) -> int:
    answer = call(args, "network_import_closed", config=_config(args), bootstrap=args.bootstrap)
    return report(args, answer, f"joined closed network {args.id} (owner {answer['owner'][:12]})")


def run_network_join_invite(args: argparse.Namespace) -> int:
    params = {"token": args.token} | ({"label": args.label} if args.label else {})
    answer = call(args, "network_join_invite", **params)
    network = answer["network"]["id"]
    text = f"joined {network}; waiting for an owner or admin to grant {answer['role']}"
    return report(args, answer, text)


def run_members_list(args: argparse.Namespace) -> int:
    members = call(args, "members_list", network=network_of(args))["members"]
    if args.json:
        print_json(members)
        return 0
    say(f"{'DEVICE':52}  {'ROLE':6}  {'STATUS':8}  {'BY':12}  WHEN")
    for m in members:
        by = (m["granted_by"] or "-")[:SHORT_ID]
        when = local_time(m["at"])
        say(f"{m['device_id']}  {m['role'] or '-':6}  {m['status']:8}  {by:12}  {when}")
    return 0


def _change(args: argparse.Namespace, op: str, **params: Any) -> int:
    network = network_of(args)
    device = resolve_device(args, args.device_id, network)
    answer = call(args, op, network=network, device_id=device, **params)
    member = answer["member"]
    text = f"{device[:12]} in {network}: {member['status']}, role {member['role'] or '-'}"
    return report(args, answer, text)


def run_members_grant(args: argparse.Namespace) -> int:
    return _change(args, "members_grant", role=args.role)


def run_members_revoke(args: argparse.Namespace) -> int:
    return _change(args, "members_revoke", role=args.role)


def run_members_evict(args: argparse.Namespace) -> int:
    return _change(args, "members_evict")


def run_members_invite(args: argparse.Namespace) -> int:
    answer = call(
        args,
        "members_invite",
        network=network_of(args),
        role=args.role,
        ttl_s=args.ttl,
        uses=args.uses,
    )
    return report(args, answer, answer["token"])
