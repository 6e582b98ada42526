"""A closed network's membership log in the state database (table `membership_log`): run by
the store actor, read back and verified by the network's core when it starts."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from meshactors.membership.facts import Fact, Genesis, converter, record_hash
from meshactors.store.db import from_json, immediate, to_json
from meshactors.store.networks import put_setting

INVITE_KEY = "membership_invite"  # local_settings key: the invite this device presents


class OtherGenesis(ValueError):
    """The network already has another genesis here (another closed network of that id)."""


def save_genesis(conn: sqlite3.Connection, genesis: Genesis) -> bool:
    """Keep the genesis of a closed network; the same one again is a no-op (→ False).
    OtherGenesis when the network already has a different one."""
    digest = record_hash(genesis)
    with immediate(conn):
        row = conn.execute(
            "SELECT hash FROM membership_log WHERE network = ? AND kind = 'genesis'",
            (genesis.network,),
        ).fetchone()
        if row is not None:
            if row[0] != digest:
                raise OtherGenesis(f"network {genesis.network!r} has another genesis here")
            return False
        conn.execute(
            "INSERT INTO membership_log (network, hash, kind, record_json)"
            " VALUES (?, ?, 'genesis', ?)",
            (genesis.network, digest, to_json(converter.unstructure(genesis))),
        )
    return True


def save_facts(conn: sqlite3.Connection, network: str, facts: Sequence[Fact]) -> None:
    """Append accepted facts, in the order given (parents first). A row of the same hash
    holds a record that failed to verify at load (else the fact would not be new): the
    verified record replaces it, so a fact a member handed back is kept for good."""
    with immediate(conn):
        conn.executemany(
            "INSERT INTO membership_log (network, hash, kind, record_json)"
            " VALUES (?, ?, 'fact', ?)"
            " ON CONFLICT (network, hash) DO UPDATE SET record_json = excluded.record_json",
            [(network, record_hash(f), to_json(converter.unstructure(f))) for f in facts],
        )


def drop_facts(conn: sqlite3.Connection, network: str, digests: Collection[str]) -> None:
    """Delete facts of `network` by hash (a flood screened out at load, never to reload)."""
    with immediate(conn):
        conn.executemany(
            "DELETE FROM membership_log WHERE network = ? AND kind = 'fact' AND hash = ?",
            [(network, digest) for digest in digests],
        )


def load_log(conn: sqlite3.Connection, network: str) -> tuple[Any, list[Any]]:
    """The stored genesis (None for an open network) and facts of `network`, as JSON, in the
    order they were accepted; not verified here."""
    rows = conn.execute(
        "SELECT kind, record_json FROM membership_log WHERE network = ? ORDER BY seq",
        (network,),
    ).fetchall()
    genesis = next((from_json(text) for kind, text in rows if kind == "genesis"), None)
    return genesis, [from_json(text) for kind, text in rows if kind == "fact"]


def hold_invite(conn: sqlite3.Connection, network: str, invite: dict[str, Any]) -> None:
    """Keep the invite this device presents in `network` until a member admits it."""
    put_setting(conn, network, INVITE_KEY, invite)


def forget_invite(conn: sqlite3.Connection, network: str) -> None:
    """Drop the held invite (this device is a member now)."""
    conn.execute("DELETE FROM local_settings WHERE network = ? AND key = ?", (network, INVITE_KEY))
