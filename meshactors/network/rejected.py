"""Counting the frames a peer sent that were dropped as bad, and reporting them without flooding
the event stream: at most one `peer_frame_rejected` event per peer per REJECT_EVENT_INTERVAL."""

from __future__ import annotations

import collections
import math
from typing import Any

import attrs

REJECT_EVENT_INTERVAL = 10.0  # seconds between two peer_frame_rejected events of one peer, at least


@attrs.define
class RejectedFrames:
    """One peer's rejected frames: the total, and those since its last event, by reason."""

    total: int = 0
    unreported: collections.Counter[str] = attrs.field(factory=collections.Counter)
    reported_at: float = -math.inf  # trio time of the last event

    def count(self, reason: str, now: float) -> dict[str, Any] | None:
        """Count one rejected frame at trio time `now`; returns the event's fields when one is
        due (the first rejection, or the first after REJECT_EVENT_INTERVAL), else None: the
        rejection waits for the next event, which counts it."""
        self.total += 1
        self.unreported[reason] += 1
        if now - self.reported_at < REJECT_EVENT_INTERVAL:
            return None
        fields = {
            "reason": reason,
            "count": sum(self.unreported.values()),
            "reasons": dict(self.unreported),
            "rejected_frames": self.total,
        }
        self.unreported.clear()
        self.reported_at = now
        return fields
