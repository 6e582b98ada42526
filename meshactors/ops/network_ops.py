"""Ops about the mesh: networks, peers, the roster, capabilities and the profile."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from meshactors.control.session import Session
from meshactors.identity import validate_label
from meshactors.network.config import ConfigError, NetworkConfig
from meshactors.network.peers import CAPABILITIES_KEY, PROFILE_KEY, stored_setting
from meshactors.ops.optable import NoParams, Op
from meshactors.store import networks as network_db
from meshactors.store.db import immediate
from meshactors.wire.device_id import is_device_id
from meshactors.wire.ipc import ErrorCode, OpError
from meshactors.wire.peer import Capabilities, Profile, converter

if TYPE_CHECKING:
    from meshactors.network.network import Network

T = TypeVar("T")


@attrs.frozen
class ConfigParams:
    """Params of `network_add` and `network_update`: the whole network config."""

    config: dict[str, Any]


@attrs.frozen
class NetworkRemove:
    """Params of `network_remove`; `purge` also deletes the network's settings and messages."""

    network: str
    purge: bool = False


@attrs.frozen
class NetworkRef:
    """Params naming one network."""

    network: str


@attrs.frozen
class PeersList:
    """Params of `peers_list`; `all` also shows control planes and invisible peers."""

    network: str
    all: bool = False


@attrs.frozen
class RosterApprove:
    """Params of `roster_approve`; `label` names the device in our roster."""

    network: str
    device_id: str
    label: str | None = None


@attrs.frozen
class RosterDevice:
    """Params of `roster_deny` and `roster_remove`."""

    network: str
    device_id: str


@attrs.frozen
class CapabilitiesSet:
    """Params of `capabilities_set`: {tags, app_version, max_connections, extra}."""

    network: str
    capabilities: dict[str, Any]


@attrs.frozen
class ProfileSet:
    """Params of `profile_set`: the fields given change, absent or null ones keep their value;
    without `network` it is the profile of every network."""

    display_name: str | None = None
    status: str | None = None
    summary: str | None = None
    visible: bool | None = None
    network: str | None = None


@attrs.frozen
class ProfileGet:
    """Params of `profile_get`; without `network` it reads the global profile."""

    network: str | None = None


def network_of(session: Session, network_id: str) -> Network:
    """The joined network an op names (OpError no_such_network)."""
    return session.services.networks.get(network_id)


def _structure(data: dict[str, Any], cls: type[T], what: str) -> T:
    """Strictly structure a nested object, naming the first invalid field."""
    try:
        return converter.structure(data, cls)
    except Exception as exc:
        raise OpError(ErrorCode.INVALID_PARAMS, f"{what}: {_first_message(exc)}") from None


