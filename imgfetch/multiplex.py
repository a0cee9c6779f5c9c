"""Many image downloads at once on one thread, over libcurl's multi interface.

Each download is `Fetcher.steps`, a generator that yields what it waits on: a
request, a host's turn, a pause before a retry. The multiplexer keeps all of them
going from the thread that calls `pump` (the engine's main thread): requests run
together in one libcurl multi handle, turns and pauses are timers, and a download
waiting for a host's connection slot queues until one is free. Nothing blocks
except the wait for the next event, so no worker thread is needed, and Python's
GIL is not passed around once per chunk (#6: that cost more than the transfers).

libcurl is driven through its socket interface: it says which sockets to watch
and when its next timer runs out, one poll waits for all of them, and libcurl is
called for the sockets that are ready only. `multi.perform` would visit every
transfer at each wake, and a request could only be sent by such a visit.

Saving a body (creating its file, writing, renaming) is the one step that can
block on the disk: a few I/O threads do it, and each result wakes the loop. On a
slow disk that is where 32 downloads would otherwise wait for one file at a time.
A download being saved holds no slot: `capacity` counts the downloads that are
not saving, and the next one starts (from `source`) as soon as a body is in, not
once its file is written. That gap, a few milliseconds per image, cost about 2%
of the rate with 100 ms responses (#6). Up to `capacity` more downloads may be
saving at once, so at most twice `capacity` bodies are held in memory.

`abort` ends every download at once, a request in the middle of its body
included: its handle is taken out of the multi and its temporary file removed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

import pycurl

from .exchange import Exchange, Request
from .fetch import Aborted, Enter, Fetcher, Offload, Pause, SavedImage, Steps

IO_THREAD_PREFIX = "imgfetch-io"
_IO_THREADS = 4  # file system calls at once: enough to hide a disk's latency
# Seconds `abort` waits for files being saved: a download is never resumed while
# an I/O thread still works on its file.
_IO_WAIT_AT_ABORT = 0.25

# What a finished download gives back: the image, or the exception it ended with
# (ImageFailed, Aborted, OSError, or a bug).
Result = SavedImage | BaseException
# What a source hands out to start: (key, url, folder, stem), as `add` takes them.
Job = tuple[Hashable, str, Path, str]


@dataclass(eq=False, slots=True)
class _Download:
    key: Hashable
    steps: Steps
    exchange: Exchange | None = None
    # While waiting for its turn: the host whose slot it holds, and its start.
    turn: tuple[str, float] | None = None


@dataclass(order=True, slots=True)
class _Timer:
    when: float
    seq: int
    download: _Download = field(compare=False)


class Multiplexer:
    """Runs up to `capacity` downloads together; see the module doc.

    `source`, when given, is asked for the next download whenever there is room,
    until it returns None (it is asked again later).
    """

    def __init__(
        self,
        fetcher: Fetcher,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
        source: Callable[[], Job | None] | None = None,
    ) -> None:
        self.fetcher = fetcher
        self.capacity = capacity
        self.clock = clock
        self.source = source
        self.active = 0  # downloads added and not yet returned by `pump`
        self._saving = 0  # of those, the ones whose file an I/O thread writes
        self._client = fetcher.client
        self._gate = fetcher.gate
        self._multi = pycurl.CurlMulti()
        # What libcurl asked for: the sockets to watch (fd -> poll events) and
        # when its next timer runs out (None: no timer).
        self._poller = select.poll()
        self._watched: dict[int, int] = {}
        self._curl_due: float | None = None
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._requests: dict[pycurl.Curl, _Download] = {}
        # Downloads to resume, with the reply or error for the step they yielded.
        self._ready: deque[tuple[_Download, object, BaseException | None]] = deque()
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._queued: dict[str, deque[_Download]] = {}  # host -> waiting for a slot
        self._done: list[tuple[Hashable, Result]] = []
        self._io = _IoThreads(_IO_THREADS)
        self._poller.register(self._io.wake, select.POLLIN)
        self._aborted = False

    def free(self) -> int:
        """How many more downloads `add` may start now."""
        transfers = self.active - self._saving
        return min(self.capacity - transfers, 2 * self.capacity - self.active)

    def add(self, key: Hashable, url: str, folder: Path, stem: str) -> None:
        """Start downloading `url`; `pump` returns its result under `key`."""
        download = _Download(key, self.fetcher.steps(url, folder, stem))
        self.active += 1
        self._ready.append((download, None, None))

    def pump(self, timeout: float) -> list[tuple[Hashable, Result]]:
        """Move every download on; wait up to `timeout` seconds for one to end.

        Returns the downloads that ended (possibly none, when the time ran out).
        """
        deadline = self.clock() + timeout
        while True:
            self._advance()
            if self._done or not self.active:
                done, self._done = self._done, []
                return done
            left = deadline - self.clock()
            if left <= 0:
                return []
            self._wait(left)

    def abort(self) -> list[tuple[Hashable, Result]]:
        """End every download now; returns them all, each with what it ended
        with: Aborted, or an image whose file was being saved."""
        self._aborted = True
        for curl, download in list(self._requests.items()):
            self._multi.remove_handle(curl)
            self._end_request(download, curl, None, Aborted())
        self._requests.clear()
        for timer in self._timers:
            self._ready.append((timer.download, None, self._stop(timer.download)))
        self._timers.clear()
        for waiting in self._queued.values():
            for download in waiting:
                self._ready.append((download, None, Aborted()))
        self._queued.clear()
        self._collect_saved(wait=_IO_WAIT_AT_ABORT)
        self._advance()
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Abort what is left and let go of libcurl's multi handle."""
        self.abort()
        self._io.close()
        self._multi.close()

    # -- moving downloads on ----------------------------------------------------

    def _advance(self) -> None:
        while True:
            self._refill()
            while self._ready:
                self._resume(*self._ready.popleft())
            if self._requests:
                self._run_curl_timer()
                self._read_finished()
            if self._timers:
                self._fire_timers()
            if self._queued:
                self._admit_queued()
            if self._io.busy:
                self._collect_saved()
            if not self._ready:
                self._refill()
            if not self._ready:
                return

    def _refill(self) -> None:
        if self.source is None or self._aborted:
            return
        while self.free() > 0:
            job = self.source()
            if job is None:
                return
            self.add(*job)

    def _collect_saved(self, wait: float = 0.0) -> None:
        for download, reply, error in self._io.collect(wait):
            self._saving -= 1
            self._ready.append((download, reply, error))

    def _resume(
        self, download: _Download, reply: object, error: BaseException | None
    ) -> None:
        steps = download.steps
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
            while self._aborted:  # no new step starts once aborted
                step = steps.throw(Aborted())
        except StopIteration as finished:
            self._end(download, finished.value)
            return
        except Exception as exc:  # noqa: BLE001 - the download's own outcome
            self._end(download, exc)
            return
        if isinstance(step, Request):
            self._start_request(download, step)
        elif isinstance(step, Enter):
            self._enter(download, step.host)
        elif isinstance(step, Offload):
            self._saving += 1
            self._io.submit(download, step.call)
        else:
            assert isinstance(step, Pause)
            self._after(download, step.seconds)

    def _end(self, download: _Download, result: Result) -> None:
        self.active -= 1
        self._done.append((download.key, result))

    # -- requests -----------------------------------------------------------------

    def _start_request(self, download: _Download, request: Request) -> None:
        handle = self._client.pooled()
        try:
            download.exchange = self._client.prepare(handle, request)
            self._multi.add_handle(handle.curl)
            # Sent now (its timer is due at once), not after the rest of the
            # burst it came in: 64 answers that arrive together take a few
            # milliseconds to go through, and a request waiting for all of them
            # cost 1.5% of the rate with 100 ms answers (#6).
            self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        except Exception as exc:  # noqa: BLE001 - a bad URL fails its download
            request.sink.close()
            self._client.release(handle)
            self._ready.append((download, None, exc))
            return
        self._requests[handle.curl] = download

    def _on_socket(self, what: int, fd: int, _multi: object, _data: object) -> None:
        # Called by libcurl from inside its own calls: no exception may leave.
        if what == pycurl.POLL_REMOVE:
            if self._watched.pop(fd, None) is not None:
                self._poller.unregister(fd)
            return
        events = (select.POLLIN if what & pycurl.POLL_IN else 0) | (
            select.POLLOUT if what & pycurl.POLL_OUT else 0
        )
        if fd in self._watched:
            self._poller.modify(fd, events)
        else:
            self._poller.register(fd, events)
        self._watched[fd] = events

    def _on_timer(self, milliseconds: int) -> None:
        self._curl_due = (
            None if milliseconds < 0 else self.clock() + milliseconds / 1000
        )

    def _run_curl_timer(self) -> None:
        due = self._curl_due
        if due is not None and due <= self.clock():
            self._curl_due = None
            self._multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)

    def _read_finished(self) -> None:
        multi = self._multi
        while True:
            left, succeeded, failed = multi.info_read()
            for curl in succeeded:
                self._finish_request(curl, None)
            for curl, code, message in failed:
                self._finish_request(curl, (code, message))
            if not left:
                return

    def _finish_request(self, curl: pycurl.Curl, error: tuple[int, str] | None) -> None:
        download = self._requests.pop(curl)
        self._multi.remove_handle(curl)
        self._end_request(download, curl, error, None)

    def _end_request(
        self,
        download: _Download,
        curl: pycurl.Curl,
        error: tuple[int, str] | None,
        stopped: BaseException | None,
    ) -> None:
        exchange = download.exchange
        assert exchange is not None
        download.exchange = None
        try:
            if stopped is not None:
                exchange.body.sink.close()
                raise stopped
            answer = self._client.conclude(exchange, error)
        except Exception as exc:  # noqa: BLE001 - thrown into the download
            self._ready.append((download, None, exc))
        else:
            self._ready.append((download, answer, None))
        finally:
            self._client.release(exchange.handle)

    def _wait(self, limit: float) -> None:
        """Wait up to `limit` seconds for a socket, a timer or a saved file, and
        hand libcurl the sockets that are ready."""
        timeout = limit
        if self._timers:
            timeout = min(timeout, self._timers[0].when - self.clock())
        if self._curl_due is not None:
            timeout = min(timeout, self._curl_due - self.clock())
        if timeout <= 0:
            return
        wake, act = self._io.wake, self._multi.socket_action
        for fd, events in self._poller.poll(math.ceil(timeout * 1000)):
            if fd == wake:
                continue  # a file was saved: collected by _advance
            act(fd, _curl_events(events))

    # -- a host's slots and turns, pauses -----------------------------------------

    def _enter(self, download: _Download, host: str) -> None:
        start = self._gate.try_enter(host)
        if start is None:
            self._queued.setdefault(host, deque()).append(download)
        else:
            self._take_turn(download, host, start)

    def _take_turn(self, download: _Download, host: str, start: float) -> None:
        wait = self._gate.turn_wait(host, start)
        if wait <= 0:
            download.turn = None
            self._ready.append((download, None, None))
        else:
            download.turn = (host, start)
            self._after(download, wait)

    def _after(self, download: _Download, seconds: float) -> None:
        timer = _Timer(self.clock() + seconds, next(self._seq), download)
        heapq.heappush(self._timers, timer)

    def _fire_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0].when <= now:
            download = heapq.heappop(self._timers).download
            if download.turn is not None:
                self._take_turn(download, *download.turn)  # asked again: see turn_wait
            else:
                self._ready.append((download, None, None))

    def _admit_queued(self) -> None:
        for host, waiting in list(self._queued.items()):
            while waiting:
                start = self._gate.try_enter(host)
                if start is None:
                    break
                self._take_turn(waiting.popleft(), host, start)
            if not waiting:
                del self._queued[host]

    def _stop(self, download: _Download) -> BaseException:
        # One waiting for its turn holds a slot it never got to use.
        if download.turn is not None:
            self._gate.leave(download.turn[0])
            download.turn = None
        return Aborted()


