"""Serving methods: run the local handler of each `rpc_inbound` in its own task and answer
with its return value (or chunks, for an async generator), or with its error's message. A
binary call's payload reaches the handler as bytes, and bytes it answers are sent binary."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from meshactors.client._ops import received
from meshactors.client.errors import ClientError
from meshactors.network.app_frames import MAX_ERROR_CHARS

log = logging.getLogger("meshactors.client")  # the application decides where it goes

MAX_HANDLER_TASKS = 256  # inbound calls handled at once; more are answered "busy" at once
# codes of an answer refused for what it carries, while its call stays open for another answer
REFUSED_CONTENT = frozenset({"invalid_params", "payload_too_large", "frame_too_large"})
BYTES_LIKE = (bytes, bytearray, memoryview)  # an answer or chunk of these is sent binary


@attrs.frozen
class RequestContext:
    """Who is calling a served method, and which call this is."""

    network: str
    peer: str  # the caller's device id
    method: str
    request_id: str


Handler = Callable[[Any, RequestContext], Awaitable[Any]]
StreamHandler = Callable[[Any, RequestContext], AsyncIterator[Any]]  # an async generator


def is_streaming(handler: Handler | StreamHandler) -> bool:
    """Async generator functions serve streamed answers; coroutine functions single ones."""
    return _marked(handler, inspect.isasyncgenfunction)


def require_async(handler: Callable[..., Any], *, streams: bool) -> None:
    """TypeError at once for a handler that is not `async def` (or, if it `streams`, an async
    generator), a function or an object's `__call__`: awaiting what a plain function returns
    would otherwise fail every call it gets, and only on the serving side."""
    if _marked(handler, inspect.iscoroutinefunction):
        return
    if streams and _marked(handler, inspect.isasyncgenfunction):
        return
    kind = "an async function or async generator" if streams else "an async function"
    raise TypeError(f"the handler {handler!r} is not {kind}: define it with async def")


def _marked(handler: Any, test: Callable[[Any], bool]) -> bool:
    """`test` holds for the handler, or for its `__call__` (a callable object's)."""
    return test(handler) or test(handler.__call__)


class Responder(Protocol):
    """The answering ops a handler's outcome goes through (MeshClient provides them)."""

    async def rpc_respond(
        self,
        request_id: str,
        payload: Any = None,
        *,
        data: bytes | None = None,
        error: str | None = None,
    ) -> Any: ...

    async def rpc_stream_chunk(
        self, request_id: str, payload: Any = None, *, data: bytes | None = None
    ) -> Any: ...

    async def rpc_stream_end(self, request_id: str, *, error: str | None = None) -> Any: ...


@attrs.define(eq=False)
class Serving:
    """The local handlers by (network, method), and the tasks answering inbound calls."""

    responder: Responder
    handlers: dict[tuple[str, str], Handler | StreamHandler] = attrs.field(factory=dict)
    running: int = 0
    # by request id: the cancel scope of each call being answered, cancelled when it ends
    answering: dict[str, trio.CancelScope] = attrs.field(factory=dict)

    def inbound(self, frame: dict[str, Any], nursery: trio.Nursery) -> None:
        """Start answering one `rpc_inbound` event; never waits."""
        try:
            context = RequestContext(
                frame["network"], frame["from"], frame["method"], frame["request_id"]
            )
        except KeyError as missing:
            log.warning("rpc_inbound without the field %s", missing)
            return
        try:
            payload = received(frame)
        except (TypeError, ValueError) as bad:  # only a peer can send one
            error: str | None = f"payload_b64 is not base64: {bad}"
            log.warning("%s on %s: %s", context.method, context.network, error)
        else:
            error = self._start(payload, context, nursery)
        if error is not None:
            nursery.start_soon(
                self._deliver, self.responder.rpc_respond(context.request_id, error=error), context
            )

    def _start(self, payload: Any, context: RequestContext, nursery: trio.Nursery) -> str | None:
        """Start the call's handler in a task of its own; else why it cannot be answered."""
        handler = self.handlers.get((context.network, context.method))
        if handler is None:
            return f"no local handler for {context.method!r}"
        if self.running >= MAX_HANDLER_TASKS:
            return f"busy: {MAX_HANDLER_TASKS} calls are being handled"
        self.running += 1
        scope = self.answering[context.request_id] = trio.CancelScope()
        nursery.start_soon(self._answer, handler, payload, context, scope)
        return None

    def cancelled(self, frame: dict[str, Any]) -> None:
        """The call ended without its answer (`rpc_cancelled`: its caller cancelled it, it timed
        out, the caller left): cancel its handler, as nothing it sends would be taken."""
        scope = self.answering.get(frame.get("request_id"))  # type: ignore[arg-type]
        if scope is not None:
            scope.cancel()

    def connection_lost(self) -> None:
        """The connection every call being answered came over is gone, and the daemon told
        their callers (`cancelled`): cancel every handler, as nothing it sends would be taken
        (a new connection knows none of these calls)."""
        for scope in self.answering.values():
            scope.cancel()

    async def _answer(
        self,
        handler: Handler | StreamHandler,
        payload: Any,
        context: RequestContext,
        scope: trio.CancelScope,
    ) -> None:
        try:
            with scope:
                if is_streaming(handler):
                    await self._stream(handler, payload, context)  # type: ignore[arg-type]
                else:
                    await self._run(handler, payload, context)  # type: ignore[arg-type]
        finally:
            self.running -= 1
            if self.answering.get(context.request_id) is scope:
                del self.answering[context.request_id]

    async def _run(self, handler: Handler, payload: Any, context: RequestContext) -> None:
        """Answer with the handler's result; calling it is inside the `try`, so one that raises
        at once (a wrong signature) answers its error as one that raises later does."""
        try:
            result = await handler(payload, context)
        except Exception as exc:
            await self._deliver(
                self.responder.rpc_respond(context.request_id, error=_message(exc, context)),
                context,
            )
            return
        refused = await self._deliver(
            self.responder.rpc_respond(context.request_id, **_contents(result)), context
        )
        if refused is not None:  # the call is still open: answer it with why
            await self._deliver(
                self.responder.rpc_respond(context.request_id, error=refused), context
            )

    async def _stream(self, handler: StreamHandler, payload: Any, context: RequestContext) -> None:
        """Send the generator's items, then the end (with its error, as `_run` answers one)."""
        error = None
        chunks: AsyncIterator[Any] | None = None
        try:
            chunks = handler(payload, context)
            async for chunk in chunks:
                try:
                    await _sent(
                        self.responder.rpc_stream_chunk(context.request_id, **_contents(chunk))
                    )
                except ClientError as failed:
                    error = _refusal(failed, context)
                    if error is None:
                        return  # the caller is gone: cancelled, timed out, left
                    break
        except Exception as exc:
            error = _message(exc, context)
        finally:
            aclose = getattr(chunks, "aclose", None)  # run the generator's own cleanup now
            if aclose is not None:
                await aclose()
        await self._deliver(self.responder.rpc_stream_end(context.request_id, error=error), context)

    async def _deliver(self, answer: Awaitable[Any], context: RequestContext) -> str | None:
        """Send an answer; None once sent or when the call is gone, else the error message to
        answer with instead, as the daemon refused what this answer carried."""
        try:
            await _sent(answer)
        except ClientError as failed:
            return _refusal(failed, context)
        return None


def _contents(value: Any) -> dict[str, Any]:
    """An answer's or chunk's keyword arguments: bytes go binary as `data`, anything else as
    the JSON `payload` (bytes are never JSON, so the two cannot be confused)."""
    if isinstance(value, BYTES_LIKE):
        return {"data": bytes(value)}
    return {"payload": value}


async def _sent(answer: Awaitable[Any]) -> None:
    """Send an answer; one the client cannot encode as JSON (a set, an object, a key that is
    not a string, a value that holds itself) raises ClientError invalid_params, as one the
    daemon refuses does, instead of an error that would end the client."""
    try:
        await answer
    except (TypeError, ValueError, RecursionError) as exc:  # ValueError: pure-Python json
        raise ClientError("invalid_params", f"not JSON: {exc}") from exc


def _refusal(failed: ClientError, context: RequestContext) -> str | None:
    """Why an answer was refused for what it carried (a payload not JSON the daemon takes, too
    large, a line over the cap), for the caller; None when the call ended meanwhile (cancelled,
    timed out, left: its caller was told), which needs no answer."""
    if failed.code not in REFUSED_CONTENT:
        log.debug("answer to %s not delivered: %s", context.request_id, failed)
        return None
    log.warning("%s on %s: its answer was refused: %s", context.method, context.network, failed)
    return f"handler result refused: {failed}"[:MAX_ERROR_CHARS]


def _message(exc: Exception, context: RequestContext) -> str:
    log.warning("%s on %s failed: %s", context.method, context.network, exc, exc_info=exc)
    return (str(exc) or type(exc).__name__)[:MAX_ERROR_CHARS]
