"""One typed method per control-socket op; each builds the op's params and returns its data.

Optional params left as None are not sent (the daemon validates strictly: a null is not an
absent key). Answers are the daemon's JSON data, documented with each op in docs/protocol.md.
"""

from __future__ import annotations

import abc
import base64
from collections.abc import Mapping, Sequence
from typing import Any

from meshactors.client.errors import ClientError
from meshactors.wire.ipc import DEFAULT_PAGE, Priority
from meshactors.wire.peer import PresenceStatus

Json = Any
Data = Any  # an op's answer `data`

RPC_DEADLINE_MARGIN = 5.0  # seconds the client waits past an rpc_call's timeout_ms
RELIABLE_DEADLINE_MARGIN = 15.0  # ...past a reliable send's ttl_ms: the daemon may take 10 s
# to start it (its core's command deadline) before the ttl runs


def params(**values: Any) -> dict[str, Any]:
    """Op params with the None values left out."""
    return {key: value for key, value in values.items() if value is not None}


def payload_params(payload: Json, data: bytes | None) -> dict[str, Any]:
    """A message's params: its JSON `payload`, or its binary `data` as base64 `payload_b64`
    (both given: sent as they are, for the daemon to refuse with invalid_params)."""
    if data is None:
        return {"payload": payload}
    return params(payload=payload) | {"payload_b64": base64.b64encode(data).decode("ascii")}


def received(fields: Mapping[str, Any]) -> Any:
    """What an answer or event carries: a binary payload's bytes (`payload_b64` decoded), else
    its JSON `payload`. ValueError or TypeError: a `payload_b64` that is not base64 text."""
    if "payload_b64" in fields:
        return base64.b64decode(fields["payload_b64"], validate=True)
    return fields.get("payload")


