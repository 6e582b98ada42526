"""Ops for RPC and channels: claim and serve methods, call peers, publish and subscribe.

Names and shapes follow docs/protocol.md ("RPC and channels"). A payload is `payload` (any
JSON value) or `payload_b64` (base64 of binary); answers and events use the same field.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import trio

from meshactors.control.session import ChannelSubscription, Session
from meshactors.network.app_frames import MAX_ERROR_CHARS, MAX_ID_CHARS
from meshactors.network.payload import Payload, check_name, payload_of, payloads_of
from meshactors.network.rpc import Rpc, check_timeout
from meshactors.ops.network_ops import network_of
from meshactors.ops.optable import Merge, Op
from meshactors.wire.ipc import ErrorCode, OpError

if TYPE_CHECKING:
    from meshactors.network.network import Network

T = TypeVar("T")


@attrs.frozen
class RpcRegister:
    """Params of `rpc_register`: own `method` on `network` (last claim wins); `streaming` is
    false, true (answers with a stream) or "binary" (serves binary streams); `if_unclaimed`:
    refuse (`conflict`) instead of displacing another connection (a claim being restored)."""

    network: str
    method: str
    streaming: Any = False  # checked by rpc_register: the converter has no bool | str
    if_unclaimed: bool = False


@attrs.frozen
class RpcUnregister:
    """Params of `rpc_unregister`."""

    network: str
    method: str


@attrs.frozen
class RpcCallParams:
    """Params of `rpc_call` and `rpc_call_stream`."""

    network: str
    peer: str
    method: str
    payload: Any = None
    payload_b64: str | None = None
    timeout_ms: int | None = None


@attrs.frozen
class RequestRef:
    """Params of `rpc_cancel`: the call's `request_id`, or `call`, the `id` of this
    connection's own `rpc_call` request still waiting for its answer."""

    request_id: str | None = None
    call: Any = None  # checked by rpc_cancel: the converter has no int | str


@attrs.frozen
class RpcRespond:
    """Params of `rpc_respond`: a payload, or an `error` message."""

    request_id: str
    payload: Any = None
    payload_b64: str | None = None
    error: str | None = None


@attrs.frozen
class RpcStreamChunk:
    """Params of `rpc_stream_chunk`."""

    request_id: str
    payload: Any = None
    payload_b64: str | None = None


@attrs.frozen
class RpcStreamEnd:
    """Params of `rpc_stream_end`; `error` ends the stream as failed."""

    request_id: str
    error: str | None = None


@attrs.frozen
class ChannelRef:
    """Params of `channel_subscribe` and `channel_unsubscribe`."""

    network: str
    channel: str


@attrs.frozen
class ChannelSendTo:
    """Params of `channel_send_to`; `payloads` sends several messages in one go."""

    network: str
    channel: str
    peer: str
    payload: Any = None
    payload_b64: str | None = None
    payloads: list[Any] | None = None
    retain: bool = False


@attrs.frozen
class ChannelSendAll:
    """Params of `channel_send_all`; `payloads` sends several messages in one go."""

    network: str
    channel: str
    payload: Any = None
    payload_b64: str | None = None
    payloads: list[Any] | None = None
    retain: bool = False


@attrs.frozen
class ChannelSendReliable:
    """Params of `channel_send_reliable`: answered once the peer's daemon acknowledged."""

    network: str
    channel: str
    peer: str
    ttl_ms: int
    payload: Any = None
    payload_b64: str | None = None
    message_id: str | None = None  # the program's id: a retry with the same one is deduplicated


async def _at_holder(
    session: Session, request_id: str, what: str, act: Callable[[Rpc], T], *, served: bool
) -> T:
    """Run `act` in the core of the network that holds a call by id (served here, or made from
    here) and return what it gave: one ask per network tried, the look-up and the work in the
    same ask, so answering a call costs one trip to core."""
    for network in session.services.networks.all():
        rpc = network.rpc
        held = rpc.has_inbound if served else rpc.has_outbound

        def attempt(rpc: Rpc = rpc, held: Callable[[str], bool] = held) -> tuple[bool, T | None]:
            return (True, act(rpc)) if held(request_id) else (False, None)

        found, result = await network.ask(what, attempt)
        if found:
            return cast(T, result)
    raise OpError(
        ErrorCode.UNKNOWN_REQUEST,
        f"no call {request_id[:64]!r} in flight (finished, cancelled, timed out or never made)",
    )


