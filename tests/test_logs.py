"""Log setup: journald priority prefixes when stderr is the stream $JOURNAL_STREAM names."""

from __future__ import annotations

import json
import logging
import os
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog
from hypothesis import assume, example, given
from hypothesis import strategies as st

from meshactors.logs import (
    UNPARSEABLE_URL,
    JournalPrefix,
    StdlibHandler,
    configure_logging,
    is_journal_stream,
    redacted_url,
)


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[TextIO]:
    """A real file to log into; structlog is reset afterwards."""
    with open(tmp_path / "log", "w+", encoding="utf-8") as file:
        yield file
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
        root.removeHandler(handler)


def stream_id(file: TextIO) -> str:
    status = os.fstat(file.fileno())
    return f"{status.st_dev}:{status.st_ino}"


def test_journal_stream_must_name_this_very_stream(log_file: TextIO, tmp_path: Path) -> None:
    with open(tmp_path / "other", "w") as other:
        assert is_journal_stream(log_file, {"JOURNAL_STREAM": stream_id(log_file)})
        assert not is_journal_stream(log_file, {"JOURNAL_STREAM": stream_id(other)})
    assert not is_journal_stream(log_file, {})


@pytest.mark.parametrize(
    ("method", "priority"),
    [("critical", 2), ("error", 3), ("exception", 3), ("warning", 4), ("info", 6), ("debug", 7)],
)
def test_prefix_is_the_syslog_priority_of_the_level(method: str, priority: int) -> None:
    prefix = JournalPrefix(structlog.processors.JSONRenderer())
    level = "error" if method == "exception" else method

    line = prefix(None, method, {"event": "hello", "level": level})

    assert line == f'<{priority}>{{"event": "hello", "level": "{level}"}}'


def test_every_line_of_a_multi_line_event_is_prefixed() -> None:
    prefix = JournalPrefix(structlog.dev.ConsoleRenderer(colors=False))

    rendered = prefix(None, "warning", {"event": "first\nsecond", "level": "warning"})

    lines = rendered.split("\n")
    assert len(lines) == 2
    assert all(line.startswith("<4>") for line in lines)


def test_configured_logging_under_journald_writes_prefixed_json(log_file: TextIO) -> None:
    configure_logging(json=True, stream=log_file, env={"JOURNAL_STREAM": stream_id(log_file)})
    log = structlog.get_logger("test")
    log.warning("disk nearly full", free_mb=12)
    log.info("fine")

    log_file.seek(0)
    warning, info = log_file.read().splitlines()
    assert warning.startswith("<4>{")
    assert json.loads(warning[3:])["free_mb"] == 12
    assert info.startswith("<6>{")


def test_without_journald_lines_are_plain(log_file: TextIO) -> None:
    configure_logging(json=True, stream=log_file, env={})
    structlog.get_logger("test").error("boom")

    log_file.seek(0)
    assert json.loads(log_file.read())["event"] == "boom"


def test_a_library_warning_with_a_traceback_is_one_json_line(log_file: TextIO) -> None:
    """trio's EMFILE warning from its accept loop, say: under JSON logging not a plain
    multi-line traceback but one JSON object, its traceback a field."""
    configure_logging(json=True, stream=log_file, env={})
    try:
        raise OSError(24, "Too many open files")
    except OSError as error:
        logging.getLogger("trio").warning("accept returned %s; retrying", "EMFILE", exc_info=error)
    logging.getLogger("trio").info("below the stdlib level: not logged")

    log_file.seek(0)
    (line,) = log_file.read().splitlines()
    event = json.loads(line)
    assert (event["event"], event["level"], event["logger"]) == (
        "accept returned EMFILE; retrying",
        "warning",
        "trio",
    )
    assert "OSError: [Errno 24] Too many open files" in event["exception"]


