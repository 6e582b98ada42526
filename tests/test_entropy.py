"""The entropy pool: fresh bytes each take, a new block when one runs out, none shared by fork."""

from __future__ import annotations

import os

from meshactors.entropy import BLOCK_BYTES, EntropyPool


def test_takes_are_fresh_bytes_of_the_asked_length_across_blocks() -> None:
    pool = EntropyPool()
    takes = [pool.take(16) for _ in range(3 * BLOCK_BYTES // 16 + 5)]  # crosses three blocks
    assert all(len(taken) == 16 for taken in takes)
    assert len(set(takes)) == len(takes)
    assert len(pool.take(BLOCK_BYTES)) == BLOCK_BYTES


def test_a_forked_child_does_not_repeat_its_parents_bytes() -> None:
    pool = EntropyPool()
    pool.take(4)  # a block is drawn: the child inherits what is left of it
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write_end, pool.take(32))
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end, "rb") as from_child:
        childs = from_child.read()
    assert len(childs) == 32
    assert childs != pool.take(32)
