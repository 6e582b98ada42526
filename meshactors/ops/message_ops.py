"""Ops for durable messages: send (idempotent accept), inbox, outbox_list, outbox_requeue,
outbox_abort.

`send` resolves `to` against the network's approved peers, then `store.outbox.accept_many` decides
by the idempotency lookup table (docs/protocol.md); the outbox actor delivers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from typing import TYPE_CHECKING, Any

import attrs
import trio
from cattrs.gen import make_dict_structure_fn, override

from meshactors.actors import ActorGone, AskTimeout
from meshactors.clock import wall_ms
from meshactors.control.session import Session
from meshactors.daemon.outbox import message_view
from meshactors.network.message_frames import MAX_MESSAGE_BYTES, MAX_META_BYTES
from meshactors.ops.network_ops import network_of
from meshactors.ops.optable import Merge, Op, converter
from meshactors.store import inbox as inbox_db
from meshactors.store import outbox as outbox_db
from meshactors.store.fingerprint import fingerprint_prefix
from meshactors.store.outbox import MAX_CLIENT_MESSAGE_ID_CHARS, OutboxRow, SendError
from meshactors.wire.compact import json_size
from meshactors.wire.device_id import is_device_id, is_usable_device_id
from meshactors.wire.ipc import DEFAULT_PAGE, ErrorCode, OpError

if TYPE_CHECKING:
    from meshactors.network.network import Network

ALL_PEERS = "*"  # `to`: every approved peer
TAG_PREFIX = "@"  # `to`: approved peers advertising the tag after it
MAX_CURSOR_CHARS = 20  # an inbox cursor is a decimal sequence number...
MAX_CURSOR = 2**63 - 1  # ...that SQLite can compare
# An outbox cursor is the last row's created_at (ms, up to MAX_CURSOR) and id (a ULID), so the
# next page starts after it even once retention deleted that row.
OUTBOX_CURSOR = re.compile(rf"([0-9]{{1,{MAX_CURSOR_CHARS}}})\.([0-9A-Z]{{26}})")

_SEND_ERRORS = {  # store.outbox.SendError code → IPC error code
    "no_recipients": ErrorCode.NO_RECIPIENTS,
    "invalid_request": ErrorCode.INVALID_PARAMS,
    "conflict": ErrorCode.CONFLICT,
    "not_found": ErrorCode.NOT_FOUND,
    "not_requeueable": ErrorCode.NOT_REQUEUEABLE,
}


@attrs.frozen
class SendParams:
    """Params of `send`: to a device id, `*` or `@tag`; `client_message_id` makes it idempotent."""

    network: str
    to: str
    message: str
    priority: str = "next"
    meta: dict[str, Any] | None = None
    reply_to_id: str | None = None
    client_message_id: str | None = None


@attrs.frozen
class InboxParams:
    """Params of `inbox` (`from` on the wire is `sender` here); `since` is ms since the epoch."""

    network: str | None = None
    sender: str | None = None
    since: int | None = None
    limit: int = DEFAULT_PAGE
    cursor: str | None = None


@attrs.frozen
class OutboxListParams:
    """Params of `outbox_list`; `cursor` is the previous page's `next_cursor`."""

    status: str | None = None
    network: str | None = None
    limit: int = DEFAULT_PAGE
    cursor: str | None = None


@attrs.frozen
class RequeueParams:
    """Params of `outbox_requeue`: the row's id (`id` itself names the request on the socket),
    optionally the new row's client_message_id."""

    outbox_id: str
    new_client_message_id: str | None = None


@attrs.frozen
class AbortParams:
    """Params of `outbox_abort`: the row's id (`id` itself names the request on the socket)."""

    outbox_id: str


converter.register_structure_hook(
    InboxParams,
    make_dict_structure_fn(
        InboxParams, converter, _cattrs_forbid_extra_keys=True, sender=override(rename="from")
    ),
)


def _send_error(exc: SendError) -> OpError:
    return OpError(_SEND_ERRORS.get(exc.code, ErrorCode.INVALID_PARAMS), str(exc))


async def _store_call(session: Session, fn: Any, what: str) -> Any:
    """A store call whose SendError becomes the matching OpError."""
    try:
        return await session.services.store.call(fn, what=what)
    except SendError as exc:
        raise _send_error(exc) from None
    except ValueError as exc:  # a limit below 1, a bad status
        raise OpError(ErrorCode.INVALID_PARAMS, str(exc)) from None