def _release_at_close(
    session: Session, network_id: str, kind: str, release: Callable[[Network], Awaitable[None]]
) -> None:
    """Have the connection's close run `release` (once per network id and `kind`) in the
    network joined as `network_id` then: looked up at close, so after the network was removed
    and joined again it is the new one, which holds what the connection took since. A network
    not joined then, or retired (stopped for good), released all of it when it stopped. A core
    that crashed mid-release (`unavailable` from a network not retired) may have left some of
    it held, which core keeps across restarts: the release is asked again, and its restarted
    core runs it (its inbox outlives the crash)."""

    async def gone() -> None:
        try:
            network = network_of(session, network_id)
        except OpError:  # not joined: nothing runs that holds it
            return
        for last in (False, True):
            try:
                await release(network)
                return
            except OpError as error:
                if error.code is not ErrorCode.UNAVAILABLE:
                    raise
                if network.retired:
                    return
                if last:
                    raise

    session.on_close_once(f"{kind} {network_id}", gone)


def _watch(session: Session, network_id: str) -> None:
    """Have the connection's close release its claims and calls in the network `network_id`."""

    async def release(network: Network) -> None:
        await network.ask("release a closed connection", lambda: network.rpc.client_gone(session))

    _release_at_close(session, network_id, "rpc", release)


def _watch_channels(session: Session, network_id: str) -> None:
    """Have the connection's close end its subscriptions in the network `network_id`."""

    async def release(network: Network) -> None:
        unsubscribe = functools.partial(network.channels.client_gone, session.client_id)
        await network.ask_await("unsubscribe a closed connection", unsubscribe)

    _release_at_close(session, network_id, "channels", release)


def _method_key(params: RpcRegister | RpcUnregister) -> Hashable:
    """The claim a request changes: its register and unregister run in the order sent."""
    return ("method", params.network, params.method)


def _channel_key(params: ChannelRef) -> Hashable:
    """The subscription a request changes: its subscribe and unsubscribe run in the order sent."""
    return ("channel", params.network, params.channel)


async def rpc_register(session: Session, params: RpcRegister) -> dict[str, Any]:
    """Own a method on a network; the connection that owned it before is told it was displaced."""
    check_name(params.method, "method")
    if not isinstance(params.streaming, bool) and params.streaming != "binary":
        message = 'params.streaming must be true, false or "binary"'
        raise OpError(ErrorCode.INVALID_PARAMS, message)
    network = network_of(session, params.network)
    _watch(session, params.network)
    claim = functools.partial(
        network.rpc.register,
        session,
        params.method,
        params.streaming,
        if_unclaimed=params.if_unclaimed,
    )
    displaced = await network.ask("rpc_register", claim)
    return {"network": params.network, "method": params.method, "displaced": displaced}


async def rpc_unregister(session: Session, params: RpcUnregister) -> dict[str, Any]:
    """Give up a method this connection owns."""
    network = network_of(session, params.network)
    release = functools.partial(network.rpc.unregister, session, params.method)
    return {"released": await network.ask("rpc_unregister", release)}


def _call_args(session: Session, params: RpcCallParams) -> tuple[Network, Payload, int]:
    check_name(params.method, "method")
    network = network_of(session, params.network)
    _watch(session, params.network)
    payload = payload_of(params.payload, params.payload_b64)
    return network, payload, check_timeout(params.timeout_ms)


