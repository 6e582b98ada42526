"""A control-socket client for RPC and channel tests: answers by id, events kept in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import trio

from tests.network.conftest import WAIT, OpFailed


@attrs.define(eq=False)
class AppClient:
    """One connection; a reader task files answers by id and events in a list."""

    stream: trio.SocketStream
    events: list[dict[str, Any]] = attrs.field(factory=list)
    _answers: dict[int, dict[str, Any]] = attrs.field(factory=dict)
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _next_id: int = 1
    closed: bool = False

    @classmethod
    async def open(cls, socket: Path, nursery: trio.Nursery, *, read: bool = True) -> AppClient:
        """Connect; with `read=False` nobody reads the socket (a stalled program)."""
        client = cls(await trio.open_unix_socket(str(socket)))
        if read:
            nursery.start_soon(client._read)
        return client

    async def _read(self) -> None:
        buffer = b""
        try:
            while chunk := await self.stream.receive_some(65536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    frame = json.loads(line)
                    if "kind" in frame:
                        self.events.append(frame)
                    else:
                        self._answers[frame["id"]] = frame
                self._wake()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def send(self, op: str, **params: Any) -> int:
        """Send a request without waiting for its answer; returns its id."""
        request_id = self._next_id
        self._next_id += 1
        line = json.dumps({"id": request_id, "op": op, **params}).encode() + b"\n"
        await self.stream.send_all(line)
        return request_id

    async def answer(self, request_id: int, timeout: float = WAIT) -> dict[str, Any]:
        """The answer to request `request_id`: its data, or OpFailed with its code."""
        with trio.fail_after(timeout):
            while request_id not in self._answers:
                await self._changed.wait()
        answer = self._answers.pop(request_id)
        if not answer["ok"]:
            raise OpFailed(f"request {request_id}", answer["error"])
        data: dict[str, Any] = answer["data"]
        return data

    async def call(self, op: str, **params: Any) -> dict[str, Any]:
        """Run an op and return its data (OpFailed on an error answer)."""
        return await self.answer(await self.send(op, **params))

    async def event(self, kind: str, timeout: float = WAIT, **match: Any) -> dict[str, Any]:
        """The first event of `kind` with matching fields, removed from the list."""
        seen = 0
        with trio.fail_after(timeout):
            while True:
                for index in range(seen, len(self.events)):
                    event = self.events[index]
                    if event["kind"] == kind and all(event.get(k) == v for k, v in match.items()):
                        return self.events.pop(index)
                seen = len(self.events)
                await self._changed.wait()

    async def count(self, kind: str, n: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        """Wait until `n` events of `kind` arrived; returns them in order (left in the list)."""
        with trio.fail_after(timeout):
            while len(found := [e for e in self.events if e["kind"] == kind]) < n:
                await self._changed.wait()
        return found

    async def wait_closed(self, timeout: float = WAIT) -> None:
        """Wait until the daemon closed this connection."""
        with trio.fail_after(timeout):
            while not self.closed:
                await self._changed.wait()

    async def aclose(self) -> None:
        await self.stream.aclose()


def network_children(tree: dict[str, Any], network_id: str) -> dict[str, dict[str, Any]]:
    """The children of `network <id>` in an `inspect` answer, by name."""
    networks = next(c for c in tree["children"] if c["name"] == "networks")
    network = next(c for c in networks["children"] if c["name"] == f"network {network_id}")
    return {child["name"]: child for child in network["children"]}