def _run_key(params: SendParams) -> tuple[str, SendParams]:
    """Consecutive sends to one network accept in one store call (see `send_run`)."""
    return params.network, params


def _check_sizes(params: SendParams) -> None:
    # Measured as the peer frame carries it (JSON escapes every non-ASCII character), like
    # an RPC payload: counted as UTF-8, a long non-ASCII message fits here and not in a frame.
    size = json_size(params.message) - 2  # the quotes aside
    if size > MAX_MESSAGE_BYTES:
        raise OpError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"message is {size} bytes as JSON text (non-ASCII characters escaped); the limit"
            f" is {MAX_MESSAGE_BYTES}",
        )
    try:  # most sends carry no meta: skip the encoder json.dumps makes for these options
        meta = (
            b"null"
            if params.meta is None
            else json.dumps(params.meta, separators=(",", ":"), allow_nan=False).encode()
        )
    except ValueError as exc:
        raise OpError(ErrorCode.INVALID_PARAMS, f"meta: {exc}") from None
    if len(meta) > MAX_META_BYTES:
        raise OpError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"meta is {len(meta)} bytes as ASCII-escaped JSON; the limit is {MAX_META_BYTES}",
        )
    reply = params.reply_to_id
    if reply is not None and (
        not 0 < len(reply) <= MAX_CLIENT_MESSAGE_ID_CHARS or not reply.isprintable()
    ):
        raise OpError(
            ErrorCode.INVALID_PARAMS,
            f"reply_to_id must be 1..{MAX_CLIENT_MESSAGE_ID_CHARS} printable characters",
        )


async def resolve_recipients(
    network: Network, to: str, own_device_id: str
) -> tuple[str, str, list[str]]:
    """(destination_kind, destination_ref, recipient device ids) for a `to`.

    A device id is taken as is (it may be offline, or approved later); `*` and `@tag` are the
    approved peers now known (`Network.recipients`: in a closed network `*` is every member).
    """
    if to == ALL_PEERS or to.startswith(TAG_PREFIX):
        tag = to.removeprefix(TAG_PREFIX) if to != ALL_PEERS else None
        if tag == "":
            raise OpError(ErrorCode.INVALID_PARAMS, "`to` '@' needs a tag after it")
        # A core that does not answer is an OpError: this send's own answer, not the whole run's.
        recipients = await network.recipients(tag)
        return ("all", ALL_PEERS, recipients) if tag is None else ("tag", tag, recipients)
    if not is_device_id(to):
        raise OpError(
            ErrorCode.INVALID_PARAMS, f"`to` must be a device id, '*' or '@tag': {to[:60]!r}"
        )
    if to == own_device_id:
        raise OpError(ErrorCode.INVALID_PARAMS, "`to` is this daemon's own device id")
    if not is_usable_device_id(to):  # as roster_approve/deny refuse it: it can never be a peer
        raise OpError(ErrorCode.INVALID_PARAMS, f"`to` is not a usable device id: {to!r}")
    return "peer", to, [to]


def _check_evicted(network: str, recipients: list[str], evicted: frozenset[str] | None) -> None:
    """Refuse a send that could never be delivered: from this device once evicted from the
    closed network (`evicted` None), or to a device evicted from it."""
    if evicted is None:
        raise OpError(ErrorCode.CONFLICT, f"this device was evicted from {network}")
    if gone := evicted.intersection(recipients):
        raise OpError(ErrorCode.CONFLICT, f"{min(gone)} was evicted from {network}")


async def _undeliverable(network: Network) -> frozenset[str] | None:
    """Whom core knows this network's messages can never reach; nobody when core does not
    answer (restarting, or busy past the timeout): a durable send is accepted then as ever, and
    the outbox buries it once it learns of the evict."""
    try:
        return await network.undeliverable()
    except OpError:
        return frozenset()


async def send(session: Session, params: SendParams) -> dict[str, Any]:
    """Durably accept a message for delivery; a repeat of a client_message_id answers by the
    lookup table (accepted, duplicate, or a conflict error with reason and fingerprint)."""
    (outcome,) = await send_run(session, params, [params])
    if isinstance(outcome, OpError):
        raise outcome
    return outcome


