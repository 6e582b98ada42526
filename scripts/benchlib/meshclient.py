"""Bench client roles on a daemon's socket, speaking raw JSON lines (as little client cost as
the stack relay's clients): `echo SOCKET NETWORK` serves method `echo`; `streamer SOCKET NETWORK`
serves streaming method `stream` ({chunks, size}); `sink SOCKET NETWORK
CHANNEL COUNT` subscribes and prints `count N seconds S` once COUNT messages arrived (or after
SINK_IDLE seconds without one)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import trio

SINK_IDLE = 5.0  # seconds without a message before the sink reports what it has
INBOUND = b'{"kind":"channel_inbound"'  # how the daemon writes a channel message event
_INBOUND_CALL = '{"kind":"rpc_inbound"'  # ... and a call to serve
_REQUEST_ID = '"request_id":"'  # a call's id, as the daemon writes it (hex: no escapes)
_PAYLOAD = '"payload":'
_DECODER = json.JSONDecoder()


class Lines:
    """Newline-delimited JSON over a stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.next_id = 0

    async def send(self, op: str, **params: object) -> None:
        self.next_id += 1
        line = json.dumps({"id": self.next_id, "op": op, **params}) + "\n"
        await self.stream.send_all(line.encode())

    async def call(self, op: str, **params: object) -> None:
        """Send a request and wait for its answer, which must be a success (events that come
        before it are dropped)."""
        await self.send(op, **params)
        while True:
            for frame in await self.frames():
                if frame.get("id") == self.next_id:
                    assert frame.get("ok"), frame
                    return

    async def notify(self, op: str, **params: object) -> None:
        """Send a request without `id`: no answer comes unless it fails."""
        await self.stream.send_all((json.dumps({"op": op, **params}) + "\n").encode())

    async def complete(self) -> bytes:
        """The next complete lines (at least one), newlines included, as they arrived."""
        while (end := self.buffer.rfind(b"\n") + 1) == 0:
            chunk = await self.stream.receive_some(1 << 20)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        lines, self.buffer = self.buffer[:end], self.buffer[end:]
        return lines

    async def frames(self) -> list[dict[str, object]]:
        """The next batch of complete frames (at least one)."""
        return [json.loads(line) for line in (await self.complete()).splitlines()]


def request_template(op: str, **params: object) -> tuple[bytes, bytes]:
    """A request encoded once, split where its id goes: `head + b"%d" % id + tail` is the
    line (the bench's senders pre-encode, as the relay's clients send fixed bytes)."""
    rest = json.dumps({"op": op, **params})
    return b'{"id":', ("," + rest[1:] + "\n").encode()


def channel_messages(lines: bytes) -> int:
    """Channel messages in complete event lines: one per `channel_inbound`, or its `payloads`.

    Counted without parsing each line (the bench's sink must not be its bottleneck).
    """
    if b'"payloads":' not in lines:
        return lines.count(INBOUND)
    count = 0
    for line in lines.splitlines():
        if line.startswith(INBOUND):
            payloads = json.loads(line).get("payloads")
            count += len(payloads) if isinstance(payloads, list) else 1
    return count


def echo_answer(inbound: str) -> bytes:
    """The `rpc_respond` notification echoing an `rpc_inbound` line's JSON payload, it and the
    request id picked out without decoding the rest of the line (the relay's echo decodes
    nothing). A quote inside a JSON string is escaped, so the field names match only as keys.
    """
    start = inbound.index(_REQUEST_ID) + len(_REQUEST_ID)
    request_id = inbound[start : inbound.index('"', start)]
    at = inbound.index(_PAYLOAD) + len(_PAYLOAD)
    end = _DECODER.raw_decode(inbound, at)[1]
    return (
        f'{{"op":"rpc_respond","request_id":"{request_id}","payload":{inbound[at:end]}}}\n'.encode()
    )


async def echo(socket: str, network: str) -> None:
    lines = Lines(await trio.open_unix_socket(socket))
    await lines.call("rpc_register", network=network, method="echo")
    print("ready", flush=True)
    while True:
        for line in (await lines.complete()).decode().splitlines():
            if line.startswith(_INBOUND_CALL):
                await lines.stream.send_all(echo_answer(line))


async def streamer(socket: str, network: str) -> None:
    lines = Lines(await trio.open_unix_socket(socket))
    await lines.call("rpc_register", network=network, method="stream", streaming=True)
    print("ready", flush=True)
    while True:
        for frame in await lines.frames():
            if frame.get("kind") == "rpc_inbound":
                await _stream(lines, frame)


async def _stream(lines: Lines, call: dict[str, Any]) -> None:
    """Answer one call with payload {chunks, size}: chunks sent one after the other's answer."""
    spec = call["payload"]
    chunk = "x" * spec["size"]
    for _ in range(spec["chunks"]):
        await lines.call("rpc_stream_chunk", request_id=call["request_id"], payload=chunk)
    await lines.send("rpc_stream_end", request_id=call["request_id"])


async def sink(socket: str, network: str, channel: str, count: int) -> None:
    lines = Lines(await trio.open_unix_socket(socket))
    await lines.call("channel_subscribe", network=network, channel=channel)
    print("ready", flush=True)
    received, first = 0, 0.0
    while received < count:
        with trio.move_on_after(SINK_IDLE) as idle:
            arrived = channel_messages(await lines.complete())
        if idle.cancelled_caught:
            break
        if arrived and not received:
            first = time.perf_counter()
        received += arrived
    print(f"count {received} seconds {time.perf_counter() - first:.6f}", flush=True)


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "echo":
        trio.run(echo, args[0], args[1])
    elif role == "streamer":
        trio.run(streamer, args[0], args[1])
    else:
        trio.run(sink, args[0], args[1], args[2], int(args[3]))
