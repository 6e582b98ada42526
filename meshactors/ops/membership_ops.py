"""Ops of closed networks: create and import one, join by invite, list and change members."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import attrs

from meshactors.clock import wall_ms
from meshactors.control.session import Session
from meshactors.membership import store as log_db
from meshactors.membership.facts import (
    MAX_USES,
    ROLES,
    BadRecord,
    Genesis,
    Token,
    from_bootstrap,
    from_token,
    new_genesis,
    record_hash,
    to_bootstrap,
    to_token,
)
from meshactors.membership.part import MAX_TTL_S
from meshactors.network.config import NetworkConfig
from meshactors.ops.network_ops import config_of, network_of
from meshactors.ops.optable import Op
from meshactors.wire.device_id import is_device_id
from meshactors.wire.ipc import ErrorCode, OpError

if TYPE_CHECKING:
    from meshactors.network.network import Network


@attrs.frozen
class ClosedCreate:
    """Params of `network_create_closed`: the network's config."""

    config: dict[str, Any]


@attrs.frozen
class ClosedImport:
    """Params of `network_import_closed`: the config and the owner's bootstrap string."""

    config: dict[str, Any]
    bootstrap: str


@attrs.frozen
class JoinInvite:
    """Params of `network_join_invite`: the token an owner or admin handed out."""

    token: str
    label: str | None = None


@attrs.frozen
class MembersRef:
    """Params of `members_list`."""

    network: str


@attrs.frozen
class MemberRole:
    """Params of `members_grant` and `members_revoke`."""

    network: str
    device_id: str
    role: str


@attrs.frozen
class MemberEvict:
    """Params of `members_evict`."""

    network: str
    device_id: str


@attrs.frozen
class MembersInvite:
    """Params of `members_invite`: the role, seconds it holds and devices it admits."""

    network: str
    role: str = "member"
    ttl_s: float = 24 * 3600.0
    uses: int = 1


def _role(role: str) -> str:
    if role not in ROLES:
        raise OpError(ErrorCode.INVALID_PARAMS, f"role must be one of {', '.join(ROLES)}")
    return role


def _device(device_id: str) -> str:
    if not is_device_id(device_id):
        raise OpError(ErrorCode.INVALID_PARAMS, f"not a device id: {device_id[:60]!r}")
    return device_id


async def _join_closed(
    session: Session, config: NetworkConfig, genesis: Genesis, *, or_joined: bool = False
) -> Network:
    """Keep the genesis, then join: the network's core finds it there when it starts. With
    `or_joined` a network of that id joined already is taken as it is, whatever its config."""
    manager = session.services.networks
    try:
        await session.services.store.call(
            functools.partial(log_db.save_genesis, genesis=genesis), what="save the genesis"
        )
    except log_db.OtherGenesis as exc:
        raise OpError(ErrorCode.CONFLICT, str(exc)) from None
    joined = [n for n in manager.all() if n.config.id == config.id] if or_joined else []
    network = joined[0] if joined else (await manager.add(config))[0]
    if not await network.ask("is it closed", lambda: network.peers.closed):
        raise OpError(
            ErrorCode.CONFLICT, f"{config.id} was joined open; remove it and join it again"
        )
    return network


async def network_create_closed(session: Session, params: ClosedCreate) -> dict[str, Any]:
    """Create a closed network owned by this device and join it; the bootstrap lets other
    devices join it (they become members once granted)."""
    config = config_of(params.config)
    if config.id in {n.config.id for n in session.services.networks.all()}:
        raise OpError(ErrorCode.CONFLICT, f"network {config.id!r} is joined already")
    identity = session.services.identity
    genesis = new_genesis(identity, config.id, wall_ms())
    network = await _join_closed(session, config, genesis)
    return {
        "network": await network.summary(),
        "owner": identity.device_id,
        "bootstrap": to_bootstrap(genesis),
    }


async def network_import_closed(session: Session, params: ClosedImport) -> dict[str, Any]:
    """Join a closed network by its bootstrap (genesis signature and network id checked)."""
    config = config_of(params.config)
    try:
        genesis = from_bootstrap(params.bootstrap)
    except BadRecord as bad:
        raise OpError(ErrorCode.INVALID_PARAMS, f"bootstrap: {bad}") from None
    if genesis.network != config.id:
        raise OpError(ErrorCode.INVALID_PARAMS, f"the bootstrap is for network {genesis.network!r}")
    network = await _join_closed(session, config, genesis)
    return {"network": await network.summary(), "owner": genesis.owner}


