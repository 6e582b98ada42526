"""structlog setup: a console renderer on a terminal, JSON lines otherwise, to stderr; under
journald each line starts with its syslog priority (`<3>`…`<7>`) so `journalctl -p` filters.
stdlib logging (trio's, libraries') goes through the same renderer: one JSON line each too."""

from __future__ import annotations

import logging
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from typing import ClassVar, TextIO

import attrs
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

JOURNAL_STREAM_ENV = "JOURNAL_STREAM"  # "dev:ino" of the stream systemd connected to journald
SYSLOG_PRIORITIES = {  # structlog level -> syslog priority (sd-daemon(3) prefixes)
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warn": 4,
    "warning": 4,
    "info": 6,
    "debug": 7,
}
DEFAULT_PRIORITY = 6  # info, for a level the table does not know
CREDENTIAL_PARAMETERS = ("password", "username")  # query parameters redacted_url drops
UNPARSEABLE_URL = "<unparseable url>"  # what redacted_url shows for a URL it cannot split

# stdlib logging's records (trio's, libraries') below this are not logged, as with Python's
# last-resort handler that wrote them before
STDLIB_LEVEL = logging.WARNING
# libraries whose records below CRITICAL are dropped: coredis logs every reconnect attempt a hung
# Redis cancels at error level with a ~9 KB traceback, an outage the cluster link already logs
# once as `cluster_degraded`
QUIET_LOGGERS = ("coredis",)

Renderer = Callable[[WrappedLogger, str, EventDict], str | bytes]


def configure_logging(
    *,
    json: bool | None = None,
    level: str = "info",
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
    cache: bool = True,
) -> None:
    """Configure structlog; actor paths arrive through contextvars.

    Priority prefixes are added when `stream` (default: sys.stderr as it is when a line is
    logged) is the one `$JOURNAL_STREAM` (from `env`, default os.environ) names, i.e. when
    systemd connected it to journald. `cache=False` for a setup a command may replace: a
    logger cached under it would keep it.
    """
    out = stream or sys.stderr
    use_json = not out.isatty() if json is None else json
    renderer: Renderer = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    if is_journal_stream(out, os.environ if env is None else env):
        renderer = JournalPrefix(renderer)
    stamped: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    exc_info = structlog.processors.format_exc_info if use_json else structlog.dev.set_exc_info
    structlog.configure(
        processors=[*stamped, exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *_: SafePrintLogger(stream or sys.stderr),
        cache_logger_on_first_use=cache,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*stamped, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, exc_info, renderer],
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
        root.removeHandler(handler)  # the setup this one replaces
    handler = StdlibHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(quiet_libraries)
    handler.setLevel(max(STDLIB_LEVEL, logging.getLevelName(level.upper())))
    root.addHandler(handler)


def quiet_libraries(record: logging.LogRecord) -> bool:
    """Whether `record` is logged: not when a QUIET_LOGGERS library logged it below CRITICAL."""
    library = record.name.partition(".")[0]
    return library not in QUIET_LOGGERS or record.levelno >= logging.CRITICAL


def is_journal_stream(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Whether `stream` is the journald connection `$JOURNAL_STREAM` ("dev:ino") describes."""
    expected = env.get(JOURNAL_STREAM_ENV, "")
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


@attrs.frozen
class JournalPrefix:
    """Wraps the final renderer so every output line carries the event's syslog priority."""

    renderer: Renderer

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", method_name))  # read before the renderer pops it
        priority = SYSLOG_PRIORITIES.get(level, DEFAULT_PRIORITY)
        rendered = self.renderer(logger, method_name, event_dict)
        text = rendered.decode("utf-8") if isinstance(rendered, bytes) else rendered
        return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


def redacted_url(url: str) -> str:
    """`url` without its user and password, in the address or as query parameters (a Redis
    URL may carry `?password=`, `username=`): a URL in a log line or an error must not leak
    the credential it carries. The other parameters stay, in their order. It never raises:
    error handlers log with it, so a URL it cannot split (an unclosed `[`) is a placeholder,
    as is one with a `@` left outside its address (`user:pw@host`, its `//` forgotten)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return UNPARSEABLE_URL
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(
        pair
        for pair in parts.query.split("&")
        if urllib.parse.unquote_plus(pair.partition("=")[0]).lower() not in CREDENTIAL_PARAMETERS
    )
    shown = urllib.parse.urlunsplit(parts._replace(netloc=host, query=query))
    return UNPARSEABLE_URL if "@" in shown else shown


class SafePrintLogger(structlog.PrintLogger):
    """A print logger that drops a line it cannot write (a full disk, a closed pipe) rather
    than raising into the actor that logged it: logging must never crash the daemon.

    Each line goes to the file's descriptor whole, in `os.write` calls of its own (a text
    layer's buffer would keep part of a line a full disk refused, or lose its newline, and
    splice it with the next). A line cut short leaves its start in the file; the next line
    written there begins with a newline, so every other line still parses on its own."""

    dropped: int = 0
    cut_short: ClassVar[set[int]] = set()  # descriptors whose last line was written in part

    def msg(self, message: str) -> None:
        with self._lock:
            try:
                fd = self._file.fileno()
            except (OSError, ValueError):  # no descriptor (io.UnsupportedOperation), or closed
                fd = None
            try:
                if fd is None:
                    print(message, file=self._file, flush=True)
                else:
                    self._file.flush()  # what was printed there before goes first
                    self._write_line(fd, message)
            except (OSError, ValueError):
                SafePrintLogger.dropped += 1

    def _write_line(self, fd: int, message: str) -> None:
        """Write `message` and its newline on `fd`, after a newline ending a line cut short."""
        encoding = getattr(self._file, "encoding", None) or "utf-8"
        data = memoryview(f"{message}\n".encode(encoding, "backslashreplace"))
        if fd in SafePrintLogger.cut_short:
            data = memoryview(b"\n" + data)
        while data:
            written = os.write(fd, data)  # raises with nothing written: the file is as it was
            SafePrintLogger.cut_short.add(fd)
            data = data[written:]
        SafePrintLogger.cut_short.discard(fd)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class StdlibHandler(logging.Handler):
    """Writes stdlib logging's records as structlog renders them, where structlog writes (a
    record that cannot be written is dropped, as SafePrintLogger drops it)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self.stream = stream  # None: sys.stderr as it is when a record is logged

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a record whose message does not format: logging must not raise
            SafePrintLogger.dropped += 1
            return
        SafePrintLogger(self.stream or sys.stderr).msg(line)
