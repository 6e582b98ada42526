"""The peer protocol: frames two daemons exchange, JSON-encoded before they are sealed.

A frame is a JSON object whose `t` key names its type; the other keys are the fields of the
attrs class registered for that tag, structured with the strict converter (no coercion, no
unknown keys). Control frames (hello, approval, caps, profile, ping, pong, bye) are defined
here. Application frames (RPC, channels, messages) register themselves with
`register_frame(tag, app=True)`; the network routes them from active peers only.

Versioning: `hello` always carries `major` and `minor`, and those two keys keep their meaning
forever, so a peer of another major can be read far enough to be told apart. Within a major,
a minor release may add frame types (announced in `features`) but never change a field.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, ClassVar, Literal, TypeVar, get_args

import attrs

from meshactors.wire.compact import dumps_strict, json_size, loads
from meshactors.wire.jsonlimits import BadJson, check_json
from meshactors.wire.strict import describe_error, make_strict_converter

PROTOCOL_VERSION = (1, 0)  # (major, minor): a different major cannot talk to us
# beyond the core frames; a frame type added within a major is sent only to peers naming its feature
FEATURES = (
    "caps",
    "profile",
    "ping",
    "rpc",
    "channels",
    "messages",
    "chan_run",
    "msg_acks",
    "binary_streams",
    "state",
    "msg_batch",
    "log_cursor",
)
MAX_PEER_FRAME_BYTES = 256 * 1024  # one frame's JSON, checked before parsing
MAX_TAGS = 64  # capability tags per advert
MAX_TAG_CHARS = 64  # one capability tag
MAX_EXTRA_BYTES = 16 * 1024  # a capability advert's `extra` object, as compact JSON
MAX_TEXT_CHARS = 280  # profile summary, app_version and similar one-line texts
MAX_NAME_CHARS = 64  # profile display name, a peer's label
MAX_FEATURES = 64  # features named in a hello
MAX_VERSION_PART = 65535  # a major or minor above this is shown as `?` in an incompatible reason
# the client library's type and the daemon's check (PROFILE_STATUSES) are one definition
PresenceStatus = Literal["idle", "working", "dnd"]
PROFILE_STATUSES: tuple[PresenceStatus, ...] = get_args(PresenceStatus)
APPROVAL_STATES = ("pending", "approved", "denied")  # our roster state of the peer, as told to it

F = TypeVar("F", bound="Frame")
B = TypeVar("B", bound="BinaryFrame")

converter = make_strict_converter()


class BadPeerFrame(ValueError):
    """A frame that could not be decoded; `reason` is a stable counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class IncompatiblePeer(ValueError):
    """A hello from a peer whose protocol major differs from ours; the message names its
    version only as far as it is sane numbers, so any hello gives a short, printable reason."""

    def __init__(self, major: object, minor: object) -> None:
        ours = f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}"
        theirs = f"{_version_part(major)}.{_version_part(minor)}"
        super().__init__(f"peer speaks protocol {theirs}, we speak {ours}")


def _version_part(value: object) -> str:
    """A peer's major or minor as text if it is an integer 0..MAX_VERSION_PART, else `?`."""
    sane = type(value) is int and 0 <= value <= MAX_VERSION_PART
    return str(value) if sane else "?"


class Frame:
    """Base of every peer frame; subclasses are attrs classes with a class-level `tag`."""

    tag: ClassVar[str] = ""
    app: ClassVar[bool] = False  # routed to an application handler, from active peers only
    feature: ClassVar[str | None] = None  # a peer must announce it in `features` to be sent this

    def downgrade(self) -> list[Frame]:
        """Frames saying the same to a peer that does not announce `feature` (frames with one)."""
        raise NotImplementedError(f"{self.tag} has no older form")

    def split(self) -> list[Frame]:
        """Smaller frames saying the same, in order, for one too large to send; [] if it cannot
        be split."""
        return []


class BinaryFrame(Frame):
    """A frame whose opened bytes are `BINARY_MARK | code | body`, not JSON: bulk bytes travel
    without base64. Subclasses register with `register_binary_frame`."""

    code: ClassVar[int] = 0

    def body(self) -> bytes:
        """The frame's bytes after its two-byte head."""
        raise NotImplementedError

    @classmethod
    def from_body(cls, body: bytes) -> BinaryFrame:
        """Decode the bytes after the head (ValueError when they are not this frame)."""
        raise NotImplementedError


BINARY_MARK = 0  # first byte of a binary frame; a JSON frame starts with `{`
_FRAMES: dict[str, type[Frame]] = {}
_BINARY_FRAMES: dict[int, type[BinaryFrame]] = {}


