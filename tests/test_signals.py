"""``qgen_infer.signals``: SIGINT and SIGTERM as one clean stop (used by the torchrun ranks and
around the trainer's checkpoint writes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def _ignore_sigint() -> None:  # what a script's `cmd &` hands a background job
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_qgen_train_stops_cleanly_on_sigterm_keeping_the_last_epoch(tmp_path):
    """kill -TERM (the paper queue's stop, a batch scheduler) takes Ctrl-C's path even in a job
    started in the background: 'interrupted', exit 130, the finished epochs' checkpoint whole."""
    from qgen_infer.checkpoint import load_checkpoint

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qgen_infer.cli.train", "--out", str(out), "--epochs", "500",
         "--batch-size", "128", "--threads", "1"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, preexec_fn=_ignore_sigint)
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.jsonl").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "qgen-train: interrupted" in err and "Traceback" not in err
    assert load_checkpoint(out / "model.pt")["train"]["epochs"] >= 1


def test_sigterm_stops_within_the_block_only(handlers):
    from qgen_infer.signals import sigterm_stops

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's
    with pytest.raises(Stopped) as stop:
        with sigterm_stops():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # left as it was
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert stop.value.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == handlers[signal.SIGTERM]


def test_sigterm_after_ctrl_c_does_not_cut_the_clean_stop(handlers, capsys):
    """Ctrl-C reaches a whole process group: qgen-train gets it, says 'interrupted', and then
    the queue that started it passes its own stop on as SIGTERM. That second signal must not
    raise again (a traceback in the run's log, instead of the one line)."""
    from qgen_infer.cli.common import EXIT_INTERRUPTED, run_cli
    from qgen_infer.signals import sigterm_stops

    def body(argv):
        raise KeyboardInterrupt  # what Python's SIGINT handler raises

    with sigterm_stops():
        code = run_cli("qgen-x", body, [])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    assert code == EXIT_INTERRUPTED
    assert "qgen-x: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == handlers[signal.SIGTERM]  # the block's end
