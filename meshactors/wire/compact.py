"""Compact JSON encoders, built once: `json.dumps` with keyword arguments builds a new encoder
on every call, which costs microseconds per message on the hot paths."""

from __future__ import annotations

import json
from typing import Any

STRICT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)  # ASCII, no NaN: peer frames
UTF8 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # IPC lines
ASCII = json.JSONEncoder(separators=(",", ":"))  # IPC lines holding what UTF-8 cannot carry


def json_size(value: Any) -> int:
    """Bytes of `value` as strict compact JSON (ASCII-escaped: one byte per character).

    Raises TypeError or ValueError when `value` is not JSON."""
    return len(STRICT.encode(value))
