"""Telling events from answers: an event may carry an `id` field of its own."""

from __future__ import annotations

from meshactors.client._frames import is_event


def test_an_event_with_an_id_field_is_still_an_event() -> None:
    delivered = {"kind": "message_delivered", "event_id": 9, "id": "01J…", "recipient": "x"}
    assert is_event(delivered)


def test_answers_are_not_events_even_when_their_data_looks_like_one() -> None:
    assert not is_event({"id": 1, "ok": True, "data": {"kind": "x"}})
    assert not is_event({"id": None, "ok": False, "error": {"code": "bad_json"}})