async def send_run(
    session: Session, first: SendParams, items: list[SendParams]
) -> list[dict[str, Any] | OpError]:
    """`send` for consecutive sends of one connection to one network (the in-order runner
    merges them): one store call accepts them all, each answered with its own outcome once
    the transaction holding its row is committed."""
    network = network_of(session, first.network)
    own_device_id = session.services.identity.device_id
    evicted = await _undeliverable(network)
    staged: list[outbox_db.SendRequest | OpError] = []  # checked, its destination resolved
    for params in items:
        try:
            _check_sizes(params)
            kind, ref, recipients = await resolve_recipients(network, params.to, own_device_id)
            _check_evicted(params.network, recipients, evicted)
        except OpError as error:
            staged.append(error)
            continue
        request = outbox_db.SendRequest(
            network=params.network,
            recipients=recipients,
            destination_kind=kind,
            destination_ref=ref,
            message=params.message,
            priority=params.priority,
            meta=params.meta,
            reply_to_id=params.reply_to_id,
            client_message_id=params.client_message_id,
            now_ms=wall_ms(),
        )
        staged.append(request)
    ready = [item for item in staged if isinstance(item, outbox_db.SendRequest)]
    accepted = iter(
        await session.services.outbox.accept(
            first.network,
            ready,
            [recipient for item in ready for recipient in item.recipients],
        )
        if ready
        else []
    )
    return [item if isinstance(item, OpError) else _answer(item, next(accepted)) for item in staged]


def _answer(
    request: outbox_db.SendRequest, outcome: outbox_db.AcceptOutcome | Exception
) -> dict[str, Any] | OpError:
    """A checked send's answer, or the error it is refused with (a conflict, by the lookup
    table, carries the taken row's id, status and the request's fingerprint prefix)."""
    if isinstance(outcome, SendError):
        return _send_error(outcome)
    if isinstance(outcome, Exception):  # a ValueError: a bad choice or key
        return OpError(ErrorCode.INVALID_PARAMS, str(outcome))
    if outcome.outcome == "conflict":
        return OpError(
            ErrorCode.CONFLICT,
            f"client_message_id {outcome.client_message_id!r} is taken ({outcome.reason})",
            reason=outcome.reason,
            fingerprint_prefix=outcome.fingerprint_prefix,
            id=outcome.id,
            client_message_id=outcome.client_message_id,
            status=outcome.status,
        )
    return {
        "outcome": outcome.outcome,
        "id": outcome.id,
        "client_message_id": outcome.client_message_id,
        "status": outcome.status,
        "fingerprint_prefix": outcome.fingerprint_prefix,
        "network": request.network,
        "destination": {"kind": request.destination_kind, "ref": request.destination_ref},
    }


def _cursor(text: str | None) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_CURSOR_CHARS:
        raise OpError(ErrorCode.INVALID_PARAMS, f"not an inbox cursor: {text[:40]!r}")
    if (seq := int(text)) > MAX_CURSOR:
        raise OpError(ErrorCode.INVALID_PARAMS, f"an inbox cursor is at most {MAX_CURSOR}")
    return seq


async def inbox(session: Session, params: InboxParams) -> dict[str, Any]:
    """A page of received messages, oldest first; pass `next_cursor` back for the next (at
    once while `more`: the page was cut)."""
    messages, next_cursor, more = await _store_call(
        session,
        functools.partial(
            inbox_db.page,
            network=params.network,
            sender=params.sender,
            since_ms=params.since,
            limit=params.limit,
            cursor=_cursor(params.cursor),
        ),
        "read inbox",
    )
    return {
        "messages": [message_view(message) for message in messages],
        "next_cursor": None if next_cursor is None else str(next_cursor),
        "more": more,
    }


def row_view(row: OutboxRow) -> dict[str, Any]:
    """An outbox row as outbox_list, outbox_requeue and outbox_abort show it, with each
    recipient's delivery."""
    return {
        "id": row.id,
        "network": row.network,
        "client_message_id": row.client_message_id,
        "fingerprint_prefix": fingerprint_prefix(row.request_fingerprint),
        "destination": {"kind": row.destination_kind, "ref": row.destination_ref},
        "priority": row.priority,
        "message": row.message,
        "meta": row.meta,
        "reply_to_id": row.reply_to_id,
        "status": row.status,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "last_error": row.last_error,
        "superseded_by": row.superseded_by,
        "origin_client_message_id": row.origin_client_message_id,
        "deliveries": [attrs.asdict(delivery) for delivery in row.deliveries],
    }


def _outbox_cursor(text: str | None) -> tuple[int, str] | None:
    """The (created_at, id) an outbox cursor names; `invalid_params` for anything else."""
    if text is None:
        return None
    found = OUTBOX_CURSOR.fullmatch(text)
    if found is None or int(found[1]) > MAX_CURSOR:
        raise OpError(
            ErrorCode.INVALID_PARAMS,
            f"not an outbox cursor (pass next_cursor of the previous page): {text[:40]!r}",
        )
    return int(found[1]), found[2]


