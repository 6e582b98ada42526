"""Compact JSON on the hot paths: encoders built once, and a parser without `json.loads`' extra
passes.

`json.dumps` with keyword arguments builds a new encoder on every call, and even a prebuilt
`JSONEncoder.encode` builds its C encoder anew per call; the functions here call one C encoder
made at import, about 1 µs less per message. They keep no circular-reference check: what they
encode was parsed from JSON or built by the daemon, so it cannot refer to itself (a value that
did would raise RecursionError, not loop). `loads` skips the whitespace passes of `json.loads`
for text that is exactly one JSON value, and leaves every other text, and every error
message, to `json.loads`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _encoder
from json.scanner import make_scanner
from typing import Any

_make_c_encoder = getattr(_encoder, "c_make_encoder", None)  # None without the C accelerator


def _compact_encoder(*, ensure_ascii: bool, allow_nan: bool) -> Callable[[Any], str]:
    """`JSONEncoder(separators=(",", ":"), ensure_ascii=…, allow_nan=…).encode`, without the
    per-call setup when CPython's C encoder is there."""
    reference = json.JSONEncoder(
        separators=(",", ":"), ensure_ascii=ensure_ascii, allow_nan=allow_nan
    )
    if _make_c_encoder is None:
        return reference.encode
    strings = _encoder.encode_basestring_ascii if ensure_ascii else _encoder.encode_basestring
    encode = _make_c_encoder(
        None, reference.default, strings, None, ":", ",", False, False, allow_nan
    )

    def compact(value: Any) -> str:
        return "".join(encode(value, 0))

    return compact


dumps_strict = _compact_encoder(ensure_ascii=True, allow_nan=False)  # peer frames, size checks
dumps_utf8 = _compact_encoder(ensure_ascii=False, allow_nan=True)  # IPC lines
dumps_ascii = _compact_encoder(ensure_ascii=True, allow_nan=True)  # IPC lines UTF-8 cannot carry

_scan_once = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # the stub's param is odd


def loads(text: str) -> Any:
    """`json.loads(text)`, faster for text that is one JSON value with nothing around it."""
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:  # not a value at 0 (whitespace, a BOM, bad JSON): json.loads says why
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def json_size(value: Any) -> int:
    """Bytes of `value` as strict compact JSON (ASCII-escaped: one byte per character).

    Raises TypeError or ValueError when `value` is not JSON."""
    return len(dumps_strict(value))
