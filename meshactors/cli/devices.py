"""Device ids as people type them: a full id, a unique prefix of at least 8 characters, or a
label (a peer's, a roster entry's, or this daemon's own), resolved against the daemon. A
closed network's members are known by id even while offline: its log keeps no labels."""

from __future__ import annotations

import argparse
from typing import Any

from meshactors.cli.common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    call,
    eviction,
    fail,
    membership_of,
    network_of,
)
from meshactors.wire.device_id import is_device_id

MIN_PREFIX = 8  # characters a device id prefix needs (fewer would match too much by chance)


def resolve_device(args: argparse.Namespace, text: str, network: str | None = None) -> str:
    """The one device id `text` names in `network` (default: --network or the only joined one);
    exit 6 if none, 2 listing the candidates if several. A full, well-formed id is taken as it is
    (a device not seen yet may be named). This daemon's own label names this daemon, whoever
    else announces it (any device may, approved or not). On a device evicted from `network`, a
    name matching nothing exits 6 saying so, as the daemon does for an id."""
    if is_device_id(text):
        return text
    network = network or network_of(args)
    me = call(args, "status")
    return _one_named(text, _known_devices(args, network, me), me, [network])


def resolve_device_anywhere(
    args: argparse.Namespace, text: str, unjoined: str | None = None
) -> str:
    """The one device id `text` names in any joined network, for a command that covers them
    all (`inbox` without -n) or one network `unjoined` (`inbox -n` of a network left, whose
    inbox is kept but whose devices are known no more): a device known in several is still
    one id; a name meaning different devices exits 2 listing them, as `resolve_device` does
    within one network; with `unjoined`, a name matching none says to give the full id."""
    if is_device_id(text):
        return text
    me = call(args, "status")
    networks = [str(n["id"]) for n in me["networks"]]
    known: dict[str, set[str]] = {}
    for network in networks:
        for device_id, labels in _known_devices(args, network, me).items():
            known.setdefault(device_id, set()).update(labels)
    unknown = None
    if unjoined is not None:
        unknown = (
            f"{unjoined!r} is not joined, so its devices are not known here, and {text!r} "
            f"names none in the joined networks; give the full device id "
            f"(`meshactors inbox -n {unjoined} --json` shows each sender's)"
        )
    return _one_named(text, known, me, networks, unknown)


def _one_named(
    text: str,
    known: dict[str, set[str]],
    me: dict[str, Any],
    networks: list[str],
    unknown: str | None = None,
) -> str:
    """The one device of `known` (searched in `networks`) that `text` names, by label (this
    daemon's own first) or else by prefix; exits 2 or 6 as `resolve_device` says (6 with
    `unknown` as its message, if given, when none matches)."""
    where = networks[0] if len(networks) == 1 else "the joined networks"
    by_label = {d for d, labels in known.items() if text in labels}
    if me["device_id"] in by_label:
        by_label = {me["device_id"]}
    by_prefix = {d for d in known if len(text) >= MIN_PREFIX and d.startswith(text.lower())}
    matches = sorted(by_label or by_prefix)
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = ", ".join(_described(d, known[d]) for d in matches)
        fail(f"{text!r} names several devices in {where}: {listed}", EXIT_USAGE, "ambiguous")
    if unknown is not None:
        fail(unknown, EXIT_NOT_FOUND, "no_such_peer")
    evicted = {str(n["id"]) for n in me["networks"] if eviction(n) is not None}
    if networks and evicted.issuperset(networks):
        # its peers are gone with its link, labels too: say why, as an op given an id does
        fail(f"this device was evicted from {where}", EXIT_NOT_FOUND, "no_such_peer")
    if len(text) < MIN_PREFIX:
        hint = f"give a device id, its first {MIN_PREFIX}+ characters, or a label"
        fail(f"{text!r} is no label in {where}; {hint}", EXIT_NOT_FOUND, "no_such_peer")
    fail(f"no device in {where} matches {text!r}", EXIT_NOT_FOUND, "no_such_peer")


def _known_devices(
    args: argparse.Namespace, network: str, me: dict[str, Any]
) -> dict[str, set[str]]:
    """Every device id the daemon (whose status is `me`) knows in `network` (peers, roster, a
    closed network's members, itself) -> its labels."""
    known: dict[str, set[str]] = {}
    _note(known, me["device_id"], me.get("label"))
    for peer in call(args, "peers_list", network=network, all=True)["peers"]:
        _note(known, peer["device_id"], peer.get("label"))
    for entry in call(args, "roster_list", network=network)["roster"]:
        _note(known, entry["device_id"], entry.get("label"))
    if any(n["id"] == network and membership_of(n).get("closed") for n in me["networks"]):
        # a closed network's membership log names its devices, offline ones too
        for member in call(args, "members_list", network=network)["members"]:
            _note(known, member["device_id"], None)
    return known


def _note(known: dict[str, set[str]], device_id: str, label: Any) -> None:
    labels = known.setdefault(device_id, set())
    if isinstance(label, str) and label:
        labels.add(label)


def _described(device_id: str, labels: set[str]) -> str:
    return device_id + (f" ({', '.join(sorted(labels))})" if labels else "")
