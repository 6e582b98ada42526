"""Serving methods: run the local handler of each `rpc_inbound` in its own task and answer
with its return value (or chunks, for an async generator), or with its error's message."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from meshactors.client.errors import ClientError

log = logging.getLogger("meshactors.client")  # the application decides where it goes

MAX_HANDLER_TASKS = 256  # inbound calls handled at once; more are answered "busy" at once


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
    return inspect.isasyncgenfunction(handler)


class Responder(Protocol):
    """The answering ops a handler's outcome goes through (MeshClient provides them)."""

    async def rpc_respond(
        self, request_id: str, payload: Any = None, *, error: str | None = None
    ) -> Any: ...

    async def rpc_stream_chunk(self, request_id: str, payload: Any) -> Any: ...

    async def rpc_stream_end(self, request_id: str, *, error: str | None = None) -> Any: ...


@attrs.define(eq=False)
class Serving:
    """The local handlers by (network, method), and the tasks answering inbound calls."""

    responder: Responder
    handlers: dict[tuple[str, str], Handler | StreamHandler] = attrs.field(factory=dict)
    running: int = 0

    def inbound(self, frame: dict[str, Any], nursery: trio.Nursery) -> None:
        """Start answering one `rpc_inbound` event; never waits."""
        try:
            context = RequestContext(
                frame["network"], frame["from"], frame["method"], frame["request_id"]
            )
        except KeyError as missing:
            log.warning("rpc_inbound without the field %s", missing)
            return
        handler = self.handlers.get((context.network, context.method))
        if handler is None:
            error = f"no local handler for {context.method!r}"
        elif self.running >= MAX_HANDLER_TASKS:
            error = f"busy: {MAX_HANDLER_TASKS} calls are being handled"
        else:
            self.running += 1
            nursery.start_soon(self._answer, handler, frame.get("payload"), context)
            return
        nursery.start_soon(
            self._deliver, self.responder.rpc_respond(context.request_id, error=error)
        )

    async def _answer(
        self, handler: Handler | StreamHandler, payload: Any, context: RequestContext
    ) -> None:
        try:
            if is_streaming(handler):
                await self._stream(handler(payload, context), context)  # type: ignore[arg-type]
            else:
                outcome = self._run(handler(payload, context), context)  # type: ignore[arg-type]
                await self._deliver(outcome)
        finally:
            self.running -= 1

    async def _run(self, answer: Awaitable[Any], context: RequestContext) -> Any:
        try:
            result = await answer
        except Exception as exc:
            return await self.responder.rpc_respond(
                context.request_id, error=_message(exc, context)
            )
        return await self.responder.rpc_respond(context.request_id, result)

    async def _stream(self, chunks: AsyncIterator[Any], context: RequestContext) -> None:
        error = None
        try:
            async for chunk in chunks:
                try:
                    await self.responder.rpc_stream_chunk(context.request_id, chunk)
                except ClientError as failed:  # the caller is gone: cancelled, timed out, left
                    log.debug("stream %s stopped: %s", context.request_id, failed.code)
                    return
        except Exception as exc:
            error = _message(exc, context)
        finally:
            aclose = getattr(chunks, "aclose", None)  # run the generator's own cleanup now
            if aclose is not None:
                await aclose()
        await self._deliver(self.responder.rpc_stream_end(context.request_id, error=error))

    async def _deliver(self, answer: Awaitable[Any]) -> None:
        try:
            await answer
        except ClientError as failed:  # the call ended meanwhile; its caller was told
            log.debug("answer not delivered: %s", failed)


def _message(exc: Exception, context: RequestContext) -> str:
    log.warning("%s on %s failed: %s", context.method, context.network, exc, exc_info=exc)
    return str(exc) or type(exc).__name__
