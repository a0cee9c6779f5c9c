"""Politeness per host: connections at once, requests per second, pauses asked for.

Every request passes `HostGate.enter` first and `leave` after its body is read.
The gate holds, per host, a semaphore (`--per-host`), the earliest start the rate
allows (`--rate`), and a "not before" time set when the host answered 429 or 503
with Retry-After. That pause applies to every worker: the CDN throttles the client,
not the one request, and hammering it on other images would only prolong the
throttling. Other hosts are not affected.

Waits end early when the abort event is set, so a worker queued behind a paused
host never holds up a shutdown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

# How often a worker queued for a connection slot looks at the abort event.
SLOT_POLL = 0.1
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_key(url: str) -> str:
    """`hostname:port` of a URL, the unit politeness is counted in."""
    # Once per image: the answer is cached per scheme and authority, which is
    # cheap to cut out of an absolute URL, instead of parsing every URL whole.
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    key = _KEYS.get((scheme, authority)) if sep else None
    if key is None:
        key = _parse_host_key(url)
        if sep:
            if len(_KEYS) >= _KEYS_KEPT:
                _KEYS.clear()
            _KEYS[(scheme, authority)] = key
    return key


def _parse_host_key(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)}"


_KEYS: dict[tuple[str, str], str] = {}
_KEYS_KEPT = 10_000  # hosts; a catalog has a handful of CDNs


@dataclass
class _Host:
    slots: threading.Semaphore
    next_start: float = 0.0
    not_before: float = 0.0
    referer_flipped: bool = False
    pauses: int = 0


class HostGate:
    """Per-host connection slots, request spacing and shared pauses."""

    def __init__(
        self,
        per_host: int,
        rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_host < 1:
            raise ValueError("per_host must be at least 1")
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.per_host = per_host
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}

    def enter(self, host: str, abort: threading.Event) -> bool:
        """Take a connection slot and wait for the host's turn.

        True when the request may start (call `leave` after it); False, holding
        nothing, when `abort` was set first.
        """
        state = self._state(host)
        if not self._take_slot(state, abort):
            return False
        if not self._wait_turn(state, abort):
            state.slots.release()
            return False
        return True

    def leave(self, host: str) -> None:
        self._state(host).slots.release()

    def pause(self, host: str, seconds: float) -> None:
        """No request to `host` starts in the next `seconds`, from any worker."""
        state = self._state(host)
        with self._lock:
            state.not_before = max(state.not_before, self._clock() + seconds)
            state.pauses += 1

    def paused_for(self, host: str) -> float:
        """Seconds until `host` may be asked again (0 when it may be now)."""
        state = self._state(host)
        with self._lock:
            return max(0.0, state.not_before - self._clock())

    def pauses(self, host: str) -> int:
        """How many times `host` asked to slow down."""
        return self._state(host).pauses

    def referer_flipped(self, host: str) -> bool:
        """Whether images of `host` were last had with the other Referer policy."""
        return self._state(host).referer_flipped

    def remember_referer(self, host: str, flipped: bool) -> None:
        # Learned from a success, so the next image of a hotlink-protected host
        # does not spend a 403 to find out again.
        self._state(host).referer_flipped = flipped

    def _state(self, host: str) -> _Host:
        state = self._hosts.get(host)  # a dict lookup is atomic: no lock to find it
        if state is not None:
            return state
        with self._lock:
            state = self._hosts.get(host)
            if state is None:
                state = _Host(threading.Semaphore(self.per_host))
                self._hosts[host] = state
            return state

    def _take_slot(self, state: _Host, abort: threading.Event) -> bool:
        while not abort.is_set():
            if state.slots.acquire(timeout=SLOT_POLL):
                return True
        return False

    def try_enter(self, host: str) -> float | None:
        """`enter` without blocking, for the multiplexer: None when every slot of
        `host` is taken (try again after a `leave`); else a slot is held and the
        return value is the start time to pass to `turn_wait`."""
        state = self._state(host)
        if not state.slots.acquire(blocking=False):
            return None
        return self._reserve(state)

    def turn_wait(self, host: str, start: float) -> float:
        """Seconds until a request given `start` by `try_enter` may go (<= 0: now).
        Asked again when it runs out: a 429 that came meanwhile pushes it back."""
        state = self._state(host)
        return max(start, state.not_before) - self._clock()

    def _reserve(self, state: _Host) -> float:
        if not self.interval and state.not_before <= self._clock():
            return 0.0  # no --rate and no pause: nothing to wait for, or to reserve
        with self._lock:
            start = max(self._clock(), state.next_start, state.not_before)
            # Reserving the start now spaces the requests of concurrent workers
            # evenly instead of letting them all wake at the same instant.
            if self.interval:
                state.next_start = start + self.interval
            return start

    def _wait_turn(self, state: _Host, abort: threading.Event) -> bool:
        start = self._reserve(state)
        while True:
            with self._lock:
                # A 429 that arrived while this worker waited pushes it back too.
                delay = max(start, state.not_before) - self._clock()
            if delay <= 0:
                return True
            if abort.wait(delay):
                return False
