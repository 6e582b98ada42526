"""Hypothesis strategies for hostile input: raw bytes, JSON of any shape, mutated good input."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def mutated(good: bytes) -> st.SearchStrategy[bytes]:
    """`good` with bytes flipped, cut, duplicated or spliced in."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(good)
        for _ in range(draw(st.integers(1, 4))):
            action = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
            if not data:
                data += draw(st.binary(min_size=1, max_size=8))
                continue
            at = draw(st.integers(0, len(data) - 1))
            if action == "flip":
                data[at] ^= draw(st.integers(1, 255))
            elif action == "cut":
                del data[at : at + draw(st.integers(1, 16))]
            elif action == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            else:
                data[at:at] = data[at : at + draw(st.integers(1, 16))]
        return bytes(data)

    return mutate()


def json_line(value: Any) -> bytes:
    """A JSON value as one request line."""
    return json.dumps(value).encode() + b"\n"
