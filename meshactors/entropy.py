"""Random bytes from the OS, drawn a block at a time: one `getrandom` call per block instead
of one per call id, which a network's rpc draws for every call it places."""

from __future__ import annotations

import os

BLOCK_BYTES = 4096  # drawn from os.urandom at once


class EntropyPool:
    """Hands out fresh bytes of an os.urandom block, each byte once; a forked child draws anew
    (it must not repeat its parent's bytes)."""

    def __init__(self) -> None:
        self._block = b""
        self._used = 0
        os.register_at_fork(after_in_child=self.discard)

    def take(self, count: int) -> bytes:
        """`count` random bytes (at most BLOCK_BYTES) never handed out before."""
        if self._used + count > len(self._block):
            self._block, self._used = os.urandom(BLOCK_BYTES), 0
        taken = self._block[self._used : self._used + count]
        self._used += count
        return taken

    def discard(self) -> None:
        """Drop the bytes not yet handed out: the next take draws a new block."""
        self._block, self._used = b"", 0


_POOL = EntropyPool()


def random_bytes(count: int) -> bytes:
    """`count` (≤ BLOCK_BYTES) random bytes from the process's pool, for call ids."""
    return _POOL.take(count)