def _first_message(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return _first_message(exc.exceptions[0])
    return str(exc)


def config_of(data: dict[str, Any]) -> NetworkConfig:
    try:
        return NetworkConfig.from_json(data)
    except ConfigError as exc:
        raise OpError(ErrorCode.INVALID_PARAMS, f"config: {exc}") from None


def _device(device_id: str) -> str:
    if not is_device_id(device_id):
        raise OpError(ErrorCode.INVALID_PARAMS, f"not a device id: {device_id[:60]!r}")
    return device_id


async def network_add(session: Session, params: ConfigParams) -> dict[str, Any]:
    """Join a network and keep it across restarts; idempotent for the same config."""
    network, added = await session.services.networks.add(config_of(params.config))
    return {"network": await network.summary(), "added": added}


async def network_update(session: Session, params: ConfigParams) -> dict[str, Any]:
    """Change a network's label, auto_approve or brokers; reconnects only for brokers."""
    manager = session.services.networks
    config = config_of(params.config)
    reconnect = await manager.update(config)
    return {"network": await manager.get(config.id).summary(), "reconnect": reconnect}


async def network_remove(session: Session, params: NetworkRemove) -> dict[str, Any]:
    """Leave a network now and forget it; says how many undelivered sends a purge deleted."""
    unsent = await session.services.networks.remove(params.network, purge=params.purge)
    if params.purge:  # its pass recounts the rows: inspect's `pending` follows
        session.services.outbox.poke()
    return {"removed": params.network, "purge": params.purge, "purged_unsent": unsent}


async def networks_list(session: Session, _: NoParams) -> dict[str, Any]:
    """Every joined network with its phase."""
    return {"networks": await session.services.networks.summaries()}


async def peers_list(session: Session, params: PeersList) -> dict[str, Any]:
    """The peers of a network with status, role, rtt, capabilities and profile."""
    network = network_of(session, params.network)
    peers = await network.ask(
        "list peers", functools.partial(network.peers.list_peers, include_all=params.all)
    )
    return {"network": params.network, "peers": peers}


async def roster_list(session: Session, params: NetworkRef) -> dict[str, Any]:
    """The devices approved, denied or pending in a network."""
    network = network_of(session, params.network)
    roster = await network.ask("list roster", network.peers.list_roster)
    return {"network": params.network, "roster": roster}


async def roster_approve(session: Session, params: RosterApprove) -> dict[str, Any]:
    """Approve a device (seen or not yet); it is active once it approves us too."""
    network = network_of(session, params.network)
    try:
        label = validate_label(params.label)
    except ValueError as exc:
        raise OpError(ErrorCode.INVALID_PARAMS, f"label: {exc}") from None
    approve = functools.partial(network.peers.approve, _device(params.device_id), label)
    peer = await network.ask_await("approve", approve)
    return {"network": params.network, "peer": peer}


async def roster_deny(session: Session, params: RosterDevice) -> dict[str, Any]:
    """Deny a device: it is never active, and is told so."""
    network = network_of(session, params.network)
    deny = functools.partial(network.peers.deny, _device(params.device_id))
    peer = await network.ask_await("deny", deny)
    return {"network": params.network, "peer": peer}


async def roster_remove(session: Session, params: RosterDevice) -> dict[str, Any]:
    """Forget a device's approval; its traffic is cut off at once."""
    network = network_of(session, params.network)
    forget = functools.partial(network.peers.forget, _device(params.device_id))
    removed = await network.ask_await("remove from roster", forget)
    if not removed:
        raise OpError(ErrorCode.NOT_FOUND, f"{params.device_id} is not in the roster")
    return {"network": params.network, "removed": params.device_id}


async def capabilities_set(session: Session, params: CapabilitiesSet) -> dict[str, Any]:
    """Advertise capabilities in a network; kept across restarts, sent to peers live."""
    network = network_of(session, params.network)
    capabilities = _structure(params.capabilities, Capabilities, "capabilities")
    plain = converter.unstructure(capabilities)
    await session.services.store.call(
        functools.partial(
            network_db.put_setting, network=params.network, key=CAPABILITIES_KEY, value=plain
        ),
        what="save capabilities",
    )
    await network.ask_await("advertise capabilities", network.peers.advertise_saved)
    return {"network": params.network, "capabilities": plain}


def _capabilities_key(params: CapabilitiesSet) -> Hashable:
    """A network's advert: sets pipelined on one connection take effect in the order sent."""
    return ("capabilities", params.network)


def _profile_key(params: ProfileSet) -> Hashable:
    """Every profile, as a set without `network` changes them all: in the order sent."""
    return ("profile",)


async def profile_set(session: Session, params: ProfileSet) -> dict[str, Any]:
    """Change the given fields of one network's profile, or (without `network`) the global
    one; a network without its own profile starts from the global one."""
    manager = session.services.networks
    fields = attrs.asdict(params)
    network_id = fields.pop("network")
    changes = {key: value for key, value in fields.items() if value is not None}
    _structure(changes, Profile, "profile")  # each field is checked alone: any merge is valid
    targets = [manager.get(network_id)] if network_id is not None else manager.all()
    if not changes:  # nothing to change (and no network copy of the global profile to make)
        profile, _ = await session.services.store.call(
            functools.partial(_own_profile, network=network_id), what="read profile"
        )
        return {"network": network_id, "profile": converter.unstructure(profile)}
    profile = await session.services.store.call(
        functools.partial(_change_profile, network=network_id, changes=changes),
        what="save profile",
    )
    for network in targets:
        await network.ask_await("advertise profile", network.peers.advertise_saved)
    return {"network": network_id, "profile": converter.unstructure(profile)}


async def profile_get(session: Session, params: ProfileGet) -> dict[str, Any]:
    """Our profile in one network (its own, else the global one), or the global one."""
    if params.network is not None:
        network_of(session, params.network)
    profile, scope = await session.services.store.call(
        functools.partial(_own_profile, network=params.network), what="read profile"
    )
    return {
        "network": params.network,
        "profile": converter.unstructure(profile),
        "inherited": scope != params.network,
    }


def _own_profile(conn: sqlite3.Connection, network: str | None) -> tuple[Profile, str | None]:
    """Our profile in `network` (its own, else the global one) or the global one, with the
    network it is stored for (None: the global one)."""
    scopes = [network, None] if network is not None else [None]
    for scope in scopes:
        stored = network_db.get_settings(conn, network_db.GLOBAL if scope is None else scope)
        profile = stored_setting(stored.get(PROFILE_KEY), Profile)
        if profile is not None:
            return profile, scope
    return Profile(), None


def _change_profile(
    conn: sqlite3.Connection, network: str | None, changes: dict[str, Any]
) -> Profile:
    """Apply `changes` to our stored profile of `network` (or the global one) in one
    transaction, so two changes at once both count; returns the new profile."""
    with immediate(conn):
        current, _ = _own_profile(conn, network)
        profile = attrs.evolve(current, **changes)
        network_db.put_setting(
            conn,
            network_db.GLOBAL if network is None else network,
            PROFILE_KEY,
            converter.unstructure(profile),
        )
    return profile


OPS: list[Op[Any]] = [
    Op("network_add", ConfigParams, network_add, "join a network {config}", command="network add"),
    Op(
        "network_update",
        ConfigParams,
        network_update,
        "change a joined network's config",
        command="network update",
    ),
    Op(
        "network_remove",
        NetworkRemove,
        network_remove,
        "leave a network {network, purge?}",
        command="network remove",
    ),
    Op(
        "networks_list",
        NoParams,
        networks_list,
        "joined networks and their phases",
        command="network list",
    ),
    Op(
        "peers_list",
        PeersList,
        peers_list,
        "a network's peers {network, all?}",
        command="peers",
        http_get="/v1/peers",
    ),
    Op(
        "roster_list",
        NetworkRef,
        roster_list,
        "a network's roster {network}",
        command="roster list",
    ),
    Op(
        "roster_approve",
        RosterApprove,
        roster_approve,
        "approve a device {network, device_id}",
        command="roster approve",
    ),
    Op(
        "roster_deny",
        RosterDevice,
        roster_deny,
        "deny a device {network, device_id}",
        command="roster deny",
    ),
    Op(
        "roster_remove",
        RosterDevice,
        roster_remove,
        "forget a device {network, device_id}",
        command="roster remove",
    ),
    Op(
        "capabilities_set",
        CapabilitiesSet,
        capabilities_set,
        "advertise capabilities",
        command="caps set",
        ordered_by=_capabilities_key,
    ),
    Op(
        "profile_set",
        ProfileSet,
        profile_set,
        "change profile fields (global or one network)",
        command="profile set",
        ordered_by=_profile_key,
    ),
    Op(
        "profile_get",
        ProfileGet,
        profile_get,
        "read our profile back {network?}",
        command="profile show",
    ),
]
