"""A local copy of a network's shared state, kept in sync from `state_changed` events: the
whole map listed once, then every change applied, and listed again after a reconnect (a
restarted daemon). Versions decide, so a listed value and an event arriving in either order
leave the newer one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from meshactors.client._ops import Ops

LIST_PAGE = 500  # keys per state_list call while listing the map
# events after which the map is listed again: changes may have been missed (a reconnect, a
# reset, the daemon's own notice of events it dropped unnumbered)
RELIST_KINDS = ("client_reconnected", "client_events_reset", "events_dropped")


@attrs.define(eq=False)
class SharedState:
    """The live keys of `network` (`values`) as the daemon has them, updated as they change."""

    network: str
    values: dict[str, Any] = attrs.field(factory=dict)
    _versions: dict[str, tuple[str, str]] = attrs.field(factory=dict)  # key -> (version, by)
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _unlisted: set[str] = attrs.field(factory=set)  # held keys a listing in progress lacks yet

    def apply(self, change: Mapping[str, Any]) -> bool:
        """Take one listed entry or `state_changed` event if it is newer than what is held."""
        key, version = change["key"], (change["version"], change["by"])
        self._unlisted.discard(key)
        if key in self._versions and self._versions[key] >= version:
            return False
        self._versions[key] = version
        if change.get("deleted"):
            self.values.pop(key, None)
        else:
            self.values[key] = change["value"]
        self._changed_now()
        return True

    def _changed_now(self) -> None:
        """Wake every `wait_until`."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, condition: Callable[[dict[str, Any]], bool]) -> None:
        """Return once `condition(values)` holds (checked after each change)."""
        while not condition(self.values):
            await self._changed.wait()

    async def load(self, ops: Ops) -> None:
        """List the whole map, page by page, and apply it; a key held before that the listing
        lacks, and that no event touched meanwhile, was deleted while we were not listening
        (a lag, a reconnect) and goes."""
        self._unlisted = set(self.values)
        cursor: str | None = None
        while True:
            page = await ops.state_list(self.network, limit=LIST_PAGE, cursor=cursor)
            for entry in page["entries"]:
                self.apply(entry)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        gone, self._unlisted = self._unlisted, set()
        for key in gone:
            del self.values[key]  # its version stays: an older event cannot bring it back
        if gone:
            self._changed_now()

    def wants(self, event: Mapping[str, Any]) -> bool:
        """Whether an event is a change of this map."""
        return event.get("kind") == "state_changed" and event.get("network") == self.network
