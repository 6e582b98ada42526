"""The daemon process: checks, the root supervisor, signals, and an orderly stop."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from functools import partial

import attrs
import structlog
import trio

from meshactors._version import __version__
from meshactors.actors import (
    ChildSpec,
    Doorbell,
    Node,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    run_root,
)
from meshactors.broker.limits import FILES_PER_CONNECTION, BrokerConfig
from meshactors.control.supervisor import FILES_PER_CLIENT, MAX_CLIENTS, control_supervisor
from meshactors.daemon.broker_actor import BrokerActor
from meshactors.daemon.outbox import DurableSettings, Outbox
from meshactors.daemon.sdnotify import Notifier, NotifierActor
from meshactors.daemon.services import Services
from meshactors.event_hub import EventHub
from meshactors.exception_groups import first_leaf
from meshactors.identity import Identity
from meshactors.network.link import ROLES
from meshactors.network.manager import MAX_NETWORKS, NetworkManager
from meshactors.open_files import ConnectionLimit, connections_that_fit
from meshactors.ops import (
    debug_ops,
    membership_ops,
    message_ops,
    network_ops,
    rpc_ops,
    state_ops,
    stream_ops,
    system_ops,
)
from meshactors.ops.optable import OpTable
from meshactors.paths import Paths
from meshactors.stop_signals import stop_signals
from meshactors.store.actor import StoreActor

log = structlog.get_logger("meshactors.daemon")


class DaemonGaveUp(Exception):
    """The root supervisor passed its restart intensity: having no parent to decide, the daemon
    stops (its tree already stopped) and leaves the restart to its service manager."""


@attrs.frozen
class DaemonOptions:
    """What `daemon up` decided before the event loop starts."""

    paths: Paths
    identity: Identity
    ready: Callable[[], None] | None = None  # called once the socket answers (for --detach)
    tcp_port: int | None = None  # --tcp PORT: also serve HTTP on 127.0.0.1:PORT (bearer token)
    notifier: Notifier = attrs.field(factory=Notifier)  # the service manager, if one runs us
    listen_fd: int | None = None  # a listening socket the service manager passed (activation)
    broker_listen: tuple[str, int] | None = None  # host, port of an embedded broker
    broker_config: BrokerConfig = attrs.field(factory=BrokerConfig)  # its limits (daemon.toml)
    role: str | None = attrs.field(  # --role: announced to peers and kept; None: the last one
        default=None, validator=attrs.validators.optional(attrs.validators.in_(ROLES))
    )
    durable: DurableSettings = attrs.field(factory=DurableSettings)  # retention, ack timeout
    debug_ops: bool = False  # --debug-ops: also answer the ops of debug_ops (debug_crash)
    max_clients: int = MAX_CLIENTS  # clients served at once, fewer where open files are short
    # the signals that stop it, read before any receiver replaces SIGHUP's disposition
    stops: tuple[signal.Signals, ...] = attrs.field(
        factory=lambda: stop_signals(signal.SIGTERM, signal.SIGINT)
    )


def build_ops(*, debug: bool = False) -> OpTable:
    """Every op the daemon answers; with `debug` also the debug ops (`--debug-ops`)."""
    debug_group = debug_ops.OPS if debug else []
    return OpTable.of(
        system_ops.OPS,
        network_ops.OPS,
        membership_ops.OPS,
        rpc_ops.OPS,
        stream_ops.OPS,
        message_ops.OPS,
        state_ops.OPS,
        debug_group,
    )


async def serve(
    options: DaemonOptions, *, task_status: trio.TaskStatus[Services] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon's actor tree until `shutdown` or a stop signal, then stop it in reverse."""
    store = StoreActor(options.paths.state_db)
    events = EventHub(store)
    tree = Node(name="daemon", kind="supervisor")
    networks = NetworkManager(
        identity=options.identity, store=store, events=events, declared_role=options.role
    )
    outbox = Outbox(store, events, networks, options.durable)
    max_clients, embedded = _open_files_shared(options)
    services = Services(
        version=__version__,
        identity=options.identity,
        paths=options.paths,
        tree=tree,
        store=store,
        events=events,
        ops=build_ops(debug=options.debug_ops),
        started_at=trio.current_time(),
        networks=networks,
        outbox=outbox,
    )
    root = Supervisor(
        children=[
            ChildSpec("store", store),
            ChildSpec("events", events),
            *embedded,
            ChildSpec("networks", networks),
            ChildSpec(
                "control",
                control_supervisor(
                    options.paths.socket,
                    services,
                    options.tcp_port,
                    options.listen_fd,
                    max_clients,
                ),
            ),
            # After control: ops reach it only through its channels, so its crash and restart
            # leave clients connected.
            ChildSpec("outbox", outbox),
            ChildSpec("notifier", NotifierActor(options.notifier, partial(_probe_store, store))),
        ],
        strategy=Strategy.REST_FOR_ONE,
    )
    # Stop signals are received until the tree has stopped: a receiver closed as the stop
    # begins would give SIGTERM back its default action, and a second one would kill the
    # daemon midway (its pid file, lock, socket and WAL left behind). `daemon up` ignores them
    # outside the receiver (which restores that) until it exits.
    try:
        with trio.open_signal_receiver(*options.stops) as signals:
            async with trio.open_nursery() as watching:
                watching.start_soon(_stop_on_signal, signals, services.shutdown)
                await _run_tree(root, tree, services, options, task_status)
                watching.cancel_scope.cancel()
    except* SupervisorEscalation as group:
        escalation = first_leaf(group)  # the root's; no other task raises one
        raise _gave_up(escalation, options.notifier) from escalation
    log.info("daemon stopped")


