"""The `networks` supervisor: joins saved networks at start, adds and removes them at runtime."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
import structlog
import trio

from meshactors.actors import (
    ActorGone,
    AskTimeout,
    ChildSpec,
    ChildStartFailed,
    Inbox,
    Reply,
    Supervisor,
    unanswered,
)
from meshactors.clock import wall_ms
from meshactors.event_hub import EventHub
from meshactors.identity import Identity
from meshactors.network.config import ConfigError, NetworkConfig
from meshactors.network.link import LINK_ROLE, ROLES
from meshactors.store import networks as network_db
from meshactors.store.actor import StoreActor
from meshactors.wire.broker import is_network_id
from meshactors.wire.ipc import ErrorCode, OpError

if TYPE_CHECKING:
    from meshactors.network.network import Network

log = structlog.get_logger("meshactors.networks")

T = TypeVar("T")

MAX_NETWORKS = 64  # networks one daemon joins at once
NETWORK_SHUTDOWN_TIMEOUT = 5.0  # seconds a network's subtree may take to stop
CHANGES_INBOX = 16  # network_add, _update and _remove waiting for the networks actor
CHANGE_TIMEOUT = 60.0  # seconds one of them waits for it (a start or stop may take 30 s)


@attrs.frozen
class _Add:
    config: NetworkConfig
    reply: Reply[tuple[Network, bool]]


@attrs.frozen
class _Update:
    config: NetworkConfig
    reply: Reply[bool]


@attrs.frozen
class _Remove:
    network_id: str
    purge: bool
    reply: Reply[int]


_Change = _Add | _Update | _Remove


def _child_name(network_id: str) -> str:
    return f"network {network_id}"


@attrs.define(eq=False, kw_only=True)
class NetworkManager(Supervisor):
    """One `network <id>` child per joined network. Ops change the set only by asking (its
    `changes` inbox, served one at a time by its own task); `get` looks a network up. A network
    that keeps crashing is restarted alone however often (`contains`): it never takes the other
    networks, the control plane or the client connections down with it."""

    kind: ClassVar[str] = "networks"
    contains: ClassVar[bool] = True

    identity: Identity
    store: StoreActor
    events: EventHub
    on_build: list[Callable[[Network], None]] = attrs.field(factory=list)  # e.g. app handlers
    declared_role: str | None = None  # `daemon up --role`; None: the role kept from before
    role: str = attrs.field(default=LINK_ROLE, init=False)  # the role announced, once settled
    changes: Inbox[_Change] = attrs.field(factory=lambda: Inbox(CHANGES_INBOX))
    _networks: dict[str, Network] = attrs.field(factory=dict, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The start's store calls wait for the store however long it takes (nobody else waits
        # for them): given up, a slow store would fail the start and restart every network.
        self.role = await self.store.background_call(
            functools.partial(network_db.settle_role, declared=self.declared_role, roles=ROLES),
            what="settle the role",
        )
        saved = await self.store.background_call(network_db.load_networks, what="load networks")
        previous, self._networks = self._networks, {}
        for network_id, raw in saved:
            try:
                config = NetworkConfig.from_json(raw)
            except ConfigError as exc:
                log.error("skipping a saved network", network=network_id, error=str(exc))
                continue
            network = self._networks[network_id] = self._build(config)
            if (stopped := previous.get(network_id)) is not None:
                # Our retained values live only in memory: a restart of this supervisor hands
                # them to the rebuilt network, which sends them to each peer again at welcome.
                network.channels.own = stopped.channels.own
                # So do the peers' replay states: the rebuilt table still refuses old frames.
                network.peers.replay_memory = stopped.peers.hand_over_openers()
        self.children = [self._spec(network) for network in self._networks.values()]
        try:
            await super().run(task_status=task_status)
        finally:
            # Every network has stopped with this run, and the next run builds new ones.
            for network in self._networks.values():
                network.retire()

    def figures(self) -> dict[str, object]:
        return {**super().figures(), "networks": len(self._networks)}

    def get(self, network_id: str) -> Network:
        """The running network, or OpError no_such_network."""
        network = self._networks.get(network_id)
        if network is None:
            raise OpError(ErrorCode.NO_SUCH_NETWORK, f"not joined to a network {network_id!r}")
        return network

    def all(self) -> list[Network]:
        """Every joined network, in the order they were added."""
        return list(self._networks.values())

    async def summaries(self) -> list[dict[str, Any]]:
        """Each network's config, phase, link and peer counts."""
        networks = list(self._networks.values())
        seen: dict[str, dict[str, Any]] = {}

        async def summarise(network: Network) -> None:
            seen[network.config.id] = await network.summary()

        async with trio.open_nursery() as nursery:
            for network in networks:
                nursery.start_soon(summarise, network)
        return [seen[network.config.id] for network in networks]

    def own_tasks(self) -> list[Callable[[], Awaitable[None]]]:
        return [self._serve_changes]

    async def add(self, config: NetworkConfig) -> tuple[Network, bool]:
        """Join a network and save it; the same config again is a no-op (→ False)."""
        return await self._ask(functools.partial(_Add, config), f"add network {config.id}")

    async def update(self, config: NetworkConfig) -> bool:
        """Apply a new config; returns whether the link reconnects (the brokers changed)."""
        return await self._ask(functools.partial(_Update, config), f"update network {config.id}")

    async def remove(self, network_id: str, *, purge: bool) -> int:
        """Leave a network at once and forget it (and with `purge` its settings and messages);
        returns how many undelivered sends the purge deleted."""
        return await self._ask(
            functools.partial(_Remove, network_id, purge), f"remove network {network_id}"
        )

    async def _ask(self, build: Callable[[Reply[T]], _Change], what: str) -> T:
        try:
            return await self.changes.ask(build, timeout=CHANGE_TIMEOUT, what=what)
        except (ActorGone, AskTimeout) as exc:
            raise unanswered(exc) from None

    async def _serve_changes(self) -> None:
        """Apply each change in turn, in this actor's task: the one writer of the network set."""
        async for change in self.changes.receiver:
            match change:
                case _Add(config=config, reply=reply):
                    await reply.answer_with(functools.partial(self._join, config))
                case _Update(config=config, reply=reply):
                    await reply.answer_with(functools.partial(self._apply, config))
                case _Remove(network_id=network_id, purge=purge, reply=reply):
                    await reply.answer_with(functools.partial(self._leave, network_id, purge))

    async def _join(self, config: NetworkConfig) -> tuple[Network, bool]:
        existing = self._networks.get(config.id)
        if existing is not None:
            if existing.config == config:
                return existing, False
            raise OpError(
                ErrorCode.CONFLICT,
                f"network {config.id!r} is joined with another config; use network_update",
            )
        if len(self._networks) >= MAX_NETWORKS:
            raise OpError(ErrorCode.CONFLICT, f"at most {MAX_NETWORKS} networks at once")
        await self._save(config)
        network = self._build(config)
        name = _child_name(config.id)
        try:
            await self.start_child(self._spec(network))
        except ChildStartFailed as exc:
            # The supervisor forgot the network that failed (no child is left); forget its
            # config too, so that the next daemon start does not try it again.
            log.error("a network failed to start", network=config.id, error=str(exc))
            network.retire()
            await self._unsave(config.id)
            raise OpError(
                ErrorCode.UNAVAILABLE, f"network {config.id!r} could not start: {exc}"
            ) from None
        except AskTimeout:
            # The start still waits in this supervisor's queue and may yet be carried out: have
            # it stopped after that, so that the supervisor runs only the networks we record,
            # and its config forgotten, so that the next daemon start does not join it either.
            # (Cancelled, this run ends: the next one starts the saved networks afresh, and a
            # stop sent now would outlive this run and stop the one it starts.)
            self.stop_child_nowait(name)
            await self._unsave(config.id)
            raise
        except ValueError:
            # The supervisor runs a network of this id that we do not record (a stop that
            # never got into its full inbox): have it stopped, so that the next add joins, and
            # forget the config we saved.
            self.stop_child_nowait(name)
            await self._unsave(config.id)
            raise OpError(
                ErrorCode.CONFLICT, f"network {config.id!r} is still stopping; try again"
            ) from None
        self._networks[config.id] = network
        self.events.publish("network_added", {"network": config.id, "config": config.to_json()})
        return network, True

    async def _apply(self, config: NetworkConfig) -> bool:
        network = self.get(config.id)
        await self._save(config)
        reconnect = await network.apply(config)
        self.events.publish(
            "network_updated",
            {"network": config.id, "config": config.to_json(), "reconnect": reconnect},
        )
        return reconnect

    async def _leave(self, network_id: str, purge: bool) -> int:
        if not is_network_id(network_id):
            # No network was ever saved under it, and GLOBAL ("") holds the settings of every
            # network (the event ids spent, the global profile, the role): a purge would wipe them.
            raise OpError(ErrorCode.NO_SUCH_NETWORK, f"not a network id: {network_id[:80]!r}")
        network = self._networks.pop(network_id, None)
        stopping: AskTimeout | None = None
        if network is not None:
            # Best effort: the broker tells peers too; subscribers a deaf core did not tell are
            # told once the network stopped (`Network.removed`), and the stop goes on regardless.
            with contextlib.suppress(OpError):
                await network.leave("network removed")
            try:
                await self.stop_child(_child_name(network_id), on_stopped=network.removed)
            except AskTimeout as exc:
                # The stop still waits in this supervisor's queue and will be carried out,
                # retiring the network then (not now: its core still runs and reads its inbox).
                # It is removed all the same, config too: the saved configs are the networks
                # we record, and the next daemon start does not join one we dropped.
                stopping = exc
        forgotten = await self._unsave(network_id, purge=purge)
        if network is None and not forgotten.known:
            raise OpError(ErrorCode.NO_SUCH_NETWORK, f"not joined to a network {network_id!r}")
        self.events.publish(
            "network_removed",
            {"network": network_id, "purge": purge, "purged_unsent": forgotten.purged_unsent},
        )
        if stopping is not None:
            raise OpError(
                ErrorCode.TIMEOUT,
                f"network {network_id!r} is removed but still stopping ({stopping})",
            )
        return forgotten.purged_unsent

    async def _save(self, config: NetworkConfig) -> None:
        await self.store.call(
            functools.partial(
                network_db.save_network,
                network_id=config.id,
                config=config.to_json(),
                now_ms=wall_ms(),
            ),
            what="save network",
        )

    async def _unsave(self, network_id: str, *, purge: bool = False) -> network_db.Forgotten:
        """Forget a network's saved config (`delete_network`), so that the next daemon start
        does not join it: the saved configs are the networks we record."""
        return await self.store.call(
            functools.partial(network_db.delete_network, network_id=network_id, purge=purge),
            what="delete network",
        )

    def _build(self, config: NetworkConfig) -> Network:
        from meshactors.network.network import Network  # its actors: only once one is joined

        network = Network.build(config, self.identity, self.store, self.events, self.role)
        for hook in self.on_build:
            hook(network)
        return network

    def _spec(self, network: Network) -> ChildSpec:
        return ChildSpec(
            _child_name(network.config.id), network, shutdown_timeout=NETWORK_SHUTDOWN_TIMEOUT
        )
