"""The `broker` actor: a relay embedded in the daemon tree (`daemon up --broker-listen`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import attrs
import trio

from meshactors.actors import Actor
from meshactors.broker.limits import BrokerConfig

if TYPE_CHECKING:
    from meshactors.broker.server import Broker


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) → (host, port); ValueError naming the problem."""
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 0 to 65535, got {value!r}")
    return host, int(port_text)


@attrs.define(eq=False)
class BrokerActor(Actor):
    """Serves a broker on host:port until cancelled; port 0 picks a free one (`port` figure),
    and a restart binds the port it had, so the daemons that connected to it find it again."""

    kind: ClassVar[str] = "broker"

    host: str
    port: int
    config: BrokerConfig = attrs.field(factory=BrokerConfig)
    bound_port: int | None = None
    _broker: Broker | None = None

    def figures(self) -> dict[str, object]:
        figures: dict[str, object] = {"port": self.bound_port}
        if self._broker is not None:
            figures.update(self._broker.figures())
        return figures

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from meshactors.broker.server import Broker  # with its trio-websocket: only if asked

        self._broker = Broker(self.config)
        async with trio.open_nursery() as nursery:
            port = self.port or self.bound_port or 0
            self.bound_port = await nursery.start(self._broker.serve, self.host, port)
            task_status.started()