class Ops(abc.ABC):
    """The typed op methods; subclasses provide `call`."""

    @abc.abstractmethod
    async def call(
        self, op: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Data:
        """Run one op and return its data."""

    # the daemon
    async def status(self) -> Data:
        """Version, device id, uptime, networks and clients of the daemon."""
        return await self.call("status")

    async def version(self) -> Data:
        """Daemon and IPC API versions and every op the daemon answers."""
        return await self.call("version")

    async def inspect(self) -> Data:
        """The daemon's live actor tree."""
        return await self.call("inspect")

    async def shutdown(self) -> Data:
        """Ask the daemon to stop."""
        return await self.call("shutdown")

    # networks, peers, roster
    async def network_add(self, config: Mapping[str, Json]) -> Data:
        """Join a network: config `{id, label, brokers: [ws urls], auto_approve}`."""
        return await self.call("network_add", params(config=dict(config)))

    async def network_remove(self, network: str, *, purge: bool = False) -> Data:
        """Leave a network; `purge` also deletes what the daemon stored about it."""
        return await self.call("network_remove", params(network=network, purge=purge))

    async def network_update(self, config: Mapping[str, Json]) -> Data:
        """Change a joined network's config (reconnects only if the brokers changed)."""
        return await self.call("network_update", params(config=dict(config)))

    async def networks_list(self) -> Data:
        """The joined networks with their phases."""
        return await self.call("networks_list")

    async def peers_list(self, network: str, *, all: bool | None = None) -> Data:
        """Peers of a network; `all` includes control-plane peers."""
        return await self.call("peers_list", params(network=network, all=all))

    async def roster_list(self, network: str) -> Data:
        """The network's roster: approved, pending and denied devices."""
        return await self.call("roster_list", params(network=network))

    async def roster_approve(self, network: str, device_id: str, label: str | None = None) -> Data:
        """Approve a device on a network."""
        return await self.call(
            "roster_approve", params(network=network, device_id=device_id, label=label)
        )

    async def roster_deny(self, network: str, device_id: str) -> Data:
        """Deny a device on a network."""
        return await self.call("roster_deny", params(network=network, device_id=device_id))

    async def roster_remove(self, network: str, device_id: str) -> Data:
        """Remove a device from a network's roster (it is cut off at once)."""
        return await self.call("roster_remove", params(network=network, device_id=device_id))

    # closed networks
    async def network_create_closed(self, config: Mapping[str, Json]) -> Data:
        """Create and join a closed network owned by this device: `{network, owner, bootstrap}`."""
        return await self.call("network_create_closed", params(config=dict(config)))

    async def network_import_closed(self, config: Mapping[str, Json], bootstrap: str) -> Data:
        """Join a closed network by its owner's bootstrap string."""
        return await self.call(
            "network_import_closed", params(config=dict(config), bootstrap=bootstrap)
        )

    async def network_join_invite(self, token: str, *, label: str | None = None) -> Data:
        """Join a closed network by an invite token; admitted once an owner or admin grants it."""
        return await self.call("network_join_invite", params(token=token, label=label))

    async def members_list(self, network: str) -> Data:
        """A closed network's members: device, role, granted_by, at, status."""
        return await self.call("members_list", params(network=network))

    async def members_grant(self, network: str, device_id: str, role: str) -> Data:
        """Grant a device a role (`owner`, `admin` or `member`)."""
        return await self.call(
            "members_grant", params(network=network, device_id=device_id, role=role)
        )

    async def members_revoke(self, network: str, device_id: str, role: str) -> Data:
        """Take a role back from a device."""
        return await self.call(
            "members_revoke", params(network=network, device_id=device_id, role=role)
        )

    async def members_evict(self, network: str, device_id: str) -> Data:
        """Evict a device from a closed network for good."""
        return await self.call("members_evict", params(network=network, device_id=device_id))

    async def members_invite(
        self,
        network: str,
        *,
        role: str | None = None,
        ttl_s: float | None = None,
        uses: int | None = None,
    ) -> Data:
        """An invite token for `uses` devices (1), valid `ttl_s` seconds (a day), of `role`."""
        return await self.call(
            "members_invite", params(network=network, role=role, ttl_s=ttl_s, uses=uses)
        )

    async def capabilities_set(self, network: str, capabilities: Mapping[str, Json]) -> Data:
        """Advertise `{tags, app_version, max_connections, extra}`; `extra` reaches peers as is."""
        return await self.call(
            "capabilities_set", params(network=network, capabilities=dict(capabilities))
        )

    async def profile_set(
        self,
        *,
        display_name: str | None = None,
        status: PresenceStatus | None = None,
        summary: str | None = None,
        visible: bool | None = None,
        network: str | None = None,
    ) -> Data:
        """Change the profile peers see (on one network, or all when `network` is None): only
        the fields given change; "" clears a text field."""
        return await self.call(
            "profile_set",
            params(
                network=network,
                display_name=display_name,
                status=status,
                summary=summary,
                visible=visible,
            ),
        )

    async def profile_get(self, network: str | None = None) -> Data:
        """Our own profile: one network's (its own, else the global one), or the global one."""
        return await self.call("profile_get", params(network=network))

    # RPC (serving: MeshClient.serve; streaming calls: MeshClient.rpc_call_stream)
    async def rpc_call(
        self,
        network: str,
        peer: str,
        method: str,
        payload: Json = None,
        *,
        data: bytes | None = None,
        timeout_ms: int | None = None,
    ) -> Data:
        """Call a method on a peer with a JSON `payload`, or binary `data`, and return its
        answer: `{payload}`, or for a binary answer `{payload_b64, data}` (its bytes)."""
        deadline = None if timeout_ms is None else timeout_ms / 1000 + RPC_DEADLINE_MARGIN
        answer = await self.call(
            "rpc_call",
            params(network=network, peer=peer, method=method, timeout_ms=timeout_ms)
            | payload_params(payload, data),
            timeout=deadline,
        )
        if isinstance(answer, dict) and "payload_b64" in answer:
            try:
                answer["data"] = received(answer)
            except (TypeError, ValueError) as bad:  # only a peer can send one
                raise ClientError("bad_payload", f"a binary answer not base64: {bad}") from None
        return answer

    async def rpc_cancel(self, request_id: str) -> Data:
        """Stop an outbound call; the serving side is told."""
        return await self.call("rpc_cancel", params(request_id=request_id))

    async def rpc_respond(
        self,
        request_id: str,
        payload: Json = None,
        *,
        data: bytes | None = None,
        error: str | None = None,
    ) -> Data:
        """Answer an inbound call with a JSON `payload`, binary `data`, or an error message."""
        if error is not None:
            return await self.call("rpc_respond", {"request_id": request_id, "error": error})
        return await self.call(
            "rpc_respond", {"request_id": request_id} | payload_params(payload, data)
        )

    async def rpc_stream_chunk(
        self, request_id: str, payload: Json = None, *, data: bytes | None = None
    ) -> Data:
        """Send one chunk of a streamed answer: a JSON `payload`, or binary `data`."""
        return await self.call(
            "rpc_stream_chunk", {"request_id": request_id} | payload_params(payload, data)
        )

    async def rpc_stream_end(self, request_id: str, *, error: str | None = None) -> Data:
        """End a streamed answer, with an error message if it failed."""
        return await self.call("rpc_stream_end", params(request_id=request_id, error=error))

    # channels (subscribing: MeshClient.subscribe)
    async def channel_send_to(
        self,
        network: str,
        channel: str,
        peer: str,
        payload: Json = None,
        *,
        data: bytes | None = None,
        retain: bool | None = None,
    ) -> Data:
        """Publish a JSON `payload`, or binary `data`, to one peer on a channel; `retain` keeps
        it for late subscribers."""
        return await self.call(
            "channel_send_to",
            params(network=network, channel=channel, peer=peer, retain=retain)
            | payload_params(payload, data),
        )

    async def channel_send_all(
        self,
        network: str,
        channel: str,
        payload: Json = None,
        *,
        data: bytes | None = None,
        retain: bool | None = None,
    ) -> Data:
        """Publish a JSON `payload`, or binary `data`, to every active peer on a channel;
        answers `{dispatched_to}`."""
        return await self.call(
            "channel_send_all",
            params(network=network, channel=channel, retain=retain) | payload_params(payload, data),
        )

    async def channel_send_many(
        self,
        network: str,
        channel: str,
        payloads: Sequence[Json],
        *,
        peer: str | None = None,
        retain: bool | None = None,
    ) -> Data:
        """Publish several messages in one request (one frame per peer, one event per
        subscriber), to `peer` or to every active peer; `retain` keeps the last one."""
        op = "channel_send_all" if peer is None else "channel_send_to"
        return await self.call(
            op,
            params(network=network, channel=channel, peer=peer, retain=retain)
            | {"payloads": list(payloads)},
        )

    async def channel_send_reliable(
        self,
        network: str,
        channel: str,
        peer: str,
        payload: Json = None,
        *,
        data: bytes | None = None,
        ttl_ms: int,
        message_id: str | None = None,
    ) -> Data:
        """Publish a JSON `payload`, or binary `data`, to one peer and answer once its daemon
        acknowledged delivery. With `message_id` (a unique id of your choosing), sending again
        with the same one after an error is safe: the peer's daemon delivers it once and
        acknowledges each. Waits up to `ttl_ms` (and a margin), however short the client's own
        call timeout."""
        return await self.call(
            "channel_send_reliable",
            params(
                network=network,
                channel=channel,
                peer=peer,
                ttl_ms=ttl_ms,
                message_id=message_id,
            )
            | payload_params(payload, data),
            timeout=ttl_ms / 1000 + RELIABLE_DEADLINE_MARGIN,
        )

    # durable messages
    async def send(
        self,
        network: str,
        to: str,
        message: str,
        *,
        priority: Priority = "next",
        meta: Mapping[str, Json] | None = None,
        reply_to_id: str | None = None,
        client_message_id: str | None = None,
    ) -> Data:
        """Queue a durable message to a device id, `*` or `@tag`; idempotent per message id."""
        return await self.call(
            "send",
            params(
                network=network,
                to=to,
                priority=priority,
                meta=None if meta is None else dict(meta),
                reply_to_id=reply_to_id,
                client_message_id=client_message_id,
            )
            | {"message": message},
        )

    async def inbox(
        self,
        *,
        limit: int = DEFAULT_PAGE,
        network: str | None = None,
        sender: str | None = None,
        since: int | None = None,
        cursor: str | None = None,
    ) -> Data:
        """A page of received messages (`sender` is the op's `from`; `since` is ms since the
        epoch; pass the answer's `next_cursor` as `cursor` for the next page: at once while
        `more` is true, as a page of large messages is cut before `limit`, later to poll)."""
        return await self.call(
            "inbox",
            params(network=network, since=since, limit=limit, cursor=cursor)
            | params(**{"from": sender}),
        )

    async def outbox_list(
        self,
        *,
        limit: int = DEFAULT_PAGE,
        status: str | None = None,
        network: str | None = None,
        cursor: str | None = None,
    ) -> Data:
        """Queued durable messages, newest first, optionally only those in one status or one
        network (without it: every network's, a left one's kept rows included); pass the
        page's `next_cursor` as `cursor` for the older rows after it, until it is null (a
        page of large rows is cut before `limit`: only a null cursor means the end)."""
        return await self.call(
            "outbox_list", params(status=status, network=network, limit=limit, cursor=cursor)
        )

    async def outbox_requeue(self, id: str, new_client_message_id: str | None = None) -> Data:
        """Send a dead message again as a new row, superseding the old one; a row still being
        tried (pending, inflight) is refused `not_requeueable`, as an earlier attempt may yet
        arrive and a copy under a new key would then be delivered twice.

        On the wire the row id is `outbox_id`: `id` names the request itself."""
        return await self.call(
            "outbox_requeue", params(outbox_id=id, new_client_message_id=new_client_message_id)
        )

    async def outbox_abort(self, id: str) -> Data:
        """Give up a send not finished yet (pending, inflight or dead): it is never sent again
        (an attempt already on its way may still arrive); a done or aborted row is refused
        `conflict`, an unknown id `not_found`. Answers `{row}`.

        On the wire the row id is `outbox_id`: `id` names the request itself."""
        return await self.call("outbox_abort", params(outbox_id=id))

    # replicated state
    async def state_set(self, network: str, key: str, value: Json) -> Data:
        """Set a key of the network's shared state to a JSON value (replicated to peers)."""
        return await self.call("state_set", {"network": network, "key": key, "value": value})

    async def state_delete(self, network: str, key: str) -> Data:
        """Delete a key of the network's shared state."""
        return await self.call("state_delete", {"network": network, "key": key})

    async def state_get(self, network: str, key: str) -> Data:
        """A key's value, version and author (ClientError not_found when absent)."""
        return await self.call("state_get", {"network": network, "key": key})

    async def state_list(
        self,
        network: str,
        *,
        prefix: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Data:
        """A page of live keys in key order; pass `next_cursor` back for the next page."""
        return await self.call(
            "state_list", params(network=network, prefix=prefix, limit=limit, cursor=cursor)
        )
