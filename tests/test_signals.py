"""``qgen_infer.signals``: SIGINT and SIGTERM as one clean stop (used by the torchrun ranks and
around the trainer's checkpoint writes)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from qgen_infer.signals import SIGNALS, Stopped, signals_deferred, stop_signals


@pytest.fixture
def handlers():
    """The process's handlers, put back after the test."""
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield before
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_signal_during_the_block_is_raised_after_it(handlers):
    finished = []
    with pytest.raises(Stopped) as stop:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # would end the process by default
            time.sleep(0.05)
            finished.append(True)
    assert finished == [True] and stop.value.signal_name == "SIGTERM"
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers


def test_no_signal_no_stop(handlers):
    with signals_deferred():
        pass
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == handlers


def test_stop_signals_raise_stopped_once_then_ignore(handlers):
    stop_signals()
    with pytest.raises(Stopped, match="SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    # the stop in progress is not cut by a repeated signal (torchrun sends its own)
    assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in SIGNALS)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
