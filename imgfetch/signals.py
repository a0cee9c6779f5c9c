"""Turning SIGINT, SIGTERM and SIGHUP into a flag the engine polls."""

from __future__ import annotations

import signal
import threading
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


class SignalWatcher:
    """Records interrupts; never prints, logs or writes from the handler.

    Anything more than setting a flag inside a handler re-enters locks the
    interrupted main thread may hold (rich's console, logging, file objects).
    The engine polls `triggered` in short slices and reacts on the main thread.
    """

    def __init__(self) -> None:
        self.triggered = threading.Event()
        self.first_signal: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
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
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        """128 + the first signal's number: the shell's convention (130, 143, 129)."""
        return 128 + (self.first_signal or signal.SIGINT)
