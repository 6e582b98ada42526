"""A pass whose claim the store answers only after STORE_CALL_TIMEOUT (a long fsync, a busy
disk) crashes nothing: the outbox waits for the store's answer however long it takes and sends
what it claimed."""

from __future__ import annotations

import pytest
import trio.testing

from meshactors.daemon import outbox as outbox_module
from meshactors.daemon.outbox import Outbox
from tests.daemon.outbox_parts import HeldStoreCall, past_the_deadline
from tests.network.conftest import NET, WAIT, Mesh, active_pair
from tests.network.test_delivery import delivered
from tests.support import store_quiet


async def test_a_claim_the_store_answers_past_the_call_timeout_crashes_nothing(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, real_time_clock: trio.testing.MockClock
) -> None:
    a, b = await active_pair(mesh)
    outbox = a.services.outbox
    assert isinstance(outbox, Outbox)
    await store_quiet(a.services.store, WAIT)
    held = HeldStoreCall.hold(
        monkeypatch, outbox_module, "claim_due", lambda params, _: b.device_id in params["windows"]
    )
    outbox.poke()  # a pass: it claims for its active peer b
    await past_the_deadline(held, real_time_clock)
    sent = await a.call("send", network=NET, to=b.device_id, message="after")
    await delivered(a, sent["id"])
    assert a.crashes() == {}  # the outbox waited for its claim: no restart
