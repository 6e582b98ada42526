"""The process's open-file limit (RLIMIT_NOFILE): raised to its hard limit at start, since the
soft limit most systems give a service (1,024) is far below what a broker or daemon at its
connection limit holds open; and the connections that fit under it (shared by a daemon and
its embedded broker), so that a full broker answers its 503 (a full daemon its `unavailable`)
instead of failing to accept (EMFILE) and answering nothing."""

import resource
from typing import Final

import attrs
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


@attrs.frozen
class ConnectionLimit:
    """Connections one part of the process (a broker, a daemon's clients) may hold at once:
    `wanted` of them, the limit named `what`, `files` open files each; the part keeps an
    OPEN_FILES_RESERVE of its own besides."""

    what: str
    wanted: int
    files: int = 1


def connections_that_fit(*wants: ConnectionLimit, besides: int = 0) -> list[int]:
    """Each limit's `wanted`, or where they together, an OPEN_FILES_RESERVE for each and
    `besides` (other files the process may hold at once) pass the (raised) open-file limit, the
    connections that fit in a share of the files left in proportion to the files each wants
    (at least 1): two parts of one process (a daemon and its embedded broker) so cannot both
    count on the whole limit. Logs a warning naming each lowered limit's `what`."""
    open_files = raise_open_files_limit()
    wanted = [want.wanted for want in wants]
    if open_files == resource.RLIM_INFINITY:
        return wanted
    free = max(0, open_files - OPEN_FILES_RESERVE * len(wants) - besides)
    wanted_files = sum(want.wanted * want.files for want in wants)
    if wanted_files <= free:
        return wanted
    fitting = [max(1, free * want.wanted // wanted_files) for want in wants]
    for want, effective in zip(wants, fitting, strict=True):
        if effective < want.wanted:
            _log.warning(
                "connection_limit_lowered",
                limit=want.what,
                configured=want.wanted,
                effective=effective,
                open_files=open_files,
                advice="raise the open-file limit (LimitNOFILE= in the unit, ulimit -n)",
            )
    return fitting
