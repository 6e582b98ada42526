"""A raw HTTP/1.1 client for tests: sends bytes as given, reads responses by Content-Length
(and streamed bodies chunk by chunk)."""

from __future__ import annotations

import json
import shutil
from typing import Any

import attrs
import pytest
import trio

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(
    CURL is None, reason="curl is not installed; the raw-socket tests cover the same routes"
)


@attrs.frozen
class Response:
    """One parsed response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        """The error code of a JSON error body."""
        code: str = self.json()["error"]["code"]
        return code


@attrs.define
class RawHttp:
    """Writes raw requests and parses the responses off one stream."""

    stream: trio.abc.Stream
    buffer: bytearray = attrs.field(factory=bytearray)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buffer += chunk

    async def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        raw, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        status_line, *lines = raw.decode().split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split(" ")[1]), headers

    async def response(self) -> Response:
        status, headers = await self.head()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            await self._fill()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return Response(status, headers, body)

    async def request(
        self, method: str, path: str, body: bytes | None = None, /, **headers: str
    ) -> Response:
        await self.send(encode_request(method, path, body, **headers))
        return await self.response()

    async def closed(self) -> bool:
        """Whether the server closed its side (after any buffered bytes)."""
        if self.buffer:
            return False
        return not await self.stream.receive_some(65536)

    async def until(self, marker: bytes) -> bytes:
        """Everything up to and including `marker` (for streamed bodies)."""
        while marker not in self.buffer:
            await self._fill()
        index = self.buffer.index(marker) + len(marker)
        data = bytes(self.buffer[:index])
        del self.buffer[:index]
        return data

    async def chunk(self) -> bytes:
        """The next chunk of a chunked body (b"" for the last)."""
        size = int(await self.until(b"\r\n"), 16)
        while len(self.buffer) < size + 2:
            await self._fill()
        data = bytes(self.buffer[:size])
        assert self.buffer[size : size + 2] == b"\r\n"
        del self.buffer[: size + 2]
        return data


def encode_request(method: str, path: str, body: bytes | None = None, /, **headers: str) -> bytes:
    """A request with Host: localhost unless given; header names use `_` for `-`."""
    fields = {"Host": "localhost"}
    fields.update({name.replace("_", "-"): value for name, value in headers.items()})
    if body is not None:
        fields["Content-Length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def sse_events(data: bytes) -> list[dict[str, Any]]:
    """Server-sent events in `data` as dicts of their fields (`data` decoded as JSON)."""
    events = []
    for block in data.decode().split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        if fields:
            events.append(fields)
    return events
