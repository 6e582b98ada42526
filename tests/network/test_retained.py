"""The retained store without sockets: last value per key, bounded by count and by bytes,
oldest evicted first, one sender held to its share, and a change undone by `restore`."""

from __future__ import annotations

from meshactors.network.payload import Payload
from meshactors.network.retained import RetainedStore


def test_a_key_keeps_its_last_value_and_the_bytes_follow() -> None:
    store = RetainedStore()
    store.put(("dev-a", "news"), Payload("first"))
    store.put(("dev-a", "news"), Payload("second"))
    assert store.get(("dev-a", "news")) == Payload("second")
    assert len(store) == 1 and store.bytes == Payload("second").size


def test_past_the_count_the_oldest_value_goes_first() -> None:
    store = RetainedStore(max_values=2)
    for channel in ("a", "b", "c"):
        store.put(("dev", channel), Payload(channel))
    assert [key for key, _ in store.items()] == [("dev", "b"), ("dev", "c")]


def test_past_the_bytes_the_oldest_values_go_until_it_fits() -> None:
    big = Payload("x" * 100)
    store = RetainedStore(max_bytes=2 * big.size)
    store.put(("dev", "a"), big)
    store.put(("dev", "b"), big)
    store.put(("dev", "c"), big)
    assert [key for key, _ in store.items()] == [("dev", "b"), ("dev", "c")]
    assert store.bytes == 2 * big.size


def test_a_sender_past_its_share_of_the_values_loses_its_own_oldest() -> None:
    store = RetainedStore(max_values=8, max_share=4)
    store.put(("honest", "news"), Payload("kept"))
    for n in range(20):
        store.put(("flood", f"c{n}"), Payload(n))
    assert [key for key, _ in store.items()] == [
        ("honest", "news"),
        ("flood", "c18"),
        ("flood", "c19"),
    ]


def test_a_sender_past_its_share_of_the_bytes_loses_its_own_oldest() -> None:
    big = Payload("x" * 100)
    store = RetainedStore(max_bytes=8 * big.size, max_share=4)
    store.put(("honest", "news"), Payload("kept"))
    for n in range(5):
        store.put(("flood", f"c{n}"), big)
    assert [key for key, _ in store.items()] == [
        ("honest", "news"),
        ("flood", "c3"),
        ("flood", "c4"),
    ]
    assert store.bytes == Payload("kept").size + 2 * big.size


def test_restore_undoes_a_change() -> None:
    store = RetainedStore()
    store.put(("dev", "a"), Payload(1))
    previous = store.get(("dev", "a"))
    store.put(("dev", "a"), Payload(2))
    store.restore(("dev", "a"), previous)
    assert store.get(("dev", "a")) == Payload(1)
    store.restore(("dev", "new"), None)
    store.pop(("dev", "a"))
    assert len(store) == 0 and store.bytes == 0
