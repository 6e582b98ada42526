"""Peer frames of closed networks: log heads, pulls and pages of facts, invite redemption.

They are control frames (not application traffic): they flow between handshaken peers before
either is active, since two members must learn each other's membership to become active.
Facts prove themselves (signatures chained to the genesis), so pages are taken from anyone;
pages are served only to devices the log names (a revoked or evicted one up to its end).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from meshactors.membership.facts import HASH_CHARS, Fact, Invite
from meshactors.wire.peer import Frame, register_frame

LOG_PAGE = 64  # facts in one `log_facts` page (a fact is at most about 2 KiB of JSON)
MAX_HEADS = 64  # hashes named in one `log_heads` (heads) or `log_pull` (heads, older facts)
MAX_REFUSAL_CHARS = 120
CURSOR = "log_cursor"  # the feature of `log_pull_after`


def _hashes(limit: int) -> Callable[[object, attrs.Attribute[list[str]], list[str]], None]:
    def check(_instance: object, attribute: attrs.Attribute[list[str]], value: list[str]) -> None:
        if len(value) > limit or any(len(h) != HASH_CHARS for h in value):
            raise ValueError(f"{attribute.name}: at most {limit} hashes")

    return check


def _page(_instance: object, _attribute: attrs.Attribute[list[Fact]], value: list[Fact]) -> None:
    if len(value) > LOG_PAGE:
        raise ValueError(f"at most {LOG_PAGE} facts in a page")


def _genesis(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if len(value) != HASH_CHARS:
        raise ValueError(f"{attribute.name} must be a hash")


@register_frame("log_heads")
@attrs.frozen
class LogHeads(Frame):
    """The heads of our log of the network whose genesis is `genesis`."""

    genesis: str = attrs.field(validator=_genesis)
    heads: list[str] = attrs.field(validator=_hashes(MAX_HEADS))


@register_frame("log_pull")
@attrs.frozen
class LogPull(Frame):
    """Send us the next page of the facts we lack: `heads` names ours, then (in the room
    left) older facts we hold; we hold every fact a named one follows, so none of those."""

    genesis: str = attrs.field(validator=_genesis)
    heads: list[str] = attrs.field(validator=_hashes(MAX_HEADS))


@register_frame("log_pull_after", feature=CURSOR)
@attrs.frozen
class LogPullAfter(Frame):
    """A `log_pull` of only the facts after `after` in the server's order (the last fact of
    the page before): the pages of one catch-up move on, whatever `heads` can name."""

    genesis: str = attrs.field(validator=_genesis)
    heads: list[str] = attrs.field(validator=_hashes(MAX_HEADS))
    after: str = attrs.field(validator=_genesis)

    def downgrade(self) -> list[Frame]:
        return [LogPull(self.genesis, self.heads)]


@register_frame("log_facts")
@attrs.frozen
class LogFacts(Frame):
    """Facts, parents first; `more` when the sender holds more the receiver lacks."""

    genesis: str = attrs.field(validator=_genesis)
    facts: list[Fact] = attrs.field(validator=_page)
    more: bool = False


@register_frame("invite_redeem")
@attrs.frozen
class InviteRedeem(Frame):
    """The sender presents an invite: an owner or admin may grant it the invite's role."""

    invite: Invite


@register_frame("invite_answer")
@attrs.frozen
class InviteAnswer(Frame):
    """An owner's or admin's answer to an invite: granted, or refused with its reason."""

    accepted: bool
    reason: str = attrs.field(validator=attrs.validators.max_len(MAX_REFUSAL_CHARS))


MEMBERSHIP_FRAMES = (LogHeads, LogPull, LogPullAfter, LogFacts, InviteRedeem, InviteAnswer)
