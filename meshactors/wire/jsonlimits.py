"""What a JSON value from outside may hold: strings UTF-8 can carry, 64-bit integers, finite
numbers, bounded nesting.

JSON can spell values no part of the daemon can pass on: a lone surrogate (`"\\ud800"`) that
no UTF-8 line or SQLite text takes, an integer no SQLite column or counter holds, `NaN` or a
number that overflows to infinity, and nesting deep enough that re-encoding it in a deeper
call stack raises RecursionError. `check_json` refuses them all in one walk, so a value that
passed can be encoded, stored and forwarded anywhere.
"""

from __future__ import annotations

import math
from typing import Any, Literal

MAX_JSON_DEPTH = 64  # arrays and objects nested in one value (a peer frame counts its own)
MIN_JSON_INT = -(2**63)  # the integers SQLite and every counter hold: signed 64-bit
MAX_JSON_INT = 2**63 - 1

BadJsonReason = Literal["bad_value", "too_deep"]


class BadJson(ValueError):
    """A JSON value the daemon refuses; `reason` is a stable counter name."""

    def __init__(self, reason: BadJsonReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: BadJsonReason = reason
        self.detail = detail


def check_json(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise BadJson unless every string in `value` (keys too) encodes as UTF-8, every integer
    is signed 64-bit, every float is finite and it nests at most `max_depth` deep."""
    _check_items((value,), 0, max_depth)


def _check_items(items: Any, depth: int, max_depth: int) -> None:
    """Check values found `depth` containers deep, descending into the containers among them
    (one call per container: this runs on every frame a peer sends)."""
    for item in items:
        kind = type(item)
        if kind is str:
            if not item.isascii():  # O(1): ASCII text needs no encoding to know it fits
                _check_text(item)
        elif kind is dict:
            if depth >= max_depth:
                raise too_deep(max_depth)
            if not all(map(str.isascii, item)):
                for key in item:
                    _check_text(key)
            _check_items(item.values(), depth + 1, max_depth)
        elif kind is list:
            if depth >= max_depth:
                raise too_deep(max_depth)
            _check_items(item, depth + 1, max_depth)
        elif kind is int:
            if not MIN_JSON_INT <= item <= MAX_JSON_INT:
                raise BadJson("bad_value", "an integer beyond 64 bits")
        elif kind is float:
            if not math.isfinite(item):
                raise BadJson("bad_value", "a number that is not finite")
        elif item is not None and kind is not bool:
            raise BadJson("bad_value", f"not a JSON value: {kind.__name__}")


def too_deep(max_depth: int = MAX_JSON_DEPTH) -> BadJson:
    """The refusal of a value nested deeper than `max_depth` (also one too deep to parse)."""
    return BadJson("too_deep", f"nested deeper than {max_depth} arrays and objects")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadJson("bad_value", "a string UTF-8 cannot carry (a lone surrogate)") from None


def bad_json_path(value: Any, path: str) -> tuple[str, BadJson] | None:
    """Where in `value` (a JSON path under `path`, e.g. `params.extra.tags[2]`) check_json
    fails first, and why; None if it passes. Slower than check_json: for error messages."""
    try:
        check_json(value)
    except BadJson as bad:
        return _locate(value, path, 0) or (path, bad)
    return None


def _locate(value: Any, path: str, depth: int) -> tuple[str, BadJson] | None:
    """The first failing spot below `path` (depth counts the containers above `value`)."""
    if isinstance(value, dict | list) and depth >= MAX_JSON_DEPTH:
        return path, too_deep()
    children: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            try:
                _check_text(key)
            except BadJson as bad:
                return f"{path} (a key)", bad
            children.append((f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]", item))
    elif isinstance(value, list):
        children = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    else:
        try:
            check_json(value)
        except BadJson as bad:
            return path, bad
        return None
    for child_path, item in children:
        found = _locate(item, child_path, depth + 1)
        if found is not None:
            return found
    return None
