"""A closed network's membership log in memory: verified facts linked to the genesis, their one
order, and the roles that order resolves to. Plain sans-IO code, run by the network's core.

Order: a topological order of the facts (a fact after every fact it names), and among the
facts whose parents are all placed, the one with the smallest (`at_ms`, hash) first. Every
member holding the same facts computes the same order, whatever order they arrived in.

Rules, applied to the facts in that order (a fact that breaks one is void: kept, no effect):
- an owner grants and revokes any role and evicts any device; an admin grants and revokes
  `member` (not of an owner or admin) and evicts a device that is not an owner or admin;
  a member changes nothing. Authority is the author's role at that point of the order, so
  facts by an author whose role was revoked are void from the revocation on;
- a grant gives the device that one role (replacing the one it had); a revoke of the role the
  device holds leaves it none; an evict leaves it none for good: a grant of the device that
  follows the evict is void, and so is one the evict's author had not seen (not among the
  evict's ancestors), wherever it falls in the order (an evict beats a concurrent grant);
- facts by an evicted device that the evict's author had not seen are void too, so a stolen
  key cannot act "before" its eviction by backdating; what it did that the evict's author had
  seen holds (an evicted admin's members stay members);
- those two effects are an evict's only if it holds once they all apply: an evict they make
  void (its author's grant was one of them) has none, so it bans nobody. The evicts with
  effects are found by rounds (see `_resolve`), from the facts alone, so every member holding
  the same facts finds the same, whatever order they arrived in;
- a grant that carries an invite is void unless the invite is signed, for this network, of
  that role, by an issuer who may grant it at that point, `at_ms` is not past its expiry, and
  fewer than `uses` other devices were granted by it before.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

import attrs

from meshactors.membership.facts import (
    BadRecord,
    Fact,
    Genesis,
    record_hash,
    verify,
)

MAX_FACTS = 4096  # facts one network's log holds; more are refused (`log_full`)

MEMBER, REVOKED, EVICTED = "member", "revoked", "evicted"


@attrs.frozen
class MemberRow:
    """Where one device stands in the resolved log."""

    device: str
    role: str | None
    granted_by: str | None
    at_ms: int
    status: str  # member, revoked or evicted
    fact: str | None  # the hash of the fact that set it (None for the genesis owner)

    def view(self) -> dict[str, object]:
        return {
            "device_id": self.device,
            "role": self.role,
            "granted_by": self.granted_by,
            "at": self.at_ms,
            "status": self.status,
        }


def may(author_role: str | None, kind: str, role: str, target_role: str | None) -> bool:
    """Whether a device holding `author_role` may make a fact of `kind` (of `role`) about a
    device holding `target_role`."""
    if author_role == "owner":
        return True
    if author_role != "admin" or target_role in ("owner", "admin"):
        return False
    return kind == "evict" or role == "member"


@attrs.frozen
class Resolved:
    """The roles the log resolves to, and which facts are void."""

    rows: dict[str, MemberRow]
    void: frozenset[str]

    def role_of(self, device: str) -> str | None:
        row = self.rows.get(device)
        return row.role if row is not None and row.status == MEMBER else None

    def is_member(self, device: str) -> bool:
        return self.role_of(device) is not None

    def evicted(self, device: str) -> bool:
        row = self.rows.get(device)
        return row is not None and row.status == EVICTED


@attrs.define(eq=False)
class MembershipLog:
    """The genesis and the facts accepted so far; `resolved` is kept current."""

    genesis: Genesis
    genesis_hash: str = attrs.field(init=False)
    facts: dict[str, Fact] = attrs.field(factory=dict, init=False)
    _order: list[str] | None = attrs.field(default=None, init=False)
    granted: set[str] = attrs.field(factory=set, init=False)  # the owner and every device granted
    resolved: Resolved = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.genesis_hash = record_hash(self.genesis)
        self.granted.add(self.genesis.owner)
        self.resolved = self._resolve()

    def check(self, fact: Fact) -> str:
        """The fact's hash, if it may join this log once its parents are here: its network,
        genesis and signature check out and it is new. BadRecord (`wrong_network`,
        `duplicate`, `bad_signature`, `log_full`) otherwise."""
        if fact.network != self.genesis.network or fact.genesis != self.genesis_hash:
            raise BadRecord("wrong_network", "the fact is for another network or genesis")
        digest = record_hash(fact)
        if digest in self.facts:
            raise BadRecord("duplicate", "the fact is already in the log")
        if len(self.facts) >= MAX_FACTS:
            raise BadRecord("log_full", f"the log holds {MAX_FACTS} facts")
        verify(fact)
        return digest

    def missing(self, fact: Fact) -> list[str]:
        """The parents of `fact` this log does not hold."""
        return [p for p in fact.parents if p != self.genesis_hash and p not in self.facts]

    def add(self, facts: Iterable[Fact]) -> None:
        """Add checked facts whose parents are all here, then resolve the log again."""
        for fact in facts:
            self.facts[record_hash(fact)] = fact
            if fact.kind == "grant":
                self.granted.add(fact.device)
        self._order = None
        self.resolved = self._resolve()

    def remove(self, digests: set[str]) -> None:
        """Take facts out (none that a fact left in follows), then resolve the log again."""
        for digest in digests:
            del self.facts[digest]
        grants = (fact.device for fact in self.facts.values() if fact.kind == "grant")
        self.granted = {self.genesis.owner, *grants}
        self._order = None
        self.resolved = self._resolve()

    def ranked(self) -> set[str]:
        """The devices that may hold owner or admin somewhere in the order: the genesis owner
        and whom a grant by one of them (void or not) makes owner or admin. A fact by any
        other device is void wherever it falls and whatever is skipped, so taking it out
        changes no role and no other fact's place."""
        makes: dict[str, list[str]] = {}
        for fact in self.facts.values():
            if fact.kind == "grant" and fact.role in ("owner", "admin"):
                makes.setdefault(fact.author, []).append(fact.device)
        ranked: set[str] = set()
        stack = [self.genesis.owner]
        while stack:
            device = stack.pop()
            if device not in ranked:
                ranked.add(device)
                stack.extend(makes.get(device, ()))
        return ranked

    def heads(self) -> list[str]:
        """The hashes no fact follows yet (the genesis while there is none), sorted."""
        followed = {parent for fact in self.facts.values() for parent in fact.parents}
        heads = sorted(digest for digest in self.facts if digest not in followed)
        return heads or [self.genesis_hash]

    def knows(self, digest: str) -> bool:
        return digest == self.genesis_hash or digest in self.facts

    def order(self) -> list[str]:
        """The hashes of every fact in the log's one order (see the module docstring)."""
        if self._order is not None:
            return self._order
        waiting = {digest: len(fact.parents) for digest, fact in self.facts.items()}
        followers: dict[str, list[str]] = {}
        for digest, fact in self.facts.items():
            for parent in fact.parents:
                followers.setdefault(parent, []).append(digest)
        ready: list[tuple[int, str]] = []

        def placed(digest: str) -> None:
            for follower in followers.get(digest, ()):
                waiting[follower] -= 1
                if waiting[follower] == 0:
                    heapq.heappush(ready, (self.facts[follower].at_ms, follower))

        placed(self.genesis_hash)
        order: list[str] = []
        while ready:
            _, digest = heapq.heappop(ready)
            order.append(digest)
            placed(digest)
        self._order = order
        return order

    def ancestors(self, digests: Iterable[str]) -> set[str]:
        """The named facts and every fact they follow, transitively (known ones only)."""
        seen: set[str] = set()
        stack = [d for d in digests if d in self.facts]
        while stack:
            digest = stack.pop()
            if digest in seen:
                continue
            seen.add(digest)
            stack.extend(p for p in self.facts[digest].parents if p in self.facts)
        return seen

    def _ancestry(self) -> tuple[dict[str, int], dict[str, int]]:
        """Each fact's bit, and the bits of it and every fact it follows, in one pass over the
        order: an evict's ancestors are then one lookup, not a walk of the log per evict
        (which made a resolve quadratic, seconds per fact in a long log with many evicts)."""
        bits: dict[str, int] = {}
        seen: dict[str, int] = {}
        for n, digest in enumerate(self.order()):
            bits[digest] = 1 << n
            mask = bits[digest]
            for parent in self.facts[digest].parents:
                mask |= seen.get(parent, 0)
            seen[digest] = mask
        return bits, seen

    def landmarks(self, limit: int, widest: int) -> list[str]:
        """Up to `limit` facts to name in a pull: our heads, then older facts back through the
        order, 1, 2, 4... apart and at most `widest` apart. The server sends none of the facts
        a named one it holds follows, so after a divergence (our heads new to it) it sends, in
        a log that is mostly one line, fewer than `widest` facts we hold before those we lack,
        not the log from its start (a page of facts we hold, and no progress)."""
        named = dict.fromkeys(self.heads()[:limit])
        order = self.order()
        back, step = 1, 1
        while len(named) < limit and back <= len(order):
            named[order[-back]] = None
            back += step
            step = min(2 * step, widest)
        return list(named)

    def missing_for(
        self,
        theirs_named: Iterable[str],
        limit: int,
        upto: str | None = None,
        after: str | None = None,
    ) -> list[Fact]:
        """Up to `limit` facts a peer lacks that holds `theirs_named` (its heads, maybe older
        facts too) and so every fact they follow, in order (parents first, so each page
        applies on its own); with `upto`, only that fact and those it follows; with `after`
        (a fact we hold), only the facts after it in the order. Facts a fact joins do not
        move the facts we held before it in the order, so pages that each start after the
        last one's end move on through the log, whatever the peer can name."""
        theirs = self.ancestors(theirs_named)
        within = self.ancestors([upto]) if upto is not None else self.facts.keys()
        order = self.order()
        start = order.index(after) + 1 if after is not None and after in self.facts else 0
        return [self.facts[d] for d in order[start:] if d not in theirs and d in within][:limit]

    def _resolve(self) -> Resolved:
        """Replay once to learn which evicts hold, then again without what they had not seen,
        and again without the effects of those that this made void, until every evict whose
        effects apply holds (each round drops one at least, so it ends): an evict void in the
        end, such as one whose author's grant another evict voided, bans nobody. One dropped
        that holds in the end evicts from its point in the order on, without those effects.
        Skipping only facts the plain replay voids changes nothing, so then it is the answer."""
        plain = self._replay(frozenset())
        evicts = [d for d in self.order() if d not in plain.void and self.facts[d].kind == "evict"]
        if not evicts:
            return plain
        about: dict[str, set[str]] = {}  # each device's facts: those it made, the grants of it
        for digest, fact in self.facts.items():
            about.setdefault(fact.author, set()).add(digest)
            if fact.kind == "grant":
                about.setdefault(fact.device, set()).add(digest)
        bits, seen = self._ancestry()
        while evicts:
            unseen = {
                d
                for evict in evicts
                for d in about.get(self.facts[evict].device, ())
                if not seen[evict] & bits[d]
            }
            if unseen <= plain.void:  # skipping facts void anyway replays to `plain` again
                return plain
            resolved = self._replay(frozenset(unseen))
            holding = [d for d in evicts if d not in resolved.void]
            if len(holding) == len(evicts):
                return resolved
            evicts = holding
        return plain

    def _replay(self, skipped: frozenset[str]) -> Resolved:
        """Apply the facts in order, but `skipped` ones (void)."""
        owner = self.genesis.owner
        rows = {owner: MemberRow(owner, "owner", None, self.genesis.created_ms, MEMBER, None)}
        void = set(skipped)
        invited: dict[str, set[str]] = {}
        for digest in self.order():
            fact = self.facts[digest]
            if digest in skipped or not self._applies(fact, rows, invited):
                void.add(digest)
                continue
            if fact.kind == "grant":
                rows[fact.device] = MemberRow(
                    fact.device, fact.role, fact.author, fact.at_ms, MEMBER, digest
                )
                if fact.invite is not None:
                    invited.setdefault(record_hash(fact.invite), set()).add(fact.device)
            else:
                status = EVICTED if fact.kind == "evict" else REVOKED
                rows[fact.device] = MemberRow(
                    fact.device, None, fact.author, fact.at_ms, status, digest
                )
        return Resolved(rows, frozenset(void))

    def _applies(
        self,
        fact: Fact,
        rows: dict[str, MemberRow],
        invited: dict[str, set[str]],
    ) -> bool:
        def role(device: str) -> str | None:
            row = rows.get(device)
            return row.role if row is not None and row.status == MEMBER else None

        target = rows.get(fact.device)
        if target is not None and target.status == EVICTED:
            return False
        if not may(role(fact.author), fact.kind, fact.role, role(fact.device)):
            return False
        match fact.kind:
            case "grant":
                if fact.invite is not None:
                    return self._invite_holds(fact, role(fact.invite.issuer), invited)
                return True
            case "revoke":
                return role(fact.device) == fact.role
            case _:
                return True

    def _invite_holds(
        self, fact: Fact, issuer_role: str | None, invited: dict[str, set[str]]
    ) -> bool:
        invite = fact.invite
        assert invite is not None
        if invite.network != self.genesis.network or invite.genesis != self.genesis_hash:
            return False
        if fact.at_ms > invite.expires_ms or not may(issuer_role, "grant", invite.role, None):
            return False
        used = invited.get(record_hash(invite), set())
        return fact.device in used or len(used) < invite.uses
