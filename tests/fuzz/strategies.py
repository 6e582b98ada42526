"""Hypothesis strategies for hostile input: raw bytes, JSON of any shape, mutated good input."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from meshactors.wire.jsonlimits import MAX_JSON_DEPTH

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

# Text with lone surrogates (which st.text leaves out), and the JSON no daemon can pass on:
# integers beyond 64 bits, NaN and infinities, nesting past MAX_JSON_DEPTH.
odd_text = st.text(st.characters(exclude_categories=()), max_size=12) | st.sampled_from(
    ["\ud800", "x\udfffy", "\ud83d", "\U0001f600", "é", ""]
)
hostile_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63)
    | st.integers(max_value=-(2**63) - 1)
    | st.floats()
    | odd_text
)


def _nested(depth: int) -> Any:
    value: Any = 0
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


hostile_json: st.SearchStrategy[Any] = st.recursive(
    hostile_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(odd_text, children, max_size=4)
    ),
    max_leaves=12,
) | st.integers(1, 3 * MAX_JSON_DEPTH).map(_nested)


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
