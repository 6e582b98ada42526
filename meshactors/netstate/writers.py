"""Who may write a network's replicated state: the one check every write passes through.

A check takes the device a write comes from (`sender`: ourselves for a local write, else
the peer that sent it) and the write's `author`, and says whether to take it. An open
network takes writes from this daemon and from active (approved both ways) peers, whoever
authored them, since a peer's catch-up page passes on others' writes. A closed network
swaps in a check of the signed membership (issue 20, items 1-4) with `StateReplica.may_write`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

WriterCheck = Callable[[str, str], bool]  # (sender, author) -> take the write


def open_network_writers(own_id: str, active_peers: Callable[[], Collection[str]]) -> WriterCheck:
    """The check of an open network: the sender is this daemon or an active peer."""

    def may_write(sender: str, _author: str) -> bool:
        return sender == own_id or sender in active_peers()

    return may_write