async def rpc_call(session: Session, params: RpcCallParams) -> dict[str, Any]:
    """Call a method on a peer (or this daemon) and answer with its answer: core opens the
    call and sends its frame; its answer settles the Pending this waits on. A call cancelled
    before it got here (`rpc_cancel{call}` ran first) is never opened."""
    network, payload, timeout_ms = _call_args(session, params)
    call = functools.partial(
        network.rpc.call, session, params.peer, params.method, payload, timeout_ms
    )
    await trio.lowlevel.checkpoint_if_cancelled()
    # shielded: a call core opened is waited for; a cancel ends it (abandon) at the wait below
    answer = await network.ask("rpc_call", call, shield=True)
    return await answer


async def rpc_call_stream(session: Session, params: RpcCallParams) -> dict[str, Any]:
    """Call a streaming method; chunks follow as rpc_call_stream_chunk/_end events."""
    network, payload, timeout_ms = _call_args(session, params)
    call = functools.partial(
        network.rpc.call_stream, session, params.peer, params.method, payload, timeout_ms
    )
    return {"request_id": await network.ask_await("rpc_call_stream", call)}


async def rpc_cancel(session: Session, params: RequestRef) -> dict[str, Any]:
    """Stop a call this connection made, by its request id or by the `id` of its own
    `rpc_call` request (which then fails with `cancelled`); the serving side is told."""
    if params.request_id is not None and params.call is None:
        cancel = functools.partial(Rpc.cancel, client=session, request_id=params.request_id)
        await _at_holder(session, params.request_id, "rpc_cancel", cancel, served=False)
    elif params.call is None:
        raise OpError(ErrorCode.INVALID_PARAMS, "give request_id or call: one is required")
    elif params.request_id is not None:
        raise OpError(ErrorCode.INVALID_PARAMS, "give request_id or call, not both")
    elif isinstance(params.call, bool) or not isinstance(params.call, int | str):
        raise OpError(ErrorCode.INVALID_PARAMS, "params.call must be a string or an integer")
    elif not session.cancel_request(params.call):
        message = f"no rpc_call request {params.call!r:.64} of this connection in flight"
        raise OpError(ErrorCode.UNKNOWN_REQUEST, message)
    return {"cancelled": True}


async def rpc_respond(session: Session, params: RpcRespond) -> dict[str, Any]:
    """Answer a call this connection serves, with a payload or an error message; answered
    once the answer left (or with why it could not)."""
    answer: Payload | str
    if params.error is not None:
        _check_error(params.error)
        if params.payload is not None or params.payload_b64 is not None:
            raise OpError(ErrorCode.INVALID_PARAMS, "give a payload or an error, not both")
        answer = params.error
    else:
        answer = payload_of(params.payload, params.payload_b64)
    respond = functools.partial(
        Rpc.respond, client=session, request_id=params.request_id, answer=answer
    )
    sent = await _at_holder(session, params.request_id, "rpc_respond", respond, served=True)
    return await sent


async def rpc_stream_chunk(session: Session, params: RpcStreamChunk) -> dict[str, Any]:
    """Send one chunk of a streamed answer (waits while the caller is a window behind)."""
    payload = payload_of(params.payload, params.payload_b64)
    queue = functools.partial(
        Rpc.queue_chunk, client=session, request_id=params.request_id, payload=payload
    )
    sent = await _at_holder(session, params.request_id, "rpc_stream_chunk", queue, served=True)
    await sent  # core sends it once credit allows
    return {}


async def rpc_stream_end(session: Session, params: RpcStreamEnd) -> dict[str, Any]:
    """End a streamed answer; an `error` reaches the caller with the end."""
    if params.error is not None:
        _check_error(params.error)
    queue = functools.partial(
        Rpc.queue_end, client=session, request_id=params.request_id, error=params.error
    )
    await (await _at_holder(session, params.request_id, "rpc_stream_end", queue, served=True))
    return {}


def _check_error(message: str) -> None:
    """Refuse an error message longer than a peer frame carries (before the call changes)."""
    if len(message) > MAX_ERROR_CHARS:
        raise OpError(
            ErrorCode.INVALID_PARAMS,
            f"params.error: at most {MAX_ERROR_CHARS} characters, got {len(message)}",
        )


