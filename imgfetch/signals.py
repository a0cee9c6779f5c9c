"""Turning SIGINT, SIGTERM and SIGHUP into a flag the engine polls."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

WATCHED = tuple(
    sig
    for sig in (
        signal.SIGINT,
        signal.SIGTERM,
        getattr(signal, "SIGHUP", None),  # a dropped SSH session
    )
    if sig is not None
)


class Flag:
    """A flag set from a signal handler and read from any thread, without a lock.

    threading.Event.set() takes a lock, and Python runs a handler again when a
    second signal lands inside the first one: a user pressing Ctrl+C twice in
    quick succession made the nested handler wait on the lock its own outer call
    held, forever (or, with more presses, recurse into RecursionError). Setting
    a bool is one store, and reading it needs no lock under the GIL.
    """

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None, poll: float = 0.05) -> bool:
        """Like Event.wait, by polling (nothing may block the handler)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._set:
            left = poll if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(poll, left))
        return self._set


# Signals that arrived before any SignalWatcher was installed (see catch_early).
_early: list[int] = []


def catch_early() -> None:
    """Record interrupts from the first instant of the process.

    Importing the CLI (typer, rich, requests) takes a few hundred milliseconds; a
    SIGTERM in that window would otherwise kill the process the default way
    (exit -15 instead of 143). Called before those imports; the first
    SignalWatcher takes the recorded signals over.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in WATCHED:
            signal.signal(sig, _record_early)


def ignore_from_now_on() -> None:
    """Ignore interrupts for the rest of the process: its command is over.

    The interpreter's exit puts the default action back for every signal that
    has a Python handler, so a Ctrl+C in that last moment killed the process by
    SIGINT (the shell shows 130 for a run that was complete, and a parent sees
    -2 rather than the code imgfetch chose). Ignored signals are left alone.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in WATCHED:
            signal.signal(sig, signal.SIG_IGN)


def _record_early(signum: int, frame: FrameType | None) -> None:
    _early.append(signum)


def early_signal() -> int | None:
    """The first signal recorded while no SignalWatcher was installed."""
    return _early[0] if _early else None


class SignalWatcher:
    """Records interrupts; never prints, logs, writes or locks in the handler.

    Anything more than setting a flag inside a handler re-enters locks the
    interrupted main thread may hold (rich's console, logging, file objects,
    even the handler's own when a second signal interrupts it). The engine
    polls `triggered` in short slices and reacts on the main thread.

    On exit the previous handlers come back, unless a signal was received: then
    the process is on its way out with code 128 + signal, and further signals
    stay recorded (and ignored) rather than break that exit.
    """

    def __init__(self) -> None:
        self.triggered = Flag()
        self.first_signal: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Plain stores only: this may run nested inside itself (see Flag).
        if self.first_signal is None:
            self.first_signal = signum
        self.count += 1
        self.triggered.set()

    def __enter__(self) -> SignalWatcher:
        # signal.signal only works on the main thread; elsewhere (embedding, test
        # runners) imgfetch runs without interrupt handling rather than crashing.
        if threading.current_thread() is threading.main_thread():
            for sig in WATCHED:
                self._previous[sig] = signal.signal(sig, self._handle)
        for signum in _early:
            self._handle(signum, None)
        _early.clear()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.triggered.is_set():
            # The command is ending because of a signal, its state saved. Keep only
            # recording until the process exits: a user still pressing Ctrl+C
            # would otherwise raise KeyboardInterrupt wherever the way out happens
            # to be (threading, logging's shutdown, the interpreter's exit),
            # printing a traceback and dying by SIGINT instead of exiting 130.
            self._previous.clear()
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number: the shell's convention (130, 143, 129)."""
        return 128 + (self.first_signal or signal.SIGINT)
