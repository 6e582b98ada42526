"""What brokers of one cluster write to Redis: key and channel names, presence entries and
events (JSON) and forwarded envelopes (binary), with strict decoders (docs/protocol.md,
"Brokers in a cluster"). Only the envelope a broker sees today crosses Redis: no plaintext."""

import json
import re
import struct
from typing import Final

import attrs

from meshactors.wire.broker import MalformedBatch, decode_batch, is_network_id, is_role
from meshactors.wire.device_id import PUBLIC_KEY_BYTES, is_device_id

PREFIX: Final = "meshactors:"
PRESENCE_CHANNEL: Final = PREFIX + "presence"  # join and leave events of every broker
BROKERS_KEY: Final = PREFIX + "brokers"  # set of broker ids that registered members
MAX_EVENT_CHARS: Final = 512  # a presence event is ~200 characters
_BROKER_ID_RE: Final = re.compile(r"[0-9a-f]{16}")
_NETWORK_LEN: Final = struct.Struct(">H")
_BATCH_LEN: Final = struct.Struct(">I")


def is_broker_id(value: object) -> bool:
    """A broker id: 16 lowercase hex characters, drawn at random when a broker starts."""
    return isinstance(value, str) and _BROKER_ID_RE.fullmatch(value) is not None


def inbox_channel(broker_id: str) -> str:
    """The pub/sub channel a broker reads the envelopes forwarded to its members from."""
    return f"{PREFIX}to:{broker_id}"


def alive_key(broker_id: str) -> str:
    """The key a broker's heartbeat keeps alive; gone, its members are reaped."""
    return f"{PREFIX}alive:{broker_id}"


def networks_key(broker_id: str) -> str:
    """The set of networks a broker registered members in (what a reaper walks)."""
    return f"{PREFIX}nets:{broker_id}"


def reap_key(broker_id: str) -> str:
    """Claimed with SET NX by the one broker that reaps a dead broker's members."""
    return f"{PREFIX}reap:{broker_id}"


def network_key(network: str) -> str:
    """The hash of a network's members: device id -> entry (which broker, role, hello time)."""
    return f"{PREFIX}net:{network}"


def nonce_key(device_id: str, nonce: str) -> str:
    """Set NX with an expiry covering the hello's timestamp window: a replay finds it."""
    return f"{PREFIX}nonce:{device_id}:{nonce}"


class BadClusterMessage(ValueError):
    """Something read from Redis that does not follow the formats here (dropped, counted)."""


@attrs.frozen
class PresenceEntry:
    """Where a device is connected: a broker, its role, and its hello's timestamp (newer wins)."""

    broker: str
    role: str
    ts_ms: int

    def encode(self) -> str:
        return json.dumps(
            {"b": self.broker, "r": self.role, "t": self.ts_ms}, separators=(",", ":")
        )


@attrs.frozen
class PresenceEvent:
    """A device joined or left a network at a broker (published by the Redis scripts)."""

    joined: bool
    network: str
    device_id: str
    entry: PresenceEntry


def encode_event(joined: bool, network: str, device_id: str, entry: PresenceEntry) -> str:
    fields: dict[str, object] = {"e": "join" if joined else "leave", "n": network, "d": device_id}
    fields |= {"b": entry.broker, "r": entry.role, "t": entry.ts_ms}
    return json.dumps(fields, separators=(",", ":"))


def decode_entry(raw: object) -> PresenceEntry:
    fields = _load(raw)
    return _entry(fields)


def decode_event(raw: object) -> PresenceEvent:
    fields = _load(raw)
    event, network, device_id = fields.get("e"), fields.get("n"), fields.get("d")
    if event not in ("join", "leave"):
        raise BadClusterMessage("unknown presence event")
    if not (isinstance(network, str) and is_network_id(network)):
        raise BadClusterMessage("bad network")
    if not (isinstance(device_id, str) and is_device_id(device_id)):
        raise BadClusterMessage("bad device id")
    return PresenceEvent(event == "join", network, device_id, _entry(fields))


def _load(raw: object) -> dict[str, object]:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            raise BadClusterMessage("not UTF-8") from None
    if not isinstance(raw, str) or len(raw) > MAX_EVENT_CHARS:
        raise BadClusterMessage("not a short text")
    try:
        fields = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadClusterMessage("not JSON") from None
    if not isinstance(fields, dict):
        raise BadClusterMessage("not a JSON object")
    return fields


def _entry(fields: dict[str, object]) -> PresenceEntry:
    broker, role, ts = fields.get("b"), fields.get("r"), fields.get("t")
    if not is_broker_id(broker) or not (isinstance(role, str) and is_role(role)):
        raise BadClusterMessage("bad broker or role")
    if type(ts) is not int:
        raise BadClusterMessage("bad timestamp")
    assert isinstance(broker, str)
    return PresenceEntry(broker, role, ts)


@attrs.frozen
class Envelope:
    """One batch for one member of a network on another broker (records carry `from`)."""

    network: str
    to: bytes
    batch: bytes


def encode_envelopes(envelopes: list[Envelope]) -> bytes:
    """Join envelopes into one published message: `u16 len | network | to | u32 len | batch`."""
    parts: list[bytes] = []
    for envelope in envelopes:
        network = envelope.network.encode()
        parts += (_NETWORK_LEN.pack(len(network)), network, envelope.to)
        parts += (_BATCH_LEN.pack(len(envelope.batch)), envelope.batch)
    return b"".join(parts)


def decode_envelopes(data: bytes) -> list[Envelope]:
    """Split a published message into envelopes; strict about every byte and every batch."""
    envelopes: list[Envelope] = []
    offset = 0
    try:
        while offset < len(data):
            (size,) = _NETWORK_LEN.unpack_from(data, offset)
            network = data[offset + 2 : offset + 2 + size].decode()
            offset += 2 + size
            to = data[offset : offset + PUBLIC_KEY_BYTES]
            (length,) = _BATCH_LEN.unpack_from(data, offset + PUBLIC_KEY_BYTES)
            start = offset + PUBLIC_KEY_BYTES + _BATCH_LEN.size
            batch = data[start : start + length]
            offset = start + length
            if not is_network_id(network) or len(to) != PUBLIC_KEY_BYTES or len(batch) != length:
                raise BadClusterMessage("truncated or bad envelope")
            decode_batch(batch)  # a member must never get a batch it cannot read
            envelopes.append(Envelope(network, to, batch))
    except (struct.error, UnicodeDecodeError, MalformedBatch) as exc:
        raise BadClusterMessage(str(exc)) from None
    return envelopes
