"""The multiplexer: many downloads at once on one thread, against a real server."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from imgfetch.fetch import Aborted, FetchConfig, Fetcher, ImageFailed, SavedImage
from imgfetch.multiplex import Multiplexer, Result
from imgfetch.testserver import ImageServer

pytestmark = pytest.mark.usefixtures("no_proxy")

FAST = FetchConfig(
    connect_timeout=2.0,
    read_timeout=2.0,
    deadline=20.0,
    retries=3,
    backoff=0.01,
    max_retry_wait=0.05,
    per_host=32,
)


def run_all(
    downloads: Multiplexer, urls: dict[Hashable, str], folder: Path
) -> dict[Hashable, Result]:
    """Add every URL (as many at once as there is room for) and pump to the end."""
    waiting = list(urls.items())
    results: dict[Hashable, Result] = {}
    deadline = time.monotonic() + 60
    while waiting or downloads.active:
        assert time.monotonic() < deadline, "the downloads never ended"
        while waiting and downloads.free() > 0:
            key, url = waiting.pop(0)
            downloads.add(key, url, folder, f"main_{key}")
        for key, result in downloads.pump(0.5):
            assert key not in results, "a download ended twice"
            results[key] = result
    return results


def make(config: FetchConfig = FAST, capacity: int = 8) -> Multiplexer:
    return Multiplexer(Fetcher(config, threading.Event()), capacity)


def test_many_downloads_at_once_each_saved_with_its_exact_bytes(
    server: ImageServer, folder: Path
) -> None:
    urls = {n: server.url(f"m{n}", size=3000 + n, delay=0.05) for n in range(40)}
    downloads = make(capacity=16)
    try:
        results = run_all(downloads, urls, folder)
    finally:
        downloads.close()

    assert sorted(results) == sorted(urls)
    for key, url in urls.items():
        saved = results[key]
        assert isinstance(saved, SavedImage), saved
        assert (folder / saved.filename).read_bytes() == server.expected_bytes(url)
    # 16 at once: 40 delayed answers overlapped instead of arriving one by one.
    assert server.max_concurrency > 1


def test_never_more_requests_to_a_host_than_its_slots(
    server: ImageServer, folder: Path
) -> None:
    urls = {n: server.url(f"s{n}", delay=0.05) for n in range(12)}
    downloads = make(replace(FAST, per_host=2), capacity=12)
    try:
        results = run_all(downloads, urls, folder)
    finally:
        downloads.close()

    assert all(isinstance(r, SavedImage) for r in results.values())
    assert server.max_concurrency <= 2


def test_failures_stay_with_their_own_download(
    server: ImageServer, folder: Path
) -> None:
    urls = {
        1: server.url("good"),
        2: server.url("gone", status=404),
        3: server.url("flaky", fail="503:2"),  # two failures, then served
        4: "ftp://127.0.0.1/x.jpg",  # refused before any request
        5: server.url("html", html=1),
    }
    downloads = make()
    try:
        results = run_all(downloads, urls, folder)
    finally:
        downloads.close()

    assert isinstance(results[1], SavedImage)
    assert isinstance(results[3], SavedImage)
    assert server.requests_for(urls[3]) == 3
    for key in (2, 4, 5):
        failed = results[key]
        assert isinstance(failed, ImageFailed), (key, failed)
        assert failed.reason.startswith("permanent:"), failed.reason


def test_abort_ends_every_download_at_once_and_leaves_no_temp_file(
    server: ImageServer, folder: Path
) -> None:
    # Bodies over 1 MiB stream into their temporary file, which abort must remove.
    size = 3 * 1024 * 1024
    urls = {
        n: server.url(f"a{n}", size=size, drip=0.05, fast=1 << 20) for n in range(4)
    }
    urls[9] = server.url("stalled", stall=1)
    downloads = make()
    try:
        for key, url in urls.items():
            downloads.add(key, url, folder, f"main_{key}")
        deadline = time.monotonic() + 20
        while not list(folder.glob(".imgfetch-*.tmp")):
            assert time.monotonic() < deadline, "no body ever started"
            assert downloads.pump(0.05) == []

        started = time.monotonic()
        ended = dict(downloads.abort())
        took = time.monotonic() - started
    finally:
        downloads.close()

    assert sorted(ended) == sorted(urls)
    assert all(isinstance(result, Aborted) for result in ended.values()), ended
    assert downloads.active == 0
    assert took < 5, "abort waited for a transfer"


def test_descriptors_past_1023_are_waited_on(server: ImageServer, folder: Path) -> None:
    # select() refuses descriptors past 1023; 512 workers, each with a connection
    # and a file being saved, get there.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert max(filler) > 1023
        urls = {n: server.url(f"fd{n}", delay=0.05) for n in range(6)}
        downloads = make()
        try:
            results = run_all(downloads, urls, folder)
        finally:
            downloads.close()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    assert all(isinstance(r, SavedImage) for r in results.values()), results


def test_a_file_being_saved_holds_neither_a_transfer_nor_a_host_slot(
    server: ImageServer, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With one transfer and one connection to the host, the second image is
    # fetched while the first one's file is still being written: the next
    # request does not wait on the disk.
    first, second = server.url("slow-disk"), server.url("next")
    release = threading.Event()
    save = Fetcher._save

    def slow_save(self: Fetcher, sink: Any) -> SavedImage:
        if sink.stem == "main_1":
            assert release.wait(20), "never released"
        return save(self, sink)

    monkeypatch.setattr(Fetcher, "_save", slow_save)
    downloads = make(replace(FAST, per_host=1), capacity=1)
    order: list[Hashable] = []
    try:
        downloads.add(1, first, folder, "main_1")
        deadline = time.monotonic() + 20
        while downloads.free() == 0:
            assert time.monotonic() < deadline, "the first transfer never ended"
            assert downloads.pump(0.05) == []
        downloads.add(2, second, folder, "main_2")
        while not order:
            assert time.monotonic() < deadline, "the second image never came"
            order += [key for key, _result in downloads.pump(0.05)]
        release.set()
        while downloads.active:
            assert time.monotonic() < deadline, "the first image never came"
            order += [key for key, _result in downloads.pump(0.05)]
    finally:
        release.set()
        downloads.close()

    assert order == [2, 1]
    assert (folder / "main_1.jpg").read_bytes() == server.expected_bytes(first)
