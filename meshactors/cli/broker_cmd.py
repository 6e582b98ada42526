"""`meshactors broker --listen HOST:PORT [--cluster redis://…]`: run a broker in the foreground,
standalone or one of a cluster sharing a Redis."""

from __future__ import annotations

import argparse
import re
import signal
from typing import TYPE_CHECKING

import attrs
import structlog
import trio

from meshactors.broker.limits import MAX_PERIOD_S, OUTBOUND_QUEUE_BYTES, BrokerConfig
from meshactors.cli.common import EXIT_STARTUP, EXIT_USAGE, fail
from meshactors.cli.settings import seconds_flag
from meshactors.daemon.broker_actor import parse_listen
from meshactors.listen import ListenError
from meshactors.logs import configure_logging, redacted_url
from meshactors.network.link import WELCOME_TIMEOUT
from meshactors.stop_signals import stop_signals

if TYPE_CHECKING:
    from meshactors.broker.server import Broker

log = structlog.get_logger("meshactors.broker")

DEFAULT_LISTEN = "127.0.0.1:7447"  # loopback unless told otherwise; the port the docs use
CLUSTER_FLAGS = ("cluster_heartbeat", "cluster_ttl", "admission_timeout")  # only a cluster's
# the BrokerConfig fields a flag sets, each by its flag (max_peers by --max-peers)
LIMIT_FLAGS = (
    "max_peers",
    "max_message_bytes",
    "max_unhelloed_per_address",
    "handshake_timeout",
    *CLUSTER_FLAGS,
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `broker` command."""
    parser = commands.add_parser("broker", help="run a WebSocket relay for daemons")
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, help="HOST:PORT (port 0: any free; default %(default)s)"
    )
    seconds = seconds_flag(MAX_PERIOD_S)  # each time below: more than 0, at most a day
    parser.add_argument(
        "--max-peers", type=int, default=None, help=f"daemons per network; {_default('max_peers')}"
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="one WebSocket message; a larger one closes its connection "
        f"({_default('max_message_bytes')}, at most {OUTBOUND_QUEUE_BYTES})",
    )
    parser.add_argument(
        "--max-unhelloed-per-address",
        type=int,
        default=None,
        metavar="N",
        help="connections from one address before their hello (behind a proxy: raise it);"
        f" {_default('max_unhelloed_per_address')}",
    )
    parser.add_argument(
        "--handshake-timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help=f"for the upgrade, and again for the hello; {_default('handshake_timeout')}",
    )
    parser.add_argument(
        "--cluster", default=None, metavar="URL", help="redis://HOST:PORT/DB shared by the brokers"
    )
    parser.add_argument(
        "--cluster-heartbeat",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help=f"how often this broker renews its presence; {_default('cluster_heartbeat')}",
    )
    parser.add_argument(
        "--cluster-ttl",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="how long a silent broker's presence lasts, two heartbeats at least; "
        + _default("cluster_ttl"),
    )
    parser.add_argument(
        "--admission-timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help=f"for Redis's answer to a hello; {_default('admission_timeout')}",
    )
    parser.add_argument("--log-json", action="store_true", help="JSON log lines even on a tty")
    parser.set_defaults(run=run)


def _default(field: str) -> str:
    """`default N`: BrokerConfig's default for `field`, which its flag (left out) keeps."""
    value = attrs.fields_dict(BrokerConfig)[field].default
    return f"default {value:g}" if isinstance(value, float) else f"default {value}"


def run(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen)
        limits = {key: getattr(args, key) for key in LIMIT_FLAGS if getattr(args, key) is not None}
        if args.cluster is None and (unused := [key for key in CLUSTER_FLAGS if key in limits]):
            raise ValueError(f"{unused[0]} is for a cluster: it needs --cluster")
        if limits.get("admission_timeout", 0) >= WELCOME_TIMEOUT:
            raise ValueError(
                f"admission_timeout ({args.admission_timeout}) must be under the {WELCOME_TIMEOUT}"
                " s a daemon waits for its welcome (WELCOME_TIMEOUT): a hello admitted that late"
                " finds its daemon gone"
            )
        config = BrokerConfig(**limits)
    except (ValueError, TypeError) as exc:
        fail(_as_flags(str(exc)), EXIT_USAGE)
    if args.cluster is not None:
        _check_cluster(args.cluster)
    configure_logging(json=True if args.log_json else None)
    from meshactors.broker.server import Broker  # not at the top: `daemon up` never needs it

    try:
        trio.run(_serve_until_signal, Broker(config, args.cluster), host, port)
    except* ListenError as group:
        fail(str(group.exceptions[0]), EXIT_STARTUP)
    return 0


def _as_flags(message: str) -> str:
    """`message` with the config fields it names shown as the flags that set them."""
    fields = re.compile(r"\b(" + "|".join(LIMIT_FLAGS) + r")\b")
    return fields.sub(lambda field: "--" + field[1].replace("_", "-"), message)


def _check_cluster(url: str) -> None:
    """Exit 2 (usage) on a `--cluster` URL the link could not connect with as meant."""
    from meshactors.broker.cluster import check_cluster_url  # coredis: only for a cluster

    try:
        check_cluster_url(url)
    except ValueError as exc:
        fail(f"--cluster must be {exc}, got {redacted_url(url)!r}", EXIT_USAGE)


async def _serve_until_signal(broker: Broker, host: str, port: int) -> None:
    """Serve until SIGTERM, SIGINT or SIGHUP (its terminal closed; kept ignored under `nohup`),
    then stop as cancellation does: a cluster's broker leaves Redis rather than expire there."""
    with trio.open_signal_receiver(*stop_signals(signal.SIGTERM, signal.SIGINT)) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(broker.serve, host, port)
            async for signum in signals:
                log.info("stop signal", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
