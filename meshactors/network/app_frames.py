"""Peer frames of RPC and channels (application frames: only active peers' reach a handler).

Payloads travel as `payload` (any JSON value) and `binary` (true: `payload` is base64 text).
Errors travel as a code from REMOTE_CODES and a message; any other code reads as remote_error.
"""

from __future__ import annotations

from typing import Any

import attrs

from meshactors.network.payload import MAX_BATCH, MAX_METHOD_OR_CHANNEL_CHARS, Payload
from meshactors.wire.peer import Frame, register_frame

MAX_ID_CHARS = 64  # a request or acknowledgement id on the wire
MAX_ERROR_CHARS = 4096  # an error message carried between daemons
MAX_CREDIT = 1 << 20  # chunks one credit frame may grant
REMOTE_CODES = ("no_handler", "handler_gone", "remote_error", "cancelled", "timeout", "lagged")


def _text(limit: int) -> Any:
    def check(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
        if not 0 < len(value) <= limit:
            raise ValueError(f"{attribute.name} must be 1-{limit} characters")

    return check


def _optional_text(limit: int) -> Any:
    return attrs.validators.optional(_text(limit))


def _binary(instance: Any, _attribute: attrs.Attribute[bool], value: bool) -> None:
    if value and not isinstance(instance.payload, str):
        raise ValueError("a binary payload is base64 text")


def _credit(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 < value <= MAX_CREDIT:
        raise ValueError(f"credit must be 1-{MAX_CREDIT}")


@attrs.frozen
class WireError:
    """An error one daemon reports to another about a call."""

    code: str = attrs.field(validator=_text(64))
    message: str = attrs.field(validator=_text(MAX_ERROR_CHARS))

    @property
    def known_code(self) -> str:
        """The code, or remote_error for one this build does not know."""
        return self.code if self.code in REMOTE_CODES else "remote_error"


@register_frame("rpc_call", app=True)
@attrs.frozen
class RpcCall(Frame):
    """Call `method` on the receiver; `stream` asks for chunks; the caller gives up after
    `timeout_ms`."""

    id: str = attrs.field(validator=_text(MAX_ID_CHARS))
    method: str = attrs.field(validator=_text(MAX_METHOD_OR_CHANNEL_CHARS))
    payload: Any
    binary: bool = attrs.field(validator=_binary)
    stream: bool
    timeout_ms: int


@register_frame("rpc_result", app=True)
@attrs.frozen
class RpcResult(Frame):
    """The single answer to a call: a payload or an error."""

    id: str = attrs.field(validator=_text(MAX_ID_CHARS))
    payload: Any = None
    binary: bool = attrs.field(default=False, validator=_binary)
    error: WireError | None = None


@register_frame("rpc_chunk", app=True)
@attrs.frozen
class RpcChunk(Frame):
    """One chunk of a streamed answer."""

    id: str = attrs.field(validator=_text(MAX_ID_CHARS))
    payload: Any
    binary: bool = attrs.field(default=False, validator=_binary)


@register_frame("rpc_end", app=True)
@attrs.frozen
class RpcEnd(Frame):
    """The end of a streamed answer, with the error that ended it, if any."""

    id: str = attrs.field(validator=_text(MAX_ID_CHARS))
    error: WireError | None = None


@register_frame("rpc_cancel", app=True)
@attrs.frozen
class RpcCancel(Frame):
    """The caller stopped waiting (cancelled, timed out, went away)."""

    id: str = attrs.field(validator=_text(MAX_ID_CHARS))
    reason: str = attrs.field(validator=_text(64))


@register_frame("rpc_credit", app=True)
@attrs.frozen
class RpcCredit(Frame):
    """The caller took `n` more chunks: the serving side may send `n` more."""

    id: str = attrs.field(validator=_text(MAX_ID_CHARS))
    n: int = attrs.field(validator=_credit)


@register_frame("chan", app=True)
@attrs.frozen
class Chan(Frame):
    """A message on a channel; `retain` keeps it as the sender's last value there; with `ack`
    the receiver acknowledges it."""

    channel: str = attrs.field(validator=_text(MAX_METHOD_OR_CHANNEL_CHARS))
    payload: Any
    binary: bool = attrs.field(default=False, validator=_binary)
    retain: bool = False
    ack: str | None = attrs.field(default=None, validator=_optional_text(MAX_ID_CHARS))


def _run_length(
    _instance: object, _attribute: attrs.Attribute[list[Any]], value: list[Any]
) -> None:
    if not 0 < len(value) <= MAX_BATCH:
        raise ValueError(f"a batch or run holds 1-{MAX_BATCH} messages")


@register_frame("chan_batch", app=True)
@attrs.frozen
class ChanBatch(Frame):
    """Several messages on one channel, in order (one frame, one seal); with `retain` the last
    one is kept as the sender's value."""

    channel: str = attrs.field(validator=_text(MAX_METHOD_OR_CHANNEL_CHARS))
    payloads: list[Any] = attrs.field(validator=_run_length)
    retain: bool = False


def _binary_each(instance: Any, _attribute: attrs.Attribute[bool], value: bool) -> None:
    if value and not all(isinstance(payload, str) for payload in instance.payloads):
        raise ValueError("binary payloads are base64 text")


@register_frame("chan_run", app=True, feature="chan_run")
@attrs.frozen
class ChanRun(Frame):
    """Separate messages on one channel, in order, in one frame (one seal): each reaches the
    subscribers as its own event. A peer without the `chan_run` feature gets one `chan` each;
    a run too large for one frame goes as two halves."""

    channel: str = attrs.field(validator=_text(MAX_METHOD_OR_CHANNEL_CHARS))
    payloads: list[Any] = attrs.field(validator=_run_length)
    binary: bool = attrs.field(default=False, validator=_binary_each)
    retain: bool = False

    def downgrade(self) -> list[Frame]:
        return [Chan(self.channel, payload, self.binary, self.retain) for payload in self.payloads]

    def split(self) -> list[Frame]:
        half = len(self.payloads) // 2
        if not half:
            return self.downgrade()
        return [
            attrs.evolve(self, payloads=self.payloads[:half]),
            attrs.evolve(self, payloads=self.payloads[half:]),
        ]


@register_frame("chan_ack", app=True)
@attrs.frozen
class ChanAck(Frame):
    """The receiver's daemon accepted the channel message with this `ack` id."""

    ack: str = attrs.field(validator=_text(MAX_ID_CHARS))
    subscribers: int


def payload_of_frame(frame: RpcCall | RpcResult | RpcChunk | Chan) -> Payload:
    """The payload a frame carries."""
    return Payload(frame.payload, frame.binary)
