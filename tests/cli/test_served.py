"""What a served command writes answers as JSON when it parses, else as the text it is."""

from __future__ import annotations

import sys

from meshactors.cli.served import run_command, stream_command

DEEP = "[" * 5000  # deeper than the parser goes: RecursionError, not ValueError
WRITE_DEEP = [sys.executable, "-c", f"print({DEEP!r})"]
TIMEOUT = 60.0  # seconds the command may take: a bound, not a pause


async def test_output_nested_too_deeply_answers_as_its_text() -> None:
    assert await run_command(WRITE_DEEP, None, TIMEOUT) == DEEP + "\n"


async def test_a_streamed_line_nested_too_deeply_answers_as_its_text() -> None:
    lines = [line async for line in stream_command(WRITE_DEEP, None, TIMEOUT)]
    assert [line.strip() for line in lines] == [DEEP]
