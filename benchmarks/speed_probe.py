"""Run `imgfetch` in this process with timers around its persistence steps.

    python benchmarks/speed_probe.py TIMINGS.json -- download catalog.jsonl ...

Behaves like the `imgfetch` command (same signal handling, same exit code) and
writes, when the command ends, a JSON object of monotonic timestamps and summed
durations: the catalog read, the planning step (recording the catalog as pending),
when the engine started, every save (`Saver._write`, which syncs image folders
and writes the store, on the save thread or at the end on the engine's), the
engine thread's own part of saving (`Saver.maybe` and `Saver.now`), each store
call, when the shutdown began, and the images done by then. The benchmark reads
the persistence share of a run from it.

Only measurement is patched in; if a hook point was renamed, the probe says so in
`missing` and the numbers it would have given are absent, nothing else changes.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from imgfetch.signals import catch_early

# Store calls that write or read state while the engine runs, and close (the
# JSON store rewrites its pending file there when a save left it stale).
STORE_CALLS = ("add_pending", "record_image", "record_many", "flush", "claim", "close")
TIMED_CALLS = ("record_many", "flush")  # few calls: each one is kept with its time
STARTED_ENV = "SPEED_PROBE_STARTED"  # a file to create when the engine starts


class Timings:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {
            "launched": time.monotonic(),
            "flushes": [],  # [start, duration] of every Saver._write
            # [start, duration] of the engine thread's own part of saving: deciding,
            # starting a save, taking in one that ended (Saver.maybe), and the
            # saves made on that thread (Saver.now)
            "saver_main": [],
            "store": dict.fromkeys(STORE_CALLS, 0.0),
            "store_calls": dict.fromkeys(STORE_CALLS, 0),
            "store_writes": [],  # [start, duration] of each record_many and flush
            "missing": [],
        }

    def wrap(
        self, owner: object, name: str, record: Callable[[float, float], None]
    ) -> None:
        original = getattr(owner, name, None)
        if original is None:
            self.data["missing"].append(f"{getattr(owner, '__name__', owner)}.{name}")
            return

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                record(began, time.monotonic() - began)

        setattr(owner, name, timed)

    def span(self, key: str) -> Callable[[float, float], None]:
        def record(began: float, took: float) -> None:
            self.data[f"{key}_at"] = began
            self.data[key] = self.data.get(key, 0.0) + took

        return record

    def store_call(self, name: str) -> Callable[[float, float], None]:
        def record(began: float, took: float) -> None:
            self.data["store"][name] += took
            self.data["store_calls"][name] += 1
            if name in TIMED_CALLS:
                self.data["store_writes"].append([began, took])

        return record

    def flush(self, began: float, took: float) -> None:
        self.data["flushes"].append([began, took])

    def saver_main(self, began: float, took: float) -> None:
        self.data["saver_main"].append([began, took])


def install(timings: Timings) -> None:
    from imgfetch import engine, runner, saving

    timings.wrap(runner, "read_catalog", timings.span("catalog_read"))
    timings.wrap(runner, "_plan", timings.span("plan"))
    timings.wrap(saving.Saver, "_write", timings.flush)
    timings.wrap(saving.Saver, "maybe", timings.saver_main)
    timings.wrap(saving.Saver, "now", timings.saver_main)
    timings.wrap(engine.Engine, "_shutdown", timings.span("shutdown"))
    _wrap_engine_start(timings, engine)
    _wrap_store(timings, runner)


def _wrap_engine_start(timings: Timings, engine: Any) -> None:
    original = getattr(engine.Engine, "run", None)
    original_shutdown = getattr(engine.Engine, "_shutdown", None)
    if original is None or original_shutdown is None:
        timings.data["missing"].append("Engine.run")
        return

    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        timings.data["engine_start"] = time.monotonic()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        timings.data["startup_peak_mb"] = usage.ru_maxrss / 1024
        timings.data["startup_cpu"] = usage.ru_utime + usage.ru_stime
        started = os.environ.get(STARTED_ENV)
        if started:
            open(started, "w").close()  # tells the benchmark the run has begun
        try:
            return original(self, *args, **kwargs)
        finally:
            timings.data["engine_end"] = time.monotonic()
            timings.data["images_total"] = self.tally.images

    def shutdown(self: Any) -> None:
        # How far the run got when the signal was acted on.
        timings.data["images_at_signal"] = self.tally.images
        timings.data["signal_seen"] = time.monotonic()
        original_shutdown(self)

    engine.Engine.run = run
    engine.Engine._shutdown = shutdown


def _wrap_store(timings: Timings, runner: Any) -> None:
    original = getattr(runner, "open_store", None)
    if original is None:
        timings.data["missing"].append("runner.open_store")
        return

    def open_store(*args: Any, **kwargs: Any) -> Any:
        store = original(*args, **kwargs)
        for name in STORE_CALLS:
            # On the instance: the class is shared with export, migrate and tests.
            timings.wrap(store, name, timings.store_call(name))
        return store

    runner.open_store = open_store


def main() -> None:
    catch_early()
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.exit(__doc__)
    out, argv = sys.argv[1], sys.argv[3:]
    timings = Timings()
    from imgfetch import cli

    install(timings)
    code = cli.main(argv)
    timings.data["ended"] = time.monotonic()
    with open(out, "w") as sink:
        json.dump(timings.data, sink)
    sys.stdout.flush()
    sys.stderr.flush()
    # Like the real entry point: a thread stuck on a dead disk must not keep us
    # alive.
    os._exit(code)


if __name__ == "__main__":
    main()
