"""The process's open-file limit (RLIMIT_NOFILE): raised to its hard limit at start, since the
soft limit most systems give a service (1,024) is far below what a broker or daemon at its
connection limit holds open; and the connections that fit under it, so that a full broker
answers its 503 (a full daemon its `unavailable`) instead of failing to accept (EMFILE) and
answering nothing."""

import resource
from typing import Final

import structlog

# open files kept for all but the connections a limit counts: stdio, listeners, the event loop,
# the store, Redis, a log file, and connections being refused past the limit
OPEN_FILES_RESERVE: Final = 128

_log = structlog.get_logger(__name__)


def raise_open_files_limit() -> int:
    """Raise the soft open-file limit to the hard one where it is lower; the soft limit then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:  # a sandbox that forbids it: keep the soft one
            _log.warning("open_files_limit_not_raised", soft=soft, hard=hard, error=str(exc))
            return soft
        return hard
    return soft


def connections_that_fit(
    wanted: int, files_per_connection: int, *, what: str, besides: int = 0
) -> int:
    """`wanted`, or fewer (at least 1) when that many connections, `files_per_connection` open
    files each, OPEN_FILES_RESERVE and `besides` (other files the process may hold at once)
    would pass the (raised) open-file limit; logs a warning naming `what` (the limit's name)
    when lowered."""
    limit = raise_open_files_limit()
    if limit == resource.RLIM_INFINITY:
        return wanted
    fitting = max(1, (limit - OPEN_FILES_RESERVE - besides) // files_per_connection)
    if fitting >= wanted:
        return wanted
    _log.warning(
        "connection_limit_lowered",
        limit=what,
        configured=wanted,
        effective=fitting,
        open_files=limit,
        advice="raise the open-file limit (LimitNOFILE= in the unit, ulimit -n)",
    )
    return fitting
