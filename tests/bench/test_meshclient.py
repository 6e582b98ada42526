"""The bench sink counts channel messages without parsing every line, and counts them right."""

from __future__ import annotations

from meshactors.wire.ipc import event_frame, ok_frame
from scripts.benchlib.meshclient import channel_messages


def test_the_sink_counts_single_messages_and_batches() -> None:
    head = {"network": "n", "from": "d", "channel": "c"}
    singles = b"".join(event_frame("channel_inbound", head | {"payload": n}) for n in range(3))
    batch = event_frame("channel_inbound", head | {"payloads": [1, 2, 3, 4]})
    other = ok_frame(1, {"dispatched_to": []}) + event_frame("lagged", {"skipped": 9})
    assert channel_messages(singles + other) == 3
    assert channel_messages(singles + batch + other) == 7
    assert channel_messages(other) == 0
