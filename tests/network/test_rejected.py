"""RejectedFrames: every rejection counted, at most one event per REJECT_EVENT_INTERVAL."""

from __future__ import annotations

from meshactors.network.rejected import REJECT_EVENT_INTERVAL, RejectedFrames


def test_the_first_rejection_is_reported_at_once() -> None:
    rejected = RejectedFrames()
    assert rejected.count("bad_value", 100.0) == {
        "reason": "bad_value",
        "count": 1,
        "reasons": {"bad_value": 1},
        "rejected_frames": 1,
    }


def test_rejections_within_the_interval_wait_for_the_next_event() -> None:
    rejected = RejectedFrames()
    rejected.count("bad_value", 0.0)
    assert rejected.count("too_deep", 1.0) is None
    assert rejected.count("bad_value", REJECT_EVENT_INTERVAL - 0.001) is None
    assert rejected.total == 3
    report = rejected.count("tampered", REJECT_EVENT_INTERVAL)
    assert report == {
        "reason": "tampered",
        "count": 3,
        "reasons": {"too_deep": 1, "bad_value": 1, "tampered": 1},
        "rejected_frames": 4,
    }
    assert rejected.count("tampered", REJECT_EVENT_INTERVAL + 1) is None