async def outbox_list(session: Session, params: OutboxListParams) -> dict[str, Any]:
    """Sends, newest first, optionally of one status or network; the `next_cursor` of a page
    cut short (full, or at MAX_PAGE_DATA_BYTES: the last row's; null at the end) passed back
    as `cursor` gives the rows older than it."""
    rows, more = await _store_call(
        session,
        functools.partial(
            outbox_db.list_rows,
            status=params.status,
            network=params.network,
            limit=params.limit,
            before=_outbox_cursor(params.cursor),
        ),
        "list outbox",
    )
    last = rows[-1] if more else None
    return {
        "rows": [row_view(row) for row in rows],
        "next_cursor": None if last is None else f"{last.created_at}.{last.id}",
    }


async def _evicted_from(session: Session, row: OutboxRow | None) -> frozenset[str]:
    """The devices evicted from a row's network, whom its requeue leaves out (nobody when the
    network is not joined, or the row is not found); `conflict` once this device is evicted."""
    if row is None:
        return frozenset()
    try:
        network = network_of(session, row.network)
    except OpError:  # not joined: no log says who was evicted
        return frozenset()
    evicted = await _undeliverable(network)
    _check_evicted(row.network, [], evicted)
    return evicted or frozenset()


async def outbox_requeue(session: Session, params: RequeueParams) -> dict[str, Any]:
    """Send a dead row again as a new row (same routing, and out under the same origin key,
    so a recipient that has it dedupes it) to its dead recipients that were not evicted from
    the network; the old one is aborted. `conflict`, as a send would be, when that leaves
    nobody or this device was evicted."""
    find = functools.partial(outbox_db.load_row, row_id=params.outbox_id)
    evicted = await _evicted_from(session, await _store_call(session, find, "find the row"))
    row = await _store_call(
        session,
        functools.partial(
            outbox_db.requeue,
            row_id=params.outbox_id,
            new_client_message_id=params.new_client_message_id,
            now_ms=wall_ms(),
            evicted=evicted,
        ),
        "requeue",
    )
    session.services.outbox.poke()
    return {"superseded": params.outbox_id, "row": row_view(row)}


async def outbox_abort(session: Session, params: AbortParams) -> dict[str, Any]:
    """Give up a send not finished yet (pending, inflight or dead): the row is aborted and
    each delivery still open dies, told as any other that gives up (`message_dead`, error
    `aborted`); `conflict` for a done or aborted row. Once the store answers, the abort is
    committed: a hang-up does not cut the store call off (it has its own deadline), its
    deliveries are handed to the outbox whatever happens, and it is answered ok even when
    waiting for their events fails."""
    with trio.CancelScope(shield=True):
        row, ended = await _store_call(
            session,
            functools.partial(outbox_db.abort, row_id=params.outbox_id, now_ms=wall_ms()),
            "abort",
        )
    # queued all the same if the wait fails (tell_dead): told once the outbox gets to them
    with contextlib.suppress(ActorGone, AskTimeout):
        await session.services.outbox.tell_dead(ended, outbox_db.ABORTED)
    session.services.outbox.poke()  # its pass recounts the rows: inspect's `pending` follows
    return {"row": row_view(row)}


OPS: list[Op[Any]] = [
    Op(
        "send",
        SendParams,
        send,
        "queue a durable message {network, to, message, ...}",
        Merge(_run_key, send_run, each=True),
        command="send",
        idempotency_key=True,
    ),
    Op(
        "inbox",
        InboxParams,
        inbox,
        "received messages {network?, from?, since?, limit?, cursor?}",
        command="inbox",
        http_get="/v1/inbox",
    ),
    Op(
        "outbox_list",
        OutboxListParams,
        outbox_list,
        "queued sends {status?, network?, limit?, cursor?}",
        command="outbox list",
        http_get="/v1/outbox",
    ),
    Op(
        "outbox_requeue",
        RequeueParams,
        outbox_requeue,
        "send a dead row again {outbox_id}",
        command="outbox requeue",
        http_post="/v1/outbox/requeue",
    ),
    Op(
        "outbox_abort",
        AbortParams,
        outbox_abort,
        "give up a send not finished yet {outbox_id}",
        command="outbox abort",
        http_post="/v1/outbox/abort",
    ),
]
