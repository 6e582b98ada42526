"""What a served command writes answers as JSON when it parses, else as the text it is."""

from __future__ import annotations

import sys

from meshactors.cli.served import command_failed, run_command, stream_command
from meshactors.wire.pipe_frames import FrameParser, Reset, encode

DEEP = "[" * 5000  # deeper than the parser goes: RecursionError, not ValueError
WRITE_DEEP = [sys.executable, "-c", f"print({DEEP!r})"]
TIMEOUT = 60.0  # seconds the command may take: a bound, not a pause


async def test_output_nested_too_deeply_answers_as_its_text() -> None:
    assert await run_command(WRITE_DEEP, None, TIMEOUT) == DEEP + "\n"


async def test_a_streamed_line_nested_too_deeply_answers_as_its_text() -> None:
    lines = [line async for line in stream_command(WRITE_DEEP, None, TIMEOUT)]
    assert [line.strip() for line in lines] == [DEEP]


def test_a_failed_command_s_non_ascii_stderr_reaches_the_opener_with_its_last_line() -> None:
    """Escaped, 2,000 Cyrillic characters are over the error frame: its middle gives way."""
    stderr = "".join(f"ошибка {n}: файл не найден\n" for n in range(100)).encode()
    message = str(command_failed(["sh"], 1, stderr))
    (got,) = FrameParser().feed(b"".join(encode(Reset("remote_error", message))))
    assert isinstance(got, Reset) and got.code == "remote_error"
    assert got.message.startswith("sh exited 1: ") and "…" in got.message
    assert got.message.endswith("ошибка 99: файл не найден")