def register_frame(
    tag: str, *, app: bool = False, feature: str | None = None
) -> Callable[[type[F]], type[F]]:
    """Class decorator: make an attrs Frame subclass decodable under `tag`; a frame type with a
    `feature` (listed in FEATURES) goes only to peers announcing it, others get `downgrade()`."""

    def register(cls: type[F]) -> type[F]:
        if tag in _FRAMES:
            raise ValueError(f"peer frame tag {tag!r} registered twice")
        cls.tag = tag
        cls.app = app
        cls.feature = feature
        _FRAMES[tag] = cls
        return cls

    return register


def register_binary_frame(tag: str, code: int) -> Callable[[type[B]], type[B]]:
    """Class decorator: an application BinaryFrame decoded from opened bytes `0x00 | code`."""

    def register(cls: type[B]) -> type[B]:
        if not 0 < code < 256 or code in _BINARY_FRAMES:
            raise ValueError(f"binary frame code {code} invalid or registered twice")
        cls.code = code
        _BINARY_FRAMES[code] = register_frame(tag, app=True)(cls)
        return cls

    return register


def _check_text(limit: int) -> Callable[[object, attrs.Attribute[str], str], None]:
    def check(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
        if len(value) > limit or not value.isprintable():
            raise ValueError(f"{attribute.name} must be printable, at most {limit} characters")

    return check


def _check_tags(
    _instance: object, _attribute: attrs.Attribute[list[str]], value: list[str]
) -> None:
    if len(value) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags")
    for tag in value:
        if not 0 < len(tag) <= MAX_TAG_CHARS or not tag.isprintable():
            raise ValueError(f"a tag must be 1-{MAX_TAG_CHARS} printable characters: {tag!r}")


def _check_extra(
    _instance: object, _attribute: attrs.Attribute[dict[str, Any]], value: dict[str, Any]
) -> None:
    try:
        size = json_size(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extra must be a JSON object: {exc}") from None
    if size > MAX_EXTRA_BYTES:
        limit = MAX_EXTRA_BYTES
        raise ValueError(f"extra is {size} bytes as ASCII-escaped JSON; the limit is {limit}")


def _check_count(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 2**31:
        raise ValueError(f"{attribute.name} must be between 0 and 2^31")


@attrs.frozen
class Capabilities:
    """A daemon's capability advert in one network; `extra` reaches peers untouched."""

    tags: list[str] = attrs.field(factory=list, validator=_check_tags)
    app_version: str = attrs.field(default="", validator=_check_text(MAX_TEXT_CHARS))
    max_connections: int = attrs.field(default=0, validator=_check_count)
    extra: dict[str, Any] = attrs.field(factory=dict, validator=_check_extra)


def _check_status(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in PROFILE_STATUSES:
        raise ValueError(f"status must be one of {', '.join(PROFILE_STATUSES)}: {value!r}")


@attrs.frozen
class Profile:
    """What a daemon shows about its user; an invisible one is hidden from others' lists."""

    display_name: str = attrs.field(default="", validator=_check_text(MAX_NAME_CHARS))
    status: str = attrs.field(default="idle", validator=_check_status)
    summary: str = attrs.field(default="", validator=_check_text(MAX_TEXT_CHARS))
    visible: bool = True

    def as_shown(self) -> Profile:
        """What peers are sent: an invisible profile reveals nothing but its invisibility."""
        return self if self.visible else Profile(visible=False)


def _check_approval(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in APPROVAL_STATES:
        raise ValueError(f"approval must be one of {', '.join(APPROVAL_STATES)}: {value!r}")


def _check_features(
    _instance: object, _attribute: attrs.Attribute[list[str]], value: list[str]
) -> None:
    if len(value) > MAX_FEATURES or any(not 0 < len(f) <= MAX_NAME_CHARS for f in value):
        raise ValueError(f"at most {MAX_FEATURES} features of 1-{MAX_NAME_CHARS} characters")


@register_frame("hello")
@attrs.frozen
class Hello(Frame):
    """Who we are and where we stand with the peer; `answer` marks a reply to its hello."""

    major: int
    minor: int
    features: list[str] = attrs.field(validator=_check_features)
    label: str | None = attrs.field(
        validator=attrs.validators.optional(_check_text(MAX_NAME_CHARS))
    )
    app_version: str = attrs.field(validator=_check_text(MAX_TEXT_CHARS))
    role: str = attrs.field(validator=_check_text(MAX_NAME_CHARS))
    capabilities: Capabilities
    profile: Profile
    approval: str = attrs.field(validator=_check_approval)
    answer: bool = False


@register_frame("approval")
@attrs.frozen
class Approval(Frame):
    """Our roster state of the peer changed."""

    state: str = attrs.field(validator=_check_approval)


@register_frame("caps")
@attrs.frozen
class Caps(Frame):
    """Our capability advert in this network changed."""

    capabilities: Capabilities


@register_frame("profile")
@attrs.frozen
class ProfileFrame(Frame):
    """Our profile changed."""

    profile: Profile


@register_frame("ping")
@attrs.frozen
class Ping(Frame):
    """Round-trip probe; the peer echoes `token` in a pong."""

    token: int


@register_frame("pong")
@attrs.frozen
class Pong(Frame):
    """Answer to a ping."""

    token: int


@register_frame("bye")
@attrs.frozen
class Bye(Frame):
    """We are leaving the network (removed, or shutting down)."""

    reason: str = attrs.field(validator=_check_text(MAX_TEXT_CHARS))


H = TypeVar("H")
_UNSTRUCTURE: dict[type[Frame], Callable[[Frame], dict[str, Any]]] = {}
_STRUCTURE: dict[type[Frame], Callable[[Any, type[Frame]], Frame]] = {}


def _hook(hooks: dict[type[Frame], H], cls: type[Frame], look_up: Callable[[type[Frame]], H]) -> H:
    """The converter's hook for a frame class from `hooks`, looked up (and kept) the first
    time: cattrs dispatches on the type at every call otherwise."""
    hook = hooks.get(cls)
    if hook is None:
        hook = hooks[cls] = look_up(cls)
    return hook


def encode_frame(frame: Frame) -> bytes:
    """A frame as compact JSON bytes (a binary frame as its head and body), ready to seal."""
    if isinstance(frame, BinaryFrame):
        return bytes((BINARY_MARK, frame.code)) + frame.body()
    data = _hook(_UNSTRUCTURE, type(frame), converter.get_unstructure_hook)(frame)
    return dumps_strict({"t": frame.tag, **data}).encode()


def encode_for(frame: Frame, features: Collection[str]) -> list[bytes]:
    """`frame` encoded for a peer announcing `features`: as its older frames if the peer lacks
    its feature, and split (when it can be) until each part fits MAX_PEER_FRAME_BYTES."""
    if frame.feature is not None and frame.feature not in features:
        return [data for older in frame.downgrade() for data in encode_for(older, features)]
    data = encode_frame(frame)
    parts = frame.split() if len(data) > MAX_PEER_FRAME_BYTES else []
    if not parts:
        return [data]
    return [data for part in parts for data in encode_for(part, features)]


def decode_frame(data: bytes) -> Frame:
    """Decode opened bytes into a frame.

    Raises IncompatiblePeer for a hello of another major, BadPeerFrame (reason `malformed`,
    `too_large`, `unknown_frame`, or from `check_json` `bad_value` or `too_deep`) for anything
    else that is not a frame we know. Whatever it returns holds only values `check_json` takes:
    no handler ever sees a string, number or nesting it cannot pass on.
    """
    if len(data) > MAX_PEER_FRAME_BYTES:
        raise BadPeerFrame("too_large", f"{len(data)} bytes, limit {MAX_PEER_FRAME_BYTES}")
    if data[:1] == b"\0":
        return _decode_binary(data)
    try:
        fields = loads(data.decode("utf-8"))  # str parses faster than bytes
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadPeerFrame("malformed", f"not JSON: {exc}") from None
    except RecursionError:
        raise BadPeerFrame("too_deep", "nested too deep to parse") from None
    try:
        check_json(fields)
    except BadJson as bad:
        raise BadPeerFrame(bad.reason, bad.detail) from None
    if not isinstance(fields, dict) or not isinstance(fields.get("t"), str):
        raise BadPeerFrame("malformed", "a frame is a JSON object with a string `t`")
    tag = fields.pop("t")
    if tag == "hello" and fields.get("major") != PROTOCOL_VERSION[0]:
        raise IncompatiblePeer(fields.get("major"), fields.get("minor"))
    cls = _FRAMES.get(tag)
    if cls is None:
        raise BadPeerFrame("unknown_frame", f"no frame type {tag[:40]!r}")
    try:
        frame: Frame = _hook(_STRUCTURE, cls, converter.get_structure_hook)(fields, cls)
    except Exception as exc:
        raise BadPeerFrame("malformed", f"{tag}: {describe_error(exc)}") from None
    return frame


def _decode_binary(data: bytes) -> BinaryFrame:
    """Decode a binary frame (`BINARY_MARK | code | body`), or BadPeerFrame."""
    cls = _BINARY_FRAMES.get(data[1]) if len(data) > 1 else None
    if cls is None:
        raise BadPeerFrame("unknown_frame", "no binary frame type with that code")
    try:
        return cls.from_body(data[2:])
    except ValueError as exc:
        raise BadPeerFrame("malformed", f"{cls.tag}: {exc}") from None