def _curl_events(events: int) -> int:
    """poll's events on a socket as libcurl's bits (a hang-up reads as input:
    libcurl then sees the end of the connection)."""
    bits = 0
    if events & (select.POLLIN | select.POLLPRI | select.POLLHUP):
        bits |= pycurl.CSELECT_IN
    if events & select.POLLOUT:
        bits |= pycurl.CSELECT_OUT
    if events & (select.POLLERR | select.POLLNVAL):
        bits |= pycurl.CSELECT_ERR
    return bits


def _wait_readable(fd: int, timeout: float) -> None:
    """Wait until `fd` is readable, or `timeout` seconds (poll, not select:
    select refuses descriptors past 1023, which 512 workers can reach)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poller.poll(math.ceil(timeout * 1000))


class _IoThreads:
    """A few daemon threads that run file system calls for the loop.

    Daemon threads, named imgfetch-*: one stuck on a dead disk must not keep the
    process from exiting once the state is saved (see cli.entry).
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.busy = 0  # calls submitted and not collected; the loop's thread only
        self._calls: queue.SimpleQueue[tuple[_Download, Callable[[], object]] | None]
        self._calls = queue.SimpleQueue()
        self._finished: deque[tuple[_Download, object, BaseException | None]] = deque()
        self.wake, self._wake_w = os.pipe()
        os.set_blocking(self.wake, False)
        os.set_blocking(self._wake_w, False)
        self._started: list[threading.Thread] = []

    def submit(self, download: _Download, call: Callable[[], object]) -> None:
        if len(self._started) < self.threads and self.busy >= len(self._started):
            thread = threading.Thread(
                target=self._work,
                name=f"{IO_THREAD_PREFIX}-{len(self._started)}",
                daemon=True,
            )
            thread.start()
            self._started.append(thread)
        self.busy += 1
        self._calls.put((download, call))

    def collect(
        self, wait: float = 0.0
    ) -> list[tuple[_Download, object, BaseException | None]]:
        """The calls that finished, after waiting up to `wait` seconds for all."""
        deadline = time.monotonic() + wait
        while len(self._finished) < self.busy:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            _wait_readable(self.wake, left)
            self._drain()
        self._drain()
        done = []
        while self._finished:
            done.append(self._finished.popleft())
        self.busy -= len(done)
        return done

    def close(self) -> None:
        for _ in self._started:
            self._calls.put(None)
        for thread in self._started:
            thread.join(timeout=0.1)
        if not any(thread.is_alive() for thread in self._started):
            # Only then: a stuck thread would write to whatever reuses the number.
            os.close(self.wake)
            os.close(self._wake_w)

    def _drain(self) -> None:
        try:
            while os.read(self.wake, 4096):
                pass
        except BlockingIOError:
            pass

    def _work(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            download, call = item
            try:
                self._finished.append((download, call(), None))
            except Exception as exc:  # noqa: BLE001 - handed to the download
                self._finished.append((download, None, exc))
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: the loop is awake anyway
