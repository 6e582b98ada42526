"""What the daemon was told about its networks, kept across restarts: config, roster, settings."""

import sqlite3
from collections.abc import Sequence
from typing import Any

import attrs

from meshactors.store.db import from_json, immediate, to_json
from meshactors.store.outbox import UNSENT, delete_sends

ROSTER_STATES = ("pending", "approved", "denied")
GLOBAL = ""  # the settings "network" of values that apply to every network (the global profile)
ROLE_KEY = "role"  # GLOBAL setting: the role this daemon announces in every network


class UnknownNetwork(LookupError):
    """A roster change named a network that was never saved (or was deleted)."""


@attrs.frozen
class RosterEntry:
    """A device's standing in one network."""

    network: str
    device_id: str
    label: str | None
    state: str  # one of ROSTER_STATES
    updated_at: int
    role: str | None = None  # the role the device last announced, once heard


def save_network(
    conn: sqlite3.Connection, network_id: str, config: dict[str, Any], now_ms: int
) -> None:
    """Add a network, or replace the config of a known one (its added_at stays)."""
    conn.execute(
        "INSERT INTO networks (id, config_json, added_at) VALUES (?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET config_json = excluded.config_json",
        (network_id, to_json(config), now_ms),
    )


@attrs.frozen
class Forgotten:
    """What delete_network did: whether the network was known, and how many of its sends a
    purge deleted undelivered (pending or inflight), which no message_dead will report."""

    known: bool
    purged_unsent: int = 0


def delete_network(conn: sqlite3.Connection, network_id: str, purge: bool) -> Forgotten:
    """Forget a network's config; with `purge` also its roster, settings, inbox, outbox and
    replicated state.

    Without purge the roster, messages and settings stay, so a rejoin with the same id finds
    its approvals again. Purging a network that was already deleted still removes its
    leftovers. A purge deletes sends whatever their status or age (the idempotency window
    aside), and counts those not yet delivered.
    """
    with immediate(conn):
        known = conn.execute("DELETE FROM networks WHERE id = ?", (network_id,)).rowcount > 0
        if not purge:
            return Forgotten(known)
        sends = conn.execute(
            "SELECT id, status FROM outbox WHERE network = ?", (network_id,)
        ).fetchall()
        delete_sends(conn, [row_id for row_id, _ in sends])  # counted, as every outbox write is
        tables = ("roster", "local_settings", "inbox", "netstate", "membership_log")
        for table in tables:
            conn.execute(f"DELETE FROM {table} WHERE network = ?", (network_id,))
    return Forgotten(known, sum(status in UNSENT for _, status in sends))


def load_networks(conn: sqlite3.Connection) -> list[tuple[str, dict[str, Any]]]:
    """Every saved network and its config, in the order they were added."""
    rows = conn.execute("SELECT id, config_json FROM networks ORDER BY added_at, id")
    return [(network_id, from_json(config)) for network_id, config in rows]


def set_roster_state(
    conn: sqlite3.Connection,
    network: str,
    device_id: str,
    state: str,
    label: str | None,
    now_ms: int,
    role: str | None = None,
) -> None:
    """Record a device's state in a network; a None label or role keeps the one known."""
    if state not in ROSTER_STATES:
        raise ValueError(f"roster state must be one of {', '.join(ROSTER_STATES)}: {state!r}")
    if conn.execute("SELECT 1 FROM networks WHERE id = ?", (network,)).fetchone() is None:
        raise UnknownNetwork(f"no network {network!r}")
    conn.execute(
        "INSERT INTO roster (network, device_id, label, state, updated_at, role)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (network, device_id) DO UPDATE SET"
        " label = coalesce(excluded.label, label), state = excluded.state,"
        " updated_at = excluded.updated_at, role = coalesce(excluded.role, role)",
        (network, device_id, label, state, now_ms, role),
    )


def save_roster(
    conn: sqlite3.Connection,
    entries: Sequence[RosterEntry],
    removals: Sequence[RosterEntry] = (),
) -> None:
    """Forget the devices of `removals`, then record several devices' states (as
    set_roster_state does each), in one transaction: one forgotten and seen again is kept."""
    with immediate(conn):
        for gone in removals:
            remove_roster(conn, gone.network, gone.device_id)
        for entry in entries:
            set_roster_state(
                conn,
                entry.network,
                entry.device_id,
                entry.state,
                entry.label,
                entry.updated_at,
                entry.role,
            )


def roster(conn: sqlite3.Connection, network: str) -> list[RosterEntry]:
    """The devices known in a network, by device id."""
    rows = conn.execute(
        "SELECT network, device_id, label, state, updated_at, role FROM roster"
        " WHERE network = ? ORDER BY device_id",
        (network,),
    )
    return [RosterEntry(*row) for row in rows]


def remove_roster(conn: sqlite3.Connection, network: str, device_id: str) -> bool:
    """Forget a device in a network; returns whether it was known."""
    cursor = conn.execute(
        "DELETE FROM roster WHERE network = ? AND device_id = ?", (network, device_id)
    )
    return cursor.rowcount > 0


def settle_role(conn: sqlite3.Connection, declared: str | None, roles: Sequence[str]) -> str:
    """The role this daemon announces: `declared` (kept for the next starts), else the one
    kept from an earlier start if still one of `roles`, else the first of `roles`."""
    if declared is not None:
        put_setting(conn, GLOBAL, ROLE_KEY, declared)
        return declared
    kept = get_settings(conn, GLOBAL).get(ROLE_KEY)
    return kept if isinstance(kept, str) and kept in roles else roles[0]


def put_setting(conn: sqlite3.Connection, network: str, key: str, value: Any) -> None:
    """Store one of our settings (a capability, a profile field) for a network or GLOBAL."""
    conn.execute(
        "INSERT INTO local_settings (network, key, value_json) VALUES (?, ?, ?)"
        " ON CONFLICT (network, key) DO UPDATE SET value_json = excluded.value_json",
        (network, key, to_json(value)),
    )


def get_setting(conn: sqlite3.Connection, network: str, key: str) -> Any:
    """One of our settings for a network (or GLOBAL); None when it was never stored."""
    row = conn.execute(
        "SELECT value_json FROM local_settings WHERE network = ? AND key = ?", (network, key)
    ).fetchone()
    return None if row is None else from_json(row[0])


def get_settings(conn: sqlite3.Connection, network: str) -> dict[str, Any]:
    """All our settings for a network (or GLOBAL), by key."""
    rows = conn.execute(
        "SELECT key, value_json FROM local_settings WHERE network = ? ORDER BY key", (network,)
    )
    return {key: from_json(value) for key, value in rows}
