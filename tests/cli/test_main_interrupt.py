"""`main`'s last word on Ctrl-C: one that a nursery wrapped in an exception group is
reported as any Ctrl-C (one line, exit 130), not as a traceback and exit 1."""

from __future__ import annotations

import pytest

from meshactors import cli
from meshactors.cli import app


def _raising(error: BaseException) -> object:
    def command(words: list[str]) -> None:
        raise error

    return command


def test_a_ctrl_c_a_nursery_wrapped_exits_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrapped = BaseExceptionGroup("tasks", [BaseExceptionGroup("inner", [KeyboardInterrupt()])])
    monkeypatch.setattr(app, "main", _raising(wrapped))
    with pytest.raises(SystemExit) as exited:
        cli.main(["channel", "sub", "lan", "news"])
    assert exited.value.code == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "meshactors: interrupted\n"


def test_a_group_with_more_than_a_ctrl_c_in_it_is_not_taken_for_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mixed = BaseExceptionGroup("tasks", [KeyboardInterrupt(), ValueError("broken")])
    monkeypatch.setattr(app, "main", _raising(mixed))
    with pytest.raises(BaseExceptionGroup) as raised:
        cli.main(["channel", "sub", "lan", "news"])
    assert raised.value is mixed
