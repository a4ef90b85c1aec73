"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM.

SIGTERM ends a Python process on the spot by default, with nothing said; a batch job's
scheduler and ``torchrun`` (when another rank is lost, or when it is itself stopped) send it.
:func:`stop_signals` makes both signals raise :class:`Stopped`, a ``KeyboardInterrupt``, so they
take the same path as Ctrl-C. :func:`signals_deferred` holds them back while finished results
move into place, so that a stop never cuts a write that must be whole.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """Told to stop: Ctrl-C (SIGINT; a terminal sends it to every process of a torchrun job,
    and torchrun passes it on) or SIGTERM. ``signal_name`` says which."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def _on_main_thread() -> bool:
    """Python runs signal handlers on the main thread only, and only it may install them."""
    return threading.current_thread() is threading.main_thread()


def _raise_stopped(signum: int, frame: Any) -> None:
    stop_signals(ignore=True)  # a second signal must not cut the cleanup
    raise Stopped(signal.Signals(signum).name)


def stop_signals(ignore: bool = False, signals: tuple[signal.Signals, ...] = SIGNALS) -> None:
    """From now on SIGINT and SIGTERM (or only ``signals``) raise :class:`Stopped`; ``ignore``:
    they are ignored, for a process that is already stopping (torchrun repeats the signal to
    its ranks)."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN if ignore else _raise_stopped)


def ignore_further_sigterm() -> None:
    """A stop is under way (Ctrl-C raised ``KeyboardInterrupt``): a SIGTERM that follows must
    not cut its cleanup with a second exception (a queue stopped by the same Ctrl-C, which
    reached the whole process group, passes SIGTERM on to its children). Replaces only
    :func:`sigterm_stops`' handler, which that block puts back at its end."""
    if _on_main_thread() and signal.getsignal(signal.SIGTERM) is _raise_stopped:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block writes or moves a result into place (a
    stop halfway would leave neither the old result nor the new, or an exception of the writer
    instead of the stop); a signal that came meanwhile raises :class:`Stopped` after it."""
    if not _on_main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if caught:
        raise Stopped(signal.Signals(caught[0]).name)


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Stopped` (Ctrl-C's path: a clean stop), and
    SIGINT keeps its disposition (a job a script started in the background ignores it, as POSIX
    wants); the previous SIGTERM handler is back afterwards (in-process callers, tests)."""
    if not _on_main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    stop_signals(signals=(signal.SIGTERM,))
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
