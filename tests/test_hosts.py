"""HostGate: connections per host, request spacing, pauses shared by all workers.

Time-based behaviour runs on a fake clock that advances only when the gate waits
on the abort event, so the exact waits are asserted without sleeping. Concurrency
is checked with real threads and a real local server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from imgfetch.fetch import Aborted, FetchConfig, Fetcher, ImageFailed
from imgfetch.hosts import HostGate, host_key
from imgfetch.testserver import ImageServer


class FakeTime(threading.Event):
    """An abort event whose waits advance a fake clock instead of sleeping."""

    def __init__(self, on_wait: Callable[[float], None] | None = None) -> None:
        super().__init__()
        self.now = 1000.0
        self.waits: list[float] = []
        self.on_wait = on_wait

    def clock(self) -> float:
        return self.now

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "the gate never waits without a bound"
        self.waits.append(round(timeout, 6))
        self.now += timeout
        if self.on_wait is not None:
            self.on_wait(timeout)
        return self.is_set()


def gate_with(time: FakeTime, per_host: int = 4, rate: float = 0.0) -> HostGate:
    return HostGate(per_host, rate, clock=time.clock)


def visit(gate: HostGate, host: str, abort: threading.Event) -> None:
    assert gate.enter(host, abort)
    gate.leave(host)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://img.example/a.jpg", "img.example:443"),
        ("http://img.example/a.jpg", "img.example:80"),
        ("http://IMG.Example:8080/a.jpg", "img.example:8080"),
        ("https://user:pw@img.example/a.jpg", "img.example:443"),  # no credentials
        ("http://127.0.0.1:9/a", "127.0.0.1:9"),
    ],
)
def test_host_key(url: str, key: str) -> None:
    assert host_key(url) == key


# ------------------------------------------------------------------ rate


def test_no_rate_means_no_wait() -> None:
    time = FakeTime()
    gate = gate_with(time)
    for _ in range(5):
        visit(gate, "a:80", time)
    assert time.waits == []


def test_rate_spaces_requests_evenly() -> None:
    # 4 requests per second: starts at 0, 0.25, 0.5, 0.75 s.
    time = FakeTime()
    gate = gate_with(time, rate=4)
    for _ in range(4):
        visit(gate, "a:80", time)
    assert time.waits == [0.25, 0.25, 0.25]
    assert time.now == pytest.approx(1000.75)


def test_rate_is_per_host() -> None:
    time = FakeTime()
    gate = gate_with(time, rate=1)
    visit(gate, "a:80", time)
    visit(gate, "b:80", time)  # another host: no wait
    assert time.waits == []
    visit(gate, "a:80", time)
    assert time.waits == [1.0]


def test_rate_does_not_save_up_a_burst() -> None:
    # After a quiet minute the next request goes at once, and the one after it
    # is spaced again: idle time is not credit for a burst.
    time = FakeTime()
    gate = gate_with(time, rate=2)
    visit(gate, "a:80", time)
    time.now += 60
    visit(gate, "a:80", time)
    visit(gate, "a:80", time)
    assert time.waits == [0.5]


# ----------------------------------------------------------------- pauses


def test_pause_holds_every_worker_of_that_host_only() -> None:
    time = FakeTime()
    gate = gate_with(time)
    gate.pause("slow:443", 3)
    assert gate.paused_for("slow:443") == 3
    visit(gate, "fast:443", time)  # other hosts continue at full speed
    assert time.waits == []
    visit(gate, "slow:443", time)
    assert time.waits == [3.0]
    visit(gate, "slow:443", time)  # the pause is over for everyone
    assert time.waits == [3.0]
    assert gate.pauses("slow:443") == 1


def test_pause_never_shortens_a_longer_one() -> None:
    time = FakeTime()
    gate = gate_with(time)
    gate.pause("h:80", 10)
    gate.pause("h:80", 2)
    assert gate.paused_for("h:80") == 10


def test_pause_arriving_during_a_wait_extends_it() -> None:
    # Another worker's 429 lands while this one waits out the first pause.
    gate: HostGate

    def another_429(_waited: float) -> None:
        if len(time.waits) == 1:
            gate.pause("h:80", 5)

    time = FakeTime(on_wait=another_429)
    gate = gate_with(time)
    gate.pause("h:80", 2)
    visit(gate, "h:80", time)
    assert time.waits == [2.0, 5.0]


def test_rate_and_pause_combine() -> None:
    time = FakeTime()
    gate = gate_with(time, rate=1)
    visit(gate, "h:80", time)  # t=0; next start allowed at t=1
    gate.pause("h:80", 4)  # until t=4
    visit(gate, "h:80", time)
    visit(gate, "h:80", time)  # spaced after the pause: t=5
    assert time.waits == [4.0, 1.0]


# ------------------------------------------------------------------ abort


def test_abort_during_a_pause_returns_false_and_holds_no_slot() -> None:
    # The engine's abort arrives while the worker waits out a 30 s pause.
    time = FakeTime(on_wait=lambda _waited: time.set())
    gate = gate_with(time, per_host=1)
    gate.pause("h:80", 30)
    assert gate.enter("h:80", time) is False
    assert time.waits == [30.0]
    # The only slot was given back: the next worker gets it.
    time.clear()
    entered = _enter_in_thread(gate, "h:80", time)
    assert entered == [True]


def _enter_in_thread(gate: HostGate, host: str, abort: threading.Event) -> list[bool]:
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(gate.enter(host, abort)))
    worker.start()
    worker.join(timeout=5)
    if worker.is_alive():
        abort.set()  # free the thread before failing
        worker.join(timeout=5)
        pytest.fail("the slot was not given back")
    return result


def test_abort_releases_a_worker_queued_for_a_slot() -> None:
    gate = HostGate(per_host=1)
    holder = threading.Event()
    assert gate.enter("h:80", holder)
    abort = threading.Event()
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(gate.enter("h:80", abort)))
    worker.start()
    abort.set()
    worker.join(timeout=5)
    assert not worker.is_alive(), "a queued worker ignored the abort"
    assert result == [False]
    gate.leave("h:80")
    assert gate.enter("h:80", threading.Event())  # nothing leaked


def test_slots_cap_concurrency_and_are_handed_on() -> None:
    gate = HostGate(per_host=2)
    never = threading.Event()
    assert gate.enter("h:80", never)
    assert gate.enter("h:80", never)
    third_in = threading.Event()

    def third() -> None:
        if gate.enter("h:80", never):
            third_in.set()

    worker = threading.Thread(target=third, daemon=True)
    worker.start()
    # Two slots are taken: the third worker must still be queued.
    assert not third_in.wait(0.3)
    assert gate.enter("other:80", never)  # another host has its own slots
    gate.leave("h:80")
    assert third_in.wait(5)
    worker.join(timeout=5)


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        HostGate(per_host=0)
    with pytest.raises(ValueError):
        HostGate(per_host=1, rate=-1)


# ---------------------------------------------------- with a real server


def _fetch_all(fetcher: Fetcher, urls: list[str], folder: Path) -> None:
    threads = [
        threading.Thread(target=fetcher.fetch, args=(url, folder, f"i{n}"))
        for n, url in enumerate(urls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    fetcher.close()


@pytest.mark.parametrize("per_host", [1, 2])
def test_server_never_sees_more_than_per_host_requests(
    server: ImageServer, tmp_path: Path, per_host: int
) -> None:
    # Eight workers, each request held 0.15 s by the server.
    config = FetchConfig(per_host=per_host, retries=0)
    urls = [server.url(f"ph{n}", delay=0.15) for n in range(8)]
    _fetch_all(Fetcher(config, threading.Event()), urls, tmp_path)
    assert len(list(tmp_path.iterdir())) == 8
    assert 1 <= server.max_concurrency <= per_host


def test_without_a_tight_cap_the_server_sees_parallel_requests(
    server: ImageServer, tmp_path: Path
) -> None:
    # The counterpart of the test above, so it is able to fail: the same load
    # with 8 slots per host does overlap at the server.
    config = FetchConfig(per_host=8, retries=0)
    urls = [server.url(f"pa{n}", delay=0.5) for n in range(8)]
    _fetch_all(Fetcher(config, threading.Event()), urls, tmp_path)
    assert server.max_concurrency > 2


@pytest.mark.parametrize(("code", "retry_after"), [(429, "7"), (429, None), (503, "7")])
def test_a_throttling_answer_pauses_the_host_for_every_worker(
    server: ImageServer, tmp_path: Path, code: int, retry_after: str | None
) -> None:
    # On a fake clock: an image answered 429 (or 503 with Retry-After) gives up
    # at once (no retries), yet the pause it asked for holds back the next image
    # of that host, which is another worker's. Another host is not held back.
    time = FakeTime()
    config = replace(FetchConfig(), retries=0, backoff=2.0, max_retry_wait=30)
    fetcher = Fetcher(config, time, clock=time.clock)
    limited = server.url("limited", fail=f"{code}:9", retry_after=retry_after)
    with pytest.raises(ImageFailed):
        fetcher.fetch(limited, tmp_path, "first")
    assert time.waits == []
    pause = fetcher.gate.paused_for(host_key(limited))
    if retry_after:
        assert pause == 7.0
    else:  # no Retry-After: the backoff's jittered wait, 1 to 2 s
        assert 1.0 <= pause <= 2.0
    other_host = server.url("elsewhere").replace("127.0.0.1", "localhost")
    fetcher.fetch(other_host, tmp_path, "other")
    assert time.waits == []
    fetcher.fetch(server.url("next"), tmp_path, "next")
    assert time.waits == [round(pause, 6)]
    assert server.requests_for(server.url("next")) == 1
    fetcher.close()


def test_a_503_without_retry_after_does_not_pause_the_host(
    server: ImageServer, tmp_path: Path
) -> None:
    # A lone 503 is one object's trouble, not the host asking for mercy.
    time = FakeTime()
    fetcher = Fetcher(replace(FetchConfig(), retries=0), time, clock=time.clock)
    url = server.url("broken", fail="503:9")
    with pytest.raises(ImageFailed):
        fetcher.fetch(url, tmp_path, "first")
    assert fetcher.gate.paused_for(host_key(url)) == 0
    fetcher.close()


def test_a_worker_held_by_a_paused_host_stops_at_once_on_abort(
    server: ImageServer, tmp_path: Path
) -> None:
    # The host asked for a minute's pause; the engine's abort must not wait it out.
    abort = _NoticedEvent()
    fetcher = Fetcher(FetchConfig(max_retry_wait=60), abort)
    url = server.url("held")
    fetcher.gate.pause(host_key(url), 60)
    result: list[BaseException] = []

    def run() -> None:
        try:
            fetcher.fetch(url, tmp_path, "held")
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert abort.waited_on.wait(10), "the worker never waited for the host"
    abort.set()
    worker.join(timeout=5)
    assert not worker.is_alive(), "the paused worker ignored the abort"
    assert [type(e) for e in result] == [Aborted]
    assert server.requests_for(url) == 0
    fetcher.close()


class _NoticedEvent(threading.Event):
    """An abort event that tells when somebody starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited_on = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited_on.set()
        return super().wait(timeout)
