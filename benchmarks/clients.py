"""The HTTP clients alone, on scenario 1's work: why imgfetch's HTTP is libcurl.

    .venv/bin/python benchmarks/clients.py            # 6,000 images, 32 workers

Every client fetches the same loopback URLs from nginx and writes each body to a
file in memory (/dev/shm when there is one), with nothing else of imgfetch around
it: images per second and CPU seconds per 1,000 images of this process. requests
(and urllib3) come from the test extra; the numbers go to stdout, not RESULTS.md.
"""

from __future__ import annotations

import argparse
import http.client
import queue
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pycurl
import requests
import urllib3
from speed_server import Nginx

Worker = Callable[["queue.SimpleQueue[tuple[int, str] | None]", Path], None]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _save(out: Path, number: int, body: bytes) -> None:
    (out / f"{number}.jpg").write_bytes(body)


def with_requests(todo: queue.SimpleQueue[tuple[int, str] | None], out: Path) -> None:
    session = requests.Session()
    while (item := todo.get()) is not None:
        _save(out, item[0], session.get(item[1], timeout=30).content)


_POOL = urllib3.PoolManager(maxsize=64)


def with_urllib3(todo: queue.SimpleQueue[tuple[int, str] | None], out: Path) -> None:
    while (item := todo.get()) is not None:
        _save(out, item[0], _POOL.request("GET", item[1], timeout=30).data)


def with_http_client(
    todo: queue.SimpleQueue[tuple[int, str] | None], out: Path
) -> None:
    connection: http.client.HTTPConnection | None = None
    while (item := todo.get()) is not None:
        parts = urlsplit(item[1])
        if connection is None:
            connection = http.client.HTTPConnection(parts.netloc, timeout=30)
        connection.request("GET", parts.path)
        _save(out, item[0], connection.getresponse().read())


def with_pycurl(todo: queue.SimpleQueue[tuple[int, str] | None], out: Path) -> None:
    curl = pycurl.Curl()
    curl.setopt(pycurl.NOSIGNAL, 1)
    while (item := todo.get()) is not None:
        chunks: list[bytes] = []
        curl.setopt(pycurl.URL, item[1])
        curl.setopt(pycurl.WRITEFUNCTION, chunks.append)
        curl.perform()
        _save(out, item[0], b"".join(chunks))


def threaded(worker: Worker, urls: list[str], out: Path, workers: int) -> None:
    todo: queue.SimpleQueue[tuple[int, str] | None] = queue.SimpleQueue()
    for item in enumerate(urls):
        todo.put(item)
    for _ in range(workers):
        todo.put(None)
    threads = [
        threading.Thread(target=worker, args=(todo, out)) for _ in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def pycurl_multi(urls: list[str], out: Path, workers: int) -> None:
    """One thread, libcurl's event loop: the floor of Python's cost per image."""
    multi = pycurl.CurlMulti()
    idle = [pycurl.Curl() for _ in range(workers)]
    bodies: dict[pycurl.Curl, tuple[int, list[bytes]]] = {}
    todo = list(enumerate(urls))[::-1]
    while todo or bodies:
        while todo and idle:
            number, url = todo.pop()
            curl, chunks = idle.pop(), []
            curl.setopt(pycurl.URL, url)
            curl.setopt(pycurl.WRITEFUNCTION, chunks.append)
            bodies[curl] = (number, chunks)
            multi.add_handle(curl)
        while multi.perform()[0] == pycurl.E_CALL_MULTI_PERFORM:
            pass
        _queued, done, failed = multi.info_read()
        for curl in done + [entry[0] for entry in failed]:
            number, chunks = bodies.pop(curl)
            multi.remove_handle(curl)
            _save(out, number, b"".join(chunks))
            idle.append(curl)
        if not (done or failed):
            multi.select(1.0)


CLIENTS: dict[str, Callable[[list[str], Path, int], None]] = {
    "requests (threads)": lambda u, o, w: threaded(with_requests, u, o, w),
    "urllib3 (threads)": lambda u, o, w: threaded(with_urllib3, u, o, w),
    "http.client (threads)": lambda u, o, w: threaded(with_http_client, u, o, w),
    "pycurl (threads)": lambda u, o, w: threaded(with_pycurl, u, o, w),
    "pycurl multi (one thread)": pycurl_multi,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6_000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=20_000)
    args = parser.parse_args()
    memory = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(dir=memory if memory.is_dir() else None))
    print(f"{args.images:,} images, {args.workers} workers, files in {root}")
    print(f"{'client':<28} {'images/s':>9} {'CPU s / 1,000':>14}")
    try:
        with Nginx(image_size=args.image_size, delay=0.1) as server:
            urls = [
                server.url("i", f"c{n:06d}{n % 100:02d}") for n in range(args.images)
            ]
            for name, run in CLIENTS.items():
                out = root / name.split()[0]
                out.mkdir()
                cpu, began = _cpu(), time.perf_counter()
                run(urls, out, args.workers)
                wall, cpu = time.perf_counter() - began, _cpu() - cpu
                rate, per_1000 = args.images / wall, cpu / args.images * 1000
                print(f"{name:<28} {rate:>9,.0f} {per_1000:>14.2f}", flush=True)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