async def channel_subscribe(session: Session, params: ChannelRef) -> dict[str, Any]:
    """Receive a channel's messages as channel_inbound events (retained values at once)."""
    check_name(params.channel, "channel")
    network = network_of(session, params.network)
    _watch_channels(session, params.network)
    reader = ChannelSubscription(session)
    subscribe = functools.partial(network.channels.subscribe, reader, params.channel)
    return await network.ask_await("channel_subscribe", subscribe)


async def channel_unsubscribe(session: Session, params: ChannelRef) -> dict[str, Any]:
    """Stop receiving a channel: nothing of it is written after the answer."""
    network = network_of(session, params.network)
    unsubscribe = functools.partial(network.channels.unsubscribe, session.client_id, params.channel)
    reader = await network.ask_await("channel_unsubscribe", unsubscribe)
    if reader is not None:
        reader.end()
    return {"unsubscribed": reader is not None}


async def channel_send_to(session: Session, params: ChannelSendTo) -> dict[str, Any]:
    """Publish to one peer (or this daemon); `retain` keeps it for late subscribers."""
    check_name(params.channel, "channel")
    payloads = payloads_of(params.payload, params.payload_b64, params.payloads)
    return await _send_to(session, params, [payloads], separate=False)


async def _send_to(
    session: Session, params: ChannelSendTo, groups: list[list[Payload]], *, separate: bool
) -> dict[str, Any]:
    network = network_of(session, params.network)
    send = functools.partial(
        network.channels.send_to,
        params.peer,
        params.channel,
        groups,
        retain=params.retain,
        separate=separate,
    )
    await network.ask_await("channel_send_to", send)
    return {"dispatched_to": [params.peer]}


async def channel_send_all(session: Session, params: ChannelSendAll) -> dict[str, Any]:
    """Publish to every active peer; answers the device ids it went to."""
    check_name(params.channel, "channel")
    payloads = payloads_of(params.payload, params.payload_b64, params.payloads)
    return await _send_all(session, params, [payloads], separate=False)


async def _send_all(
    session: Session, params: ChannelSendAll, groups: list[list[Payload]], *, separate: bool
) -> dict[str, Any]:
    network = network_of(session, params.network)
    send = functools.partial(
        network.channels.send_all, params.channel, groups, retain=params.retain, separate=separate
    )
    return {"dispatched_to": await network.ask_await("channel_send_all", send)}


def _run_item(
    params: ChannelSendTo | ChannelSendAll,
) -> tuple[Hashable, Payload | list[Payload]]:
    """A send's run key and item: its payload, or its `payloads` batch.

    Consecutive sends to the same network, channel and target, alike in `retain`, run as one
    request to core: one-message sends (alike in being binary) as one `chan_run` frame (one
    seal, one event per message at the receiver); `payloads` batches each as their own
    `chan_batch` frame (one event each), the frames sealed together so the link's writer puts
    them in one WebSocket message.
    """
    check_name(params.channel, "channel")
    peer = params.peer if isinstance(params, ChannelSendTo) else None
    if params.payloads is not None:
        batch = payloads_of(params.payload, params.payload_b64, params.payloads)
        return (params.network, params.channel, peer, params.retain, "batch"), batch
    payload = payload_of(params.payload, params.payload_b64)
    return (params.network, params.channel, peer, params.retain, payload.binary), payload


def _run_groups(items: list[Any]) -> tuple[list[list[Payload]], bool]:
    """A run's items as frame groups, and whether each payload is its own event: batches
    each their own group, one-message sends one group of separate events."""
    if isinstance(items[0], list):
        return items, False
    return [items], True


async def _send_run_to(session: Session, params: ChannelSendTo, items: list[Any]) -> dict[str, Any]:
    groups, separate = _run_groups(items)
    return await _send_to(session, params, groups, separate=separate)


