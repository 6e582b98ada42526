"""Fuzz the broker over a real trio-websocket connection: any messages after a valid hello are
relayed whole and in order until the first bad one, which closes only its sender with its
documented code and reason; the broker itself never fails. (Oversize messages are tested on
their own in tests/broker: trio-websocket's reader reads ahead, so here they would race.)"""

from __future__ import annotations

import json

import trio
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey
from trio_websocket import ConnectionClosed

from meshactors.broker.envelope import MalformedBatch, decode_batch, encode_batch
from meshactors.wire.device_id import device_id_from_public_key
from tests.broker.support import WAIT_S, joined, left, start_broker
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import mutated

MAX_MESSAGE = 1024  # bytes: the broker limit in these runs
ALICE, BOB, CAROL = (SigningKey(bytes([seed]) * 32) for seed in (1, 2, 3))
BOB_PK = BOB.verify_key.encode()
ALICE_LEFT = left(device_id_from_public_key(ALICE.verify_key.encode()))

records = st.lists(
    st.tuples(st.sampled_from([BOB_PK, bytes(32)]), st.binary(max_size=200)), min_size=1, max_size=4
)
good_batch = records.map(encode_batch)
messages = st.lists(
    good_batch | good_batch.flatmap(mutated) | st.binary(max_size=300) | st.text(max_size=40),
    max_size=6,
)


def expected(sent: list[bytes | str]) -> tuple[list[bytes], tuple[int, str] | None]:
    """What Bob should receive from Alice, and how (if at all) the broker closes Alice."""
    relayed: list[bytes] = []
    for message in sent:
        if isinstance(message, str):
            return relayed, (4400, "unexpected_text")
        try:
            batch = decode_batch(message)
        except MalformedBatch:
            return relayed, (4400, "malformed_batch")
        relayed += [sealed for to, sealed in batch if to == BOB_PK]
    return relayed, None


async def _exchange(sent: list[bytes | str]) -> None:
    want, close = expected(sent)
    async with trio.open_nursery() as nursery:
        broker, url = await start_broker(
            nursery, max_message_bytes=MAX_MESSAGE, outbound_queue_bytes=1 << 20
        )
        async with joined(url, BOB, "net") as (bob, _), joined(url, ALICE, "net") as (alice, _):
            closed = None
            try:
                for message in sent:
                    await alice.send_message(message)
                await alice.send_message(encode_batch([(BOB_PK, b"end")]))
            except ConnectionClosed:
                pass  # the broker closed Alice already: the close is read below
            got: list[bytes] = []
            with trio.fail_after(WAIT_S):
                while True:
                    message = await bob.get_message()
                    if isinstance(message, str):
                        if ALICE_LEFT(json.loads(message)):
                            break
                        continue
                    got += [sealed for _, sealed in decode_batch(message)]
                    if close is None and got[-1:] == [b"end"]:
                        got.pop()
                        break
            if close is not None:
                with trio.fail_after(WAIT_S):
                    while closed is None:
                        try:
                            await alice.get_message()
                        except ConnectionClosed as ended:
                            closed = ended.reason
                assert closed is not None
                assert closed.code == close[0]
                assert close[1] == "" or closed.reason == close[1]
                assert got == want
            else:
                assert got == want
        async with joined(url, CAROL, "net") as (carol, _), joined(url, BOB, "net") as (bob, _):
            await carol.send_message(encode_batch([(BOB_PK, b"still relaying")]))
            with trio.fail_after(WAIT_S):
                while isinstance(message := await bob.get_message(), str):
                    pass
            assert decode_batch(message) == [(CAROL.verify_key.encode(), b"still relaying")]
        assert broker.figures()["connection_errors"] == 0
        nursery.cancel_scope.cancel()


@fuzz
@given(messages)
def test_any_messages_after_a_hello_are_relayed_or_close_only_their_sender(
    sent: list[bytes | str],
) -> None:
    trio.run(_exchange, sent)
