"""The client library's `Priority` type and the priorities the daemon takes (PRIORITIES, in
draining order) are one definition, so a priority added to one is in the other."""

from __future__ import annotations

import typing

from meshactors.client._ops import Ops
from meshactors.store import outbox
from meshactors.wire.ipc import PRIORITIES, Priority


def test_the_clients_priority_type_is_what_the_daemon_takes() -> None:
    hinted = typing.get_type_hints(Ops.send)["priority"]
    assert hinted == Priority
    assert typing.get_args(hinted) == PRIORITIES == outbox.PRIORITIES
