"""What op handlers reach: the daemon's identity, paths, tree and long-lived actors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from meshactors.actors import Doorbell, Node
from meshactors.daemon.outbox import Outbox
from meshactors.event_hub import EventHub
from meshactors.identity import Identity
from meshactors.network.manager import NetworkManager
from meshactors.paths import Paths
from meshactors.store.actor import StoreActor

if TYPE_CHECKING:
    from meshactors.ops.optable import OpTable


@attrs.define(eq=False)
class Services:
    """Daemon-wide handles shared by every client session (read-only for handlers)."""

    version: str
    identity: Identity
    paths: Paths
    tree: Node
    store: StoreActor
    events: EventHub
    ops: OpTable
    started_at: float  # trio.current_time() at start, for uptime
    networks: NetworkManager  # the `networks` supervisor
    outbox: Outbox  # the durable outbox, which accepts sends and delivers them
    shutdown: Doorbell = attrs.field(factory=Doorbell)  # rung to stop the daemon

    def uptime(self) -> float:
        """Seconds since the daemon started."""
        return trio.current_time() - self.started_at

    def client_nodes(self) -> list[Node]:
        """Tree nodes of the connected clients."""
        control = self.tree.children.get("control")
        if control is None:
            return []
        return [node for node in control.children.values() if node.kind == "client"]