async def _send_run_all(
    session: Session, params: ChannelSendAll, items: list[Any]
) -> dict[str, Any]:
    groups, separate = _run_groups(items)
    return await _send_all(session, params, groups, separate=separate)


def check_message_id(message_id: str | None) -> None:
    """OpError invalid_params unless a program's reliable message id is 1-MAX_ID_CHARS
    printable ASCII characters (it travels as the frame's acknowledgement id)."""
    if message_id is not None and not (
        0 < len(message_id) <= MAX_ID_CHARS and message_id.isascii() and message_id.isprintable()
    ):
        raise OpError(
            ErrorCode.INVALID_PARAMS,
            f"message_id must be 1-{MAX_ID_CHARS} printable ASCII characters",
        )


async def channel_send_reliable(session: Session, params: ChannelSendReliable) -> dict[str, Any]:
    """Publish to one peer and answer once its daemon acknowledged (or `timeout` at ttl)."""
    check_name(params.channel, "channel")
    payload = payload_of(params.payload, params.payload_b64)
    check_message_id(params.message_id)
    network = network_of(session, params.network)
    start = functools.partial(
        network.channels.start_reliable,
        params.peer,
        params.channel,
        payload,
        params.ttl_ms,
        params.message_id,
    )
    reliable = await network.ask_await("channel_send_reliable", start)
    try:
        with trio.move_on_after(params.ttl_ms / 1000):
            await reliable.done.wait()  # core sets it: acknowledged, failed or expired
    finally:
        network.tell(functools.partial(network.channels.end_reliable, reliable.ack))
    return reliable.outcome(params.ttl_ms)


OPS: list[Op[Any]] = [
    Op(
        "rpc_register",
        RpcRegister,
        rpc_register,
        "own a method (last claim wins)",
        command="rpc serve",
        client="serve",
        pushes=True,
        ordered_by=_method_key,
    ),
    Op(
        "rpc_unregister",
        RpcUnregister,
        rpc_unregister,
        "give up a method",
        command="rpc serve",
        client="unserve",
        ordered_by=_method_key,
    ),
    Op(
        "rpc_call",
        RpcCallParams,
        rpc_call,
        "call a method on a peer and wait for the answer",
        command="rpc call",
        cancellable=True,
    ),
    Op(
        "rpc_call_stream",
        RpcCallParams,
        rpc_call_stream,
        "call a streaming method",
        command="rpc call",
        pushes=True,
    ),
    Op(
        "rpc_cancel",
        RequestRef,
        rpc_cancel,
        "stop a call and tell the serving side",
        command="rpc call",
    ),
    Op("rpc_respond", RpcRespond, rpc_respond, "answer a served call", command="rpc serve"),
    Op(
        "rpc_stream_chunk",
        RpcStreamChunk,
        rpc_stream_chunk,
        "send a chunk of a streamed answer",
        command="rpc serve",
    ),
    Op(
        "rpc_stream_end", RpcStreamEnd, rpc_stream_end, "end a streamed answer", command="rpc serve"
    ),
    Op(
        "channel_subscribe",
        ChannelRef,
        channel_subscribe,
        "receive a channel's messages",
        command="channel subscribe",
        client="subscribe",
        pushes=True,
        ordered_by=_channel_key,
    ),
    Op(
        "channel_unsubscribe",
        ChannelRef,
        channel_unsubscribe,
        "stop receiving a channel",
        command="channel subscribe",
        client="subscribe",
        ordered_by=_channel_key,
    ),
    Op(
        "channel_send_to",
        ChannelSendTo,
        channel_send_to,
        "publish to one peer",
        Merge(_run_item, _send_run_to),
        command="channel send",
    ),
    Op(
        "channel_send_all",
        ChannelSendAll,
        channel_send_all,
        "publish to every active peer",
        Merge(_run_item, _send_run_all),
        command="channel send",
    ),
    Op(
        "channel_send_reliable",
        ChannelSendReliable,
        channel_send_reliable,
        "publish to one peer, answered on acknowledgement",
        command="channel send",
    ),
]
