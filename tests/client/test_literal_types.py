"""The client library's literal types and the values the daemon takes are one definition each
(`Priority` and PRIORITIES in draining order, `PresenceStatus` and PROFILE_STATUSES), so a
value added to one is in the other."""

from __future__ import annotations

import typing

from meshactors.client._ops import Ops
from meshactors.store import outbox
from meshactors.wire.ipc import PRIORITIES, Priority
from meshactors.wire.peer import PROFILE_STATUSES, PresenceStatus


def test_the_clients_priority_type_is_what_the_daemon_takes() -> None:
    hinted = typing.get_type_hints(Ops.send)["priority"]
    assert hinted == Priority
    assert typing.get_args(hinted) == PRIORITIES == outbox.PRIORITIES


def test_the_clients_presence_status_type_is_what_the_daemon_takes() -> None:
    hinted = typing.get_type_hints(Ops.profile_set)["status"]
    assert typing.get_args(hinted) == (PresenceStatus, type(None))
    assert typing.get_args(PresenceStatus) == PROFILE_STATUSES
