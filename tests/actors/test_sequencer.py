"""Sequencer: turns of one key come in the order they were taken, other keys' meanwhile, and a
turn given up while it waited lets no later one overtake the turn it waited for."""

from __future__ import annotations

import trio
import trio.testing

from meshactors.actors import Sequencer, Turn

STEP_WAIT = 5  # seconds any awaited step may take before the test fails


async def run_turn(turn: Turn[str], name: str, log: list[str], go: trio.Event) -> None:
    """Take `turn`, note it started, and hold it until `go`."""
    async with turn:
        log.append(name)
        await go.wait()


async def test_turns_of_a_key_run_in_the_order_taken_and_other_keys_meanwhile() -> None:
    sequencer: Sequencer[str] = Sequencer()
    log: list[str] = []
    go = {name: trio.Event() for name in ("a1", "a2", "a3", "b1")}
    with trio.fail_after(STEP_WAIT):
        async with trio.open_nursery() as nursery:
            for name in ("a1", "a2", "a3", "b1"):  # taken here, in this order
                nursery.start_soon(run_turn, sequencer.turn(name[0]), name, log, go[name])
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(log) == ["a1", "b1"]
            go["a1"].set()
            await trio.testing.wait_all_tasks_blocked()
            assert log[2:] == ["a2"]
            go["a2"].set()
            go["a3"].set()
            go["b1"].set()
    assert [name for name in log if name[0] == "a"] == ["a1", "a2", "a3"]


async def test_a_turn_given_up_while_waiting_lets_none_overtake_the_one_it_waited_for() -> None:
    sequencer: Sequencer[str] = Sequencer()
    log: list[str] = []
    go = {name: trio.Event() for name in ("first", "given up", "last")}
    with trio.fail_after(STEP_WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_turn, sequencer.turn("k"), "first", log, go["first"])
            waiting = trio.CancelScope()
            given_up = sequencer.turn("k")
            nursery.start_soon(run_turn, sequencer.turn("k"), "last", log, go["last"])

            async def give_up() -> None:
                with waiting:
                    await run_turn(given_up, "given up", log, go["given up"])

            nursery.start_soon(give_up)
            await trio.testing.wait_all_tasks_blocked()
            waiting.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["first"]  # "last" still waits for "first"
            go["first"].set()
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["first", "last"]
            assert sequencer._last  # "last" still holds its turn
            go["last"].set()
    assert not sequencer._last  # every line ended: nothing is kept


async def test_a_line_whose_last_turn_ended_first_is_kept_until_all_ended() -> None:
    sequencer: Sequencer[str] = Sequencer()
    log: list[str] = []
    first_go = trio.Event()
    with trio.fail_after(STEP_WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_turn, sequencer.turn("k"), "first", log, first_go)
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as waiting:
                waiting.cancel()
                async with sequencer.turn("k"):  # cancelled while it waits: ends at once
                    log.append("never")
            later = sequencer.turn("k")  # must still wait for "first"
            nursery.start_soon(run_turn, later, "later", log, trio.Event())
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["first"]
            first_go.set()
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["first", "later"]
            nursery.cancel_scope.cancel()
    assert not sequencer._last
