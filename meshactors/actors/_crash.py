"""Crashing a running actor on request (the daemon's `debug_crash` op): the actor's run is
cancelled, as a crash of one of its tasks would cancel it, and its supervisor sees it fail with
`DebugCrash`, so its restart type and the supervisor's strategy apply as after a real crash.
"""

from __future__ import annotations

import attrs
import trio


class DebugCrash(Exception):
    """What an actor crashed with on an operator's request."""


@attrs.define(eq=False)
class CrashSwitch:
    """One generation of one actor: `crash` cancels its run (`scope`) and keeps the reason."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    reason: str | None = None

    def crash(self, reason: str) -> None:
        """Stop the run now; a second request before it restarted is the same crash."""
        if self.reason is None:
            self.reason = reason
            self.scope.cancel()

    def error(self) -> DebugCrash | None:
        """The crash to report once the run ended, if one was asked for."""
        return None if self.reason is None else DebugCrash(self.reason)
