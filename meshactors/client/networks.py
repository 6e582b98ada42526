"""Converging the daemon's joined networks to a desired set (seed 001's catalog sync):
add what is missing, update what differs, remove the rest; running it twice changes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from meshactors.client._ops import Ops
from meshactors.client.errors import ClientError
from meshactors.network.config import with_broker_path

CONFIG_DEFAULTS: dict[str, Any] = {"label": None, "auto_approve": False}  # as the daemon's
GONE_CODES = ("no_such_network", "not_found")  # a remove that finds nothing: already converged


@attrs.frozen
class NetworkSync:
    """What `ensure_networks` did, by network id."""

    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


def desired_by_id(desired: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Desired configs by id, defaults filled in; ValueError on a missing or repeated id."""
    configs: dict[str, dict[str, Any]] = {}
    for config in desired:
        network_id = config.get("id")
        if not isinstance(network_id, str):
            raise ValueError(f"a network config needs a string `id`: {dict(config)!r}")
        if network_id in configs:
            raise ValueError(f"network {network_id!r} is listed twice")
        configs[network_id] = CONFIG_DEFAULTS | dict(config)
    return configs


def joined_configs(listed: Any) -> dict[str, dict[str, Any]]:
    """`networks_list`'s answer as configs by id (entries may nest the config under `config`)."""
    entries = listed.get("networks", []) if isinstance(listed, dict) else listed
    joined: dict[str, dict[str, Any]] = {}
    for entry in entries:
        config = entry.get("config", entry)
        joined[config["id"]] = config
    return joined


def differs(want: Mapping[str, Any], have: Mapping[str, Any]) -> bool:
    """Whether a joined network's config differs from the desired one in any desired key
    (broker URLs compared as the daemon stores them: a URL without a path gets `/v1`)."""
    return any(
        have.get(key, CONFIG_DEFAULTS.get(key))
        != (_as_stored(value) if key == "brokers" else value)
        for key, value in want.items()
    )


def _as_stored(brokers: Any) -> Any:
    if not isinstance(brokers, list):
        return brokers
    return [with_broker_path(url) if isinstance(url, str) else url for url in brokers]


async def converge(
    ops: Ops, desired: Iterable[Mapping[str, Any]], *, purge_removed: bool = False
) -> NetworkSync:
    """Make the daemon's joined networks exactly `desired` (configs `{id, label, brokers,
    auto_approve}`); idempotent, and tolerant of another program converging at the same time."""
    wanted = desired_by_id(desired)
    joined = joined_configs(await ops.networks_list())
    added, updated, unchanged, removed = [], [], [], []
    for network_id, config in wanted.items():
        if network_id not in joined:
            try:
                await ops.network_add(config)
                added.append(network_id)
                continue
            except ClientError as error:
                if error.code != "conflict":  # added meanwhile with another config
                    raise
        elif not differs(config, joined[network_id]):
            unchanged.append(network_id)
            continue
        await ops.network_update(config)
        updated.append(network_id)
    for network_id in joined.keys() - wanted.keys():
        try:
            await ops.network_remove(network_id, purge=purge_removed)
        except ClientError as error:
            if error.code not in GONE_CODES:
                raise
        removed.append(network_id)
    return NetworkSync(tuple(added), tuple(updated), tuple(sorted(removed)), tuple(unchanged))
