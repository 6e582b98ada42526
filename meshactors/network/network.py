"""The `network <id>` supervisor: `core` (with its parts: peers, membership, rpc, channels,
streams, the state replica), `link` and the channel pumps of one joined network."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar

import attrs
import trio

from meshactors.actors import ActorGone, AskTimeout, ChildSpec, Strategy, Supervisor, unanswered
from meshactors.event_hub import EventHub
from meshactors.identity import Identity
from meshactors.membership.frames import MEMBERSHIP_FRAMES
from meshactors.membership.part import Membership
from meshactors.netstate.replica import StateReplica
from meshactors.netstate.writers import open_network_writers
from meshactors.network.app_wire import AppWire
from meshactors.network.channels import Channels
from meshactors.network.config import NetworkConfig
from meshactors.network.core import COMMAND_TIMEOUT, NetworkCore
from meshactors.network.link import LINK_ROLE, Link, UseBrokers
from meshactors.network.peers import AppHandler, Peers, Phase
from meshactors.network.rpc import Rpc
from meshactors.network.streams import Streams
from meshactors.store.actor import StoreActor
from meshactors.wire.ipc import OpError
from meshactors.wire.peer import Frame

T = TypeVar("T")

LINK_SHUTDOWN_TIMEOUT = 3.0  # seconds for the link's closing handshake and last notices
SUMMARY_TIMEOUT = 1.0  # seconds status and networks_list wait for a network's core


@attrs.define(eq=False, kw_only=True)
class Network(Supervisor):
    """One joined network. Children start core → link (then a `channel <name>` pump per
    subscribed channel); a crash restarts the rest, pumps included, and a restart of the
    network itself starts the pumps of the channels still subscribed.

    `core` starts first so the link always has somewhere to deliver; when `core` restarts the
    link reconnects too, so the fresh peer table hears a new welcome.
    """

    kind: ClassVar[str] = "network"

    config: NetworkConfig
    core: NetworkCore
    peers: Peers
    link: Link
    rpc: Rpc
    channels: Channels
    streams: Streams
    membership: Membership
    state: StateReplica
    fixed: list[ChildSpec] = attrs.field(factory=list)  # the children before any pump

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.children = [*self.fixed, *self.channels.pump_specs()]
        await super().run(task_status=task_status)

    @classmethod
    def build(
        cls,
        config: NetworkConfig,
        identity: Identity,
        store: StoreActor,
        events: EventHub,
        role: str = LINK_ROLE,
    ) -> Network:
        """Wire a network's actors together (nothing runs until a supervisor starts it); the
        link announces `role` to the broker and peers."""
        peers = Peers(
            config.id, identity, store, events, auto_approve=config.auto_approve, role=role
        )
        core = NetworkCore(peers)
        link = Link(
            config.id, list(config.brokers), identity.signing_key, core.inbox, role, events=events
        )
        wire = AppWire(peers, identity.device_id, identity.label)
        rpc = Rpc(config.id, wire, core.tell)
        channels = Channels(config.id, wire)
        streams = Streams(config.id, wire, core.tell, rpc.binary_owner)
        membership = Membership(config.id, identity, store, events, peers, link.inbox)
        peers.gate = membership
        for frame in MEMBERSHIP_FRAMES:
            peers.register_control_handler(frame.tag, membership.on_frame)
        writers = membership.state_writers(
            open_network_writers(identity.device_id, peers.active_peers)
        )
        state = StateReplica(config.id, wire, store, events, writers)
        peers.status_listeners.extend(
            [rpc.on_peer_status, channels.on_peer_status, streams.on_peer_status]
        )
        peers.status_listeners.append(state.on_peer_status)
        core.parts = {
            "membership": membership,
            "rpc": rpc,
            "channels": channels,
            "streams": streams,
            "state": state,
        }
        network = cls(
            config=config,
            core=core,
            peers=peers,
            link=link,
            rpc=rpc,
            channels=channels,
            streams=streams,
            membership=membership,
            state=state,
            fixed=[
                ChildSpec("core", core),
                ChildSpec("link", link, shutdown_timeout=LINK_SHUTDOWN_TIMEOUT),
            ],
            strategy=Strategy.REST_FOR_ONE,
        )
        channels.supervisor = network
        return network

    def figures(self) -> dict[str, object]:
        return {**super().figures(), "network": self.config.id, "phase": self.peers.shown_phase}

    async def ask(
        self,
        what: str,
        fn: Callable[[], T],
        timeout: float = COMMAND_TIMEOUT,
        *,
        shield: bool = False,
    ) -> T:
        """Run `fn` in core's task (the one owner of this network's state) and return its
        result; OpError unavailable or timeout when core does not answer. With `shield`, only
        the timeout ends the wait, no cancel from outside (see `meshactors.actors.ask`)."""

        async def run() -> T:
            return fn()

        return await self.ask_await(what, run, timeout, shield=shield)

    async def ask_await(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        timeout: float = COMMAND_TIMEOUT,
        *,
        shield: bool = False,
    ) -> T:
        """`ask` for work that may wait inside core (only on the link's bounded queue)."""
        try:
            return await self.core.ask(fn, what, timeout, shield=shield)
        except (ActorGone, AskTimeout) as exc:
            raise unanswered(exc) from None

    async def undeliverable(self) -> frozenset[str] | None:
        """Whom this network's messages can never reach (`Membership.undeliverable`), asked of
        core: OpError unavailable or timeout when core does not answer."""
        return await self.ask("list the evicted", self.membership.undeliverable)

    async def recipients(self, tag: str | None) -> list[str]:
        """Whom a durable send to `*` (`tag` None) or `@tag` names (`Peers.recipients`), asked
        of core: OpError unavailable or timeout when core does not answer."""
        return await self.ask("resolve recipients", functools.partial(self.peers.recipients, tag))

    def tell(self, fn: Callable[[], None]) -> bool:
        """Have core run `fn` without waiting for it; False when core's inbox is full."""
        return self.core.tell(fn)

    async def leave(self, reason: str) -> None:
        """Before the network is stopped for good (removed): end its binary streams (`stopped`)
        and its channel subscriptions, telling each subscriber, and tell its peers we leave
        with `reason`, all in core's task (their owner); OpError unavailable or timeout when
        core does not answer, and then what it did not get to before the network's stop is
        done by the stop: those subscribers are told once it stopped (`removed`), and streams
        to peers end as the link does (`peer_not_active`)."""

        async def farewell() -> None:
            try:
                self.streams.network_removed()
                await self.channels.network_removed()
            finally:
                await self.peers.say_bye(reason)

        await self.ask_await("leave", farewell)

    def removed(self) -> None:
        """The network, removed, has stopped: `retire` it, and tell the channel subscribers its
        core did not get to tell (`Channels.stopped_removed`)."""
        self.retire()
        self.channels.stopped_removed()

    def retire(self) -> None:
        """The network is stopped for good (removed, or its supervisor's run ended): an ask to
        its core, queued or to come, fails at once with `unavailable` instead of timing out."""
        self.core.retire()

    @property
    def retired(self) -> bool:
        """Whether `retire` ran: its core's inbox is closed for good."""
        return self.core.inbox.closed

    def register_app_handler(self, tag: str, handler: AppHandler) -> None:
        """Route application frames of type `tag` from active peers to `handler`."""
        self.peers.register_app_handler(tag, handler)

    async def send_to_peer(self, device_id: str, frame: Frame) -> None:
        """Have core seal and send an application frame to an active peer (OpError
        no_such_peer, peer_not_active, link_down; unavailable or timeout without core)."""
        await self.send_frames_to_peer(device_id, [frame])

    async def send_frames_to_peer(self, device_id: str, frames: Sequence[Frame]) -> None:
        """`send_to_peer` for several frames in one ask: core seals them all and queues them
        in order, so they leave together (the durable outbox sends a claimed batch so)."""
        await self.ask_await(
            "send to a peer", functools.partial(self.peers.send_app_frames, device_id, frames)
        )

    async def active_peers(self) -> list[str]:
        """The peers application frames may go to now, as core sees them."""
        return await self.ask("list active peers", self.peers.active_peers)

    async def apply(self, config: NetworkConfig) -> bool:
        """Take a new config of the same id; reconnects only if the brokers changed (→ True)."""
        reconnect = config.needs_reconnect_from(self.config)
        self.config = config
        await self.ask(
            "set auto_approve", functools.partial(self.peers.set_auto_approve, config.auto_approve)
        )
        if reconnect:
            await self.link.inbox.send(UseBrokers(list(config.brokers)))
        return reconnect

    async def summary(self) -> dict[str, Any]:
        """The network as networks_list and status show it, as core sees it; when core does not
        answer within SUMMARY_TIMEOUT (it is restarting or stuck), the link shows as `unknown`."""
        try:
            seen = await self.ask("summarise", self.peers.summary, SUMMARY_TIMEOUT)
        except OpError:
            seen = {"phase": Phase.STOPPED.value, "link": "unknown", "link_error": None}
            seen |= {"broker": None, "peers": None}
        return {**self.config.to_json(), **seen}
