"""The stream table and its credit rules alone: no sockets, no tasks."""

from __future__ import annotations

from meshactors.network.stream_frames import STREAM_WINDOW_BYTES
from meshactors.network.stream_table import (
    CREDIT_RETURN,
    CREDIT_TRICKLE,
    ENDED_KEPT,
    MAX_STREAMS,
    PEER_STREAM_BYTES,
    BinaryStreamTable,
    PeerBudgets,
    StreamState,
)


def state(local_id: str = "l1", *, opener: bool = True) -> StreamState:
    return StreamState(local_id, "w1", "peer", "files", opener, timeout=30.0)


def test_spending_stops_at_the_window_and_resumes_with_credit() -> None:
    stream = state()
    half = STREAM_WINDOW_BYTES // 2
    assert [stream.spend(half), stream.spend(half), stream.spend(1)] == [1, 2, None]
    assert stream.granted(half)
    assert stream.spend(1) == 3  # sequence numbers count frames sent, none skipped


def test_credit_beyond_the_window_is_refused_and_changes_nothing() -> None:
    stream = state()
    assert not stream.granted(1)
    assert stream.send_credit == STREAM_WINDOW_BYTES


def test_arrivals_must_follow_in_sequence_within_the_allowance() -> None:
    stream = state()
    assert not stream.arrived(2, 10)  # frame 1 never came
    assert stream.arrived(1, 10)
    assert not stream.arrived(2, STREAM_WINDOW_BYTES)  # beyond what is left
    assert (stream.seq_in, stream.held) == (1, 10)


def test_credit_goes_back_a_quarter_window_at_a_time_as_the_connection_writes() -> None:
    stream = state()
    assert stream.arrived(1, CREDIT_RETURN) and stream.arrived(2, CREDIT_RETURN)
    assert stream.written(CREDIT_RETURN - 1) == 0
    assert stream.written(CREDIT_RETURN + 1) == 2 * CREDIT_RETURN
    assert (stream.held, stream.allowance) == (0, STREAM_WINDOW_BYTES)


def test_credit_still_goes_back_once_the_peer_ended_as_it_frees_the_peers_budget() -> None:
    stream = state()
    assert stream.arrived(1, CREDIT_RETURN)
    stream.remote_ended = True
    assert stream.written(CREDIT_RETURN) == CREDIT_RETURN


def test_no_credit_goes_back_once_both_ends_are_done_as_the_peer_forgot_the_stream() -> None:
    """The peer forgets a stream once its end went out after ours came: credit sent then would
    reach no stream there and be counted in its stray_frames."""
    stream = state()
    assert stream.arrived(1, CREDIT_TRICKLE) and stream.arrived(2, CREDIT_RETURN)
    stream.remote_ended = stream.local_ended = True
    assert stream.written(CREDIT_TRICKLE) == 0 and stream.written(CREDIT_RETURN) == 0
    assert stream.held == 0


def test_a_trickle_of_credit_goes_back_once_all_that_came_is_written() -> None:
    """A connection that keeps up hands credit back before a quarter window is owed, so many
    streams to one peer never hold its budget (PEER_STREAM_BYTES) between them; one behind
    waits for the quarter window."""
    stream = state()
    assert stream.arrived(1, CREDIT_TRICKLE - 1) and stream.written(CREDIT_TRICKLE - 1) == 0
    assert stream.arrived(2, 2) and stream.written(1) == 0  # one byte of it not written yet
    assert stream.written(1) == CREDIT_TRICKLE + 1
    assert MAX_STREAMS * CREDIT_TRICKLE <= PEER_STREAM_BYTES // 2


def test_the_table_finds_a_stream_by_its_side_and_has_a_limit() -> None:
    table = BinaryStreamTable(limit=2)
    ours, theirs = state("l1", opener=True), state("l2", opener=False)  # same peer and id
    table.add(ours)
    table.add(theirs)
    assert not table.has_room()
    assert table.find("peer", "w1", ours=True) is ours
    assert table.find("peer", "w1", ours=False) is theirs
    assert table.find("other", "w1", ours=True) is None
    assert table.forget(ours) and not table.forget(ours)
    assert list(table) == [theirs] and table.local("l1") is None


def test_the_table_keeps_the_last_streams_a_peer_ended_until_the_peer_goes() -> None:
    """ENDED_KEPT of them per peer, the oldest dropped first, all at once when the peer stops
    being active; a stream opened again under an ended key is open, not ended."""
    table = BinaryStreamTable()
    ended = [
        StreamState(f"l{n}", f"w{n}", "peer", "files", True, 30.0) for n in range(ENDED_KEPT + 1)
    ]
    for stream in ended:
        table.add(stream)
        table.forget(stream)
    assert not table.ended_lately("peer", "w0", ours=True)
    assert table.ended_lately("peer", "w1", ours=True)
    assert table.ended_lately("peer", f"w{ENDED_KEPT}", ours=True)
    assert not table.ended_lately("peer", "w1", ours=False)  # the other side's w1: never seen
    assert not table.ended_lately("other", "w1", ours=True)
    table.add(ended[1])
    assert not table.ended_lately("peer", "w1", ours=True)
    table.peer_gone("peer")
    assert not table.ended_lately("peer", f"w{ENDED_KEPT}", ours=True)


def test_a_peers_budget_is_shared_by_its_streams_and_comes_back_in_full() -> None:
    budgets = PeerBudgets(limit=10)
    assert budgets.take("p", 6) and budgets.take("q", 10)  # each peer has its own
    assert not budgets.take("p", 5)  # room for 4 more only
    assert budgets.give_back("p", 1)  # a stream found no room: streams to p look again
    assert budgets.take("p", 5) and not budgets.give_back("p", 10)
    assert (budgets.in_flight(), budgets.peak) == ({"q": 10}, 10)
