"""Helpers shared by the in-process and end-to-end suites."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio


@attrs.define
class LineClient:
    """Speaks JSON lines to the control socket; answers and events are kept apart."""

    stream: trio.SocketStream
    buffer: bytearray = attrs.field(factory=bytearray)
    next_id: int = 1

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, op: str, **params: Any) -> int:
        request_id = self.next_id
        self.next_id += 1
        await self.send_raw(json.dumps({"id": request_id, "op": op, **params}).encode() + b"\n")
        return request_id

    async def frame(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("daemon closed the connection")
            self.buffer += chunk
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        frame: dict[str, Any] = json.loads(line)
        return frame

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        request_id = await self.send(op, **params)
        while True:
            frame = await self.frame()
            if frame.get("id") == request_id:
                return frame

    async def aclose(self) -> None:
        await self.stream.aclose()
