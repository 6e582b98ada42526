"""The stream table and its credit rules alone: no sockets, no tasks."""

from __future__ import annotations

from meshactors.network.stream_frames import STREAM_WINDOW_BYTES
from meshactors.network.stream_table import CREDIT_RETURN, BinaryStreamTable, StreamState


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


def test_no_credit_goes_back_once_the_peer_ended() -> None:
    stream = state()
    assert stream.arrived(1, CREDIT_RETURN)
    stream.remote_ended = True
    assert stream.written(CREDIT_RETURN) == 0


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