async def network_join_invite(session: Session, params: JoinInvite) -> dict[str, Any]:
    """Join a closed network by an invite token (or take the token in one joined already):
    its genesis is kept, the invite presented to the members until an owner or admin grants
    it (event `member_granted`) or refuses it (event `invite_refused`); `conflict` if this
    device is a member there already or was evicted. A network joined already keeps its own
    label and brokers: the token's are for a device that joins anew."""
    try:
        token = from_token(params.token)
    except BadRecord as bad:
        raise OpError(ErrorCode.INVALID_PARAMS, f"token: {bad}") from None
    if wall_ms() > token.invite.expires_ms:
        raise OpError(ErrorCode.INVITE_REFUSED, "the invite expired")
    config = config_of(
        {"id": token.genesis.network, "brokers": token.brokers, "label": params.label}
    )
    network = await _join_closed(session, config, token.genesis, or_joined=True)
    take = functools.partial(network.membership.take_invite, token.invite)
    await network.ask_await("take the invite", take)
    return {
        "network": await network.summary(),
        "role": token.invite.role,
        "expires_at": token.invite.expires_ms,
    }


async def members_list(session: Session, params: MembersRef) -> dict[str, Any]:
    """Every device a closed network's log names: role, granted_by, at, status."""
    network = network_of(session, params.network)
    members = await network.ask("list members", network.membership.members)
    return {"network": params.network, "members": members}


async def _append(
    session: Session, network_id: str, kind: str, device: str, role: str
) -> dict[str, Any]:
    network = network_of(session, network_id)
    work = functools.partial(network.membership.append, kind, _device(device), role)
    return {"network": network_id, **await network.ask_await(f"{kind} a member", work)}


async def members_grant(session: Session, params: MemberRole) -> dict[str, Any]:
    """Grant a device a role (owners any role, admins `member`)."""
    return await _append(session, params.network, "grant", params.device_id, _role(params.role))


async def members_revoke(session: Session, params: MemberRole) -> dict[str, Any]:
    """Take a role back from a device."""
    role = _role(params.role)
    return await _append(session, params.network, "revoke", params.device_id, role)


async def members_evict(session: Session, params: MemberEvict) -> dict[str, Any]:
    """Evict a device for good: every member cuts it off as soon as it learns of it."""
    return await _append(session, params.network, "evict", params.device_id, "")


async def members_invite(session: Session, params: MembersInvite) -> dict[str, Any]:
    """A token carrying the bootstrap and a signed invite of `role`, for `uses` devices,
    valid `ttl_s` seconds."""
    if not 0 < params.ttl_s <= MAX_TTL_S:
        raise OpError(ErrorCode.INVALID_PARAMS, f"ttl_s must be above 0, at most {MAX_TTL_S}")
    if not 1 <= params.uses <= MAX_USES:
        raise OpError(ErrorCode.INVALID_PARAMS, f"uses must be 1 to {MAX_USES}")
    network = network_of(session, params.network)
    role = _role(params.role)
    invite = await network.ask(
        "make an invite",
        functools.partial(network.membership.make_invite, role, params.ttl_s, params.uses),
    )
    genesis = await network.ask("read the genesis", network.membership.genesis)
    token = Token(genesis, invite, list(network.config.brokers))
    return {
        "network": params.network,
        "token": to_token(token),
        "invite": record_hash(invite),
        "role": role,
        "expires_at": invite.expires_ms,
        "uses": invite.uses,
    }


OPS: list[Op[Any]] = [
    Op(
        "network_create_closed",
        ClosedCreate,
        network_create_closed,
        "create and join a closed network {config}",
        command="network create",
    ),
    Op(
        "network_import_closed",
        ClosedImport,
        network_import_closed,
        "join a closed network by its bootstrap {config, bootstrap}",
        command="network import",
    ),
    Op(
        "network_join_invite",
        JoinInvite,
        network_join_invite,
        "join a closed network by an invite token {token}",
        command="network join-invite",
    ),
    Op(
        "members_list",
        MembersRef,
        members_list,
        "a closed network's members",
        command="members list",
    ),
    Op(
        "members_grant",
        MemberRole,
        members_grant,
        "grant a role {network, device_id, role}",
        command="members grant",
    ),
    Op(
        "members_revoke",
        MemberRole,
        members_revoke,
        "revoke a role {network, device_id, role}",
        command="members revoke",
    ),
    Op(
        "members_evict",
        MemberEvict,
        members_evict,
        "evict a device {network, device_id}",
        command="members evict",
    ),
    Op(
        "members_invite",
        MembersInvite,
        members_invite,
        "an invite token {network, role, ttl_s, uses}",
        command="members invite",
    ),
]