def test_a_log_line_that_cannot_be_written_is_dropped_not_raised(tmp_path: Path) -> None:
    from meshactors.logs import SafePrintLogger

    stream = open(tmp_path / "log", "w")  # noqa: SIM115
    stream.close()  # writing now raises ValueError, as a full disk raises OSError
    logger = SafePrintLogger(stream)
    before = SafePrintLogger.dropped
    logger.error("the disk is full")
    assert SafePrintLogger.dropped == before + 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (
            "rediss://user:pw@[::1]:6379/2?ssl_cert_reqs=none",
            "rediss://[::1]:6379/2?ssl_cert_reqs=none",
        ),
        ("redis://user@host/0", "redis://host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        (
            "redis://host:6379/0?username=u&password=p%26w&db=1&Password=x",
            "redis://host:6379/0?db=1",
        ),
        ("rediss://host/0?ssl_cert_reqs=none&password=pw", "rediss://host/0?ssl_cert_reqs=none"),
        ("redis://u:pw@host/0?password=pw", "redis://host/0"),
    ],
)
def test_a_redacted_url_keeps_everything_but_the_credentials(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


LOGGED_PASSWORD = "hunter2"  # the credential a generated URL carries; never in a redacted one


@given(
    scheme=st.sampled_from(["redis://", "rediss://", "http://", "redis:", ""]),
    user=st.text(st.characters(exclude_characters="/?#@[]"), max_size=4),
    rest=st.text(max_size=30),
)
@example(scheme="redis://", user="", rest="[::1/0")
@example(scheme="", user="user", rest="host:6379/0")
def test_a_redacted_url_never_raises_nor_shows_the_password(
    scheme: str, user: str, rest: str
) -> None:
    """It runs in error handlers (the cluster link's, on a URL coredis refused): raising there
    would turn a logged outage into a crash. A URL typed without its `//` hides its password
    too."""
    assume(LOGGED_PASSWORD not in rest)
    assert LOGGED_PASSWORD not in redacted_url(f"{scheme}{user}:{LOGGED_PASSWORD}@{rest}")


def test_a_url_that_cannot_be_split_is_shown_as_a_placeholder() -> None:
    assert redacted_url("redis://:hunter2@[::1/0") == UNPARSEABLE_URL


CUT_AT = 20  # bytes of a log line the file has room for
LINES_WHILE_FULL = 500  # lines logged while the file cannot grow: more than a text buffer holds


def test_a_line_a_full_disk_cut_short_is_never_spliced_with_the_next(tmp_path: Path) -> None:
    """The file may grow by only part of a line (a short write), then by nothing (EFBIG, as a
    full disk says ENOSPC) for a while, then freely again: each line left stands alone."""
    from meshactors.logs import SafePrintLogger

    path = tmp_path / "daemon.log"
    said = [json.dumps({"event": f"line {n}", "pad": "x" * 60}) for n in range(LINES_WHILE_FULL)]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    with path.open("w") as stream:
        logger = SafePrintLogger(stream)
        before = SafePrintLogger.dropped
        logger.info("first")
        resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + CUT_AT, hard))
        try:
            for line in said:  # CUT_AT bytes of the first are written, none of the others
                logger.info(line)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        logger.info("last")
    assert SafePrintLogger.dropped == before + len(said)
    assert path.read_text().split("\n") == ["first", said[0][:CUT_AT], "last", ""]


def test_a_coredis_error_is_dropped_while_our_warnings_are_logged(log_file: TextIO) -> None:
    """A hung Redis makes coredis log each cut-short reconnect at error with a long traceback;
    the broker's own `cluster_degraded` warning says it once."""
    configure_logging(json=True, stream=log_file, env={})
    try:
        raise TimeoutError("handshake cancelled")
    except TimeoutError:
        logging.getLogger("coredis").exception("Connection attempt failed unexpectedly!")
    logging.getLogger("coredis.connection").error("a child logger of coredis")
    logging.getLogger("coredis").critical("kept: critical")
    structlog.get_logger("test").warning("cluster_degraded")

    log_file.seek(0)
    events = [json.loads(line)["event"] for line in log_file.read().splitlines()]
    assert events == ["kept: critical", "cluster_degraded"]