async def _run_tree(
    root: Supervisor,
    tree: Node,
    services: Services,
    options: DaemonOptions,
    task_status: trio.TaskStatus[Services],
) -> None:
    """Run the actor tree until `shutdown` rings, then stop it in reverse start order. A ring
    while the tree starts cancels the start, and a store call the start waits on with it
    (`StoreActor.background_call` has no deadline), so a stop signal ends a stuck start."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            _stop_on_shutdown, services.shutdown, options.notifier, nursery.cancel_scope
        )
        await nursery.start(run_root, root, tree)
        log.info(
            "daemon ready",
            device_id=options.identity.device_id,
            socket=str(options.paths.socket),
            pid=os.getpid(),
        )
        if options.ready is not None:
            options.ready()
        options.notifier.ready(f"serving on {options.paths.socket}")
        task_status.started(services)


async def _stop_on_shutdown(shutdown: Doorbell, notifier: Notifier, tree: trio.CancelScope) -> None:
    """Wait for `shutdown`, then stop the tree: cancel `tree`, the scope its run and its start
    share (its supervisor stops the children that run in reverse start order)."""
    await shutdown.wait()
    log.info("daemon stopping")
    notifier.stopping("stopping")
    tree.cancel()


def _gave_up(escalation: SupervisorEscalation, notifier: Notifier) -> DaemonGaveUp:
    """Log why the root gave up, tell the service manager, and say it in one line."""
    limits = escalation.limits
    log.error(
        "root supervisor gave up: the daemon stops for its service manager to restart it",
        last_crashed=escalation.actor,
        intensity=limits.intensity,
        period_s=limits.period,
    )
    gave_up = DaemonGaveUp(
        f"the daemon stops: more than {limits.intensity} restarts in {limits.period:g}s under "
        f"its root supervisor, the last after {escalation.actor} crashed; a service manager "
        "(Restart=on-failure) starts it again"
    )
    notifier.stopping(str(gave_up))
    return gave_up


def _open_files_shared(options: DaemonOptions) -> tuple[int, list[ChildSpec]]:
    """The clients served at once and the embedded broker's child (if any), their limits
    lowered where the (raised) open-file limit holds less, so a full daemon answers
    `unavailable` and a full broker its 503 rather than failing to accept (EMFILE). The
    broker's connections and the clients share the one process's limit; each joined network's
    broker link holds a file besides."""
    clients = ConnectionLimit("max_clients", options.max_clients, FILES_PER_CLIENT)
    if options.broker_listen is None:
        (max_clients,) = connections_that_fit(clients, besides=MAX_NETWORKS)
        return max_clients, []
    config = options.broker_config
    connections = ConnectionLimit("max_connections", config.max_connections, FILES_PER_CONNECTION)
    max_clients, max_connections = connections_that_fit(clients, connections, besides=MAX_NETWORKS)
    shared = attrs.evolve(config, max_connections=max_connections)
    return max_clients, [ChildSpec("broker", BrokerActor(*options.broker_listen, config=shared))]


async def _probe_store(store: StoreActor) -> None:
    """A round trip through the store actor, its worker thread and its connection."""
    await store.call(_select_one, what="watchdog probe")


def _select_one(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


async def _stop_on_signal(signals: AsyncIterator[int], shutdown: Doorbell) -> None:
    """Turn the first stop signal into a shutdown, and log and ignore the ones that follow
    while the tree stops. SIGHUP (the terminal of a foreground `daemon up` closed; not a
    reload: nothing is reread) stops it too, unless it was ignored at start (`nohup`)."""
    async for signum in signals:
        log.info("stop signal", signal=signal.Signals(signum).name)
        shutdown.ring()
        break
    async for signum in signals:
        log.info("stop signal ignored: the daemon is stopping", signal=signal.Signals(signum).name)
