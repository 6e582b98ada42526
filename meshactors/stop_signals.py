"""The signals that stop a long-running command (the daemon, a serve) in order: SIGHUP (its
terminal closed) among them unless it was ignored when the process started, as `nohup` leaves
it, since receiving it would replace that SIG_IGN."""

from __future__ import annotations

import signal


def stop_signals(*signals: signal.Signals) -> tuple[signal.Signals, ...]:
    """`signals`, and SIGHUP unless it is ignored now: call it before any receiver replaces
    SIGHUP's disposition, so `nohup meshactors …` keeps running when its terminal closes."""
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        return signals
    return (*signals, signal.SIGHUP)


def ignore_from_now(signals: tuple[signal.Signals, ...]) -> None:
    """Ignore `signals` for the rest of the process, outside the receivers that take them (a
    receiver restores this on exit): a stop signal after a command's own stop cannot kill it
    while it lets go of its files. Call it with no checkpoint before the receiver opens."""
    for signum in signals:
        signal.signal(signum, signal.SIG_IGN)
