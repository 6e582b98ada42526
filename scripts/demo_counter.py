"""The demo's streaming service, written with the client library: `count` streams n chunks.

python -m scripts.demo_counter NETWORK     (MESHACTORS_HOME picks the daemon)
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import trio

from meshactors.client import MeshClient


async def count(payload: Any, _ctx: object) -> AsyncIterator[dict[str, int]]:
    """Stream {"n": 1} … {"n": payload}: each chunk reaches the caller as it is yielded."""
    for n in range(1, int(payload) + 1):
        yield {"n": n}


async def main(network: str) -> None:
    async with MeshClient() as client:
        await client.serve(network, "count", count)
        print("serving count", flush=True)  # the demo waits for this line
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
