"""Scenario 3: large catalogs through each state store.

Downloading a million products' images would take hours, so a run is cut in two:

- start-up: `imgfetch download` on the whole catalog (1M products of 6 image URLs
  each, JSON Lines), from launch until the engine starts downloading, with the
  catalog read and the planning step (recording every product as pending) timed
  separately, and the peak memory up to then;
- the run: it then downloads from nginx (loopback, no delay) for a fixed time and
  gets SIGINT. The share of that time spent saving state (`Saver._write`:
  syncing image folders and writing the store, mostly on the save thread while
  downloads go on), recording images, and claiming work is the persistence
  share; beside it, the share the engine thread itself spent on state (what the
  downloads waited for). The final save after the signal, the time to exit and
  the peak memory of the whole process follow.

The timings come from benchmarks/speed_probe.py, which runs imgfetch in-process
with timers around those calls. A last table measures how fast products with no
image left to fetch go through (what a resume of a nearly finished catalog does).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from speed_report import table
from speed_server import Nginx
from speed_tools import CATEGORIES, ToolError, start, wait_measured

HERE = Path(__file__).resolve().parent
PROBE = HERE / "speed_probe.py"
STARTED_ENV = "SPEED_PROBE_STARTED"
CATALOG_WORKERS = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scenario 3 (--catalog)")
    group.add_argument(
        "--catalog-products",
        type=int,
        nargs="+",
        default=[1_000_000],
        help="catalog sizes, each through every store",
    )
    group.add_argument(
        "--catalog-stores", nargs="+", default=["json", "markers", "sqlite"]
    )
    group.add_argument(
        "--catalog-json-products",
        type=int,
        default=100_000,
        help="an extra json row at this size (the json target is stated for it); "
        "0 for none",
    )
    group.add_argument("--catalog-run-seconds", type=float, default=20.0)
    group.add_argument(
        "--catalog-startup-limit",
        type=float,
        default=300.0,
        help="seconds a start-up may take before it is interrupted and reported",
    )
    group.add_argument("--empty-products", type=int, default=20_000)


def write_catalog(path: Path, products: int, url_of: Any, images: bool = True) -> None:
    """JSON Lines, streamed: a million products never sit in this process."""
    with path.open("w") as out:
        for number in range(products):
            pid = f"c{number:07d}"
            record: dict[str, object] = {"id": pid, "title": f"product {number}"}
            slot = 0
            for field, count in CATEGORIES:
                links = []
                for _ in range(count if images else 0):
                    links.append(url_of(f"{pid}-{slot}{number % 10}"))
                    slot += 1
                record[field] = links
            out.write(json.dumps(record, separators=(",", ":")) + "\n")


def probe_command(catalog: Path, out: Path, store: str, timings: Path) -> list[str]:
    return [
        sys.executable, str(PROBE), str(timings), "--",
        "download", str(catalog), "--data-dir", str(out),
        "--workers", str(CATALOG_WORKERS), "--per-host", str(CATALOG_WORKERS),
        "--progress", "none", "--lang", "en", "--backend", store,
    ]  # fmt: skip


def measure(
    args: argparse.Namespace, catalog: Path, store: str, size: int, root: Path
) -> dict[str, Any]:
    """One start-up + timed run + SIGINT of imgfetch with `store`."""
    out = root / f"data-{store}-{size}"
    shutil.rmtree(out, ignore_errors=True)
    timings, started = root / "timings.json", root / "started"
    timings.unlink(missing_ok=True)
    started.unlink(missing_ok=True)
    os.environ[STARTED_ENV] = str(started)
    try:
        process, began = start(
            probe_command(catalog, out, store, timings), root / "catalog.log"
        )
    finally:
        del os.environ[STARTED_ENV]
    deadline = began + args.catalog_startup_limit
    while not started.exists() and process.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if process.poll() is not None:
        raise ToolError(f"imgfetch ({store}, {size}) ended early; see {root}")
    run_ok = started.exists()
    if run_ok:
        time.sleep(args.catalog_run_seconds)
    sent = time.monotonic()
    process.send_signal(2)
    done = wait_measured(process, began)
    exited = time.monotonic() - sent
    data: dict[str, Any] = json.loads(timings.read_text()) if timings.exists() else {}
    data.update(
        backend=store, size=size, began=began, sent=sent, exit_s=exited,
        peak_mb=done.peak_mb, cpu=done.cpu, exit_code=done.exit_code,
        started=run_ok, state_mb=_state_mb(out),
    )  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    return data


def _state_mb(data_dir: Path) -> float:
    """Size of everything in the data directory but the images."""
    total = 0
    for folder, dirs, files in os.walk(data_dir):
        if Path(folder) == data_dir and "images" in dirs:
            dirs.remove("images")
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total / 1e6


def _row(d: dict[str, Any], limit: float) -> list[object]:
    def seconds(key: str) -> str:
        return f"{d[key]:.1f}" if key in d else "n/a"

    size, peak = f"{d['size']:,}", f"{d['peak_mb']:,.0f}"
    if not d["started"]:
        interrupted = f"> {limit:g} (interrupted)"
        return [d["backend"], size, interrupted, seconds("catalog_read"),
                seconds("plan"), *["-"] * 9, peak, f"{d['exit_s']:.1f}",
                f"{d['state_mb']:,.0f}"]  # fmt: skip
    start: float = d["engine_start"]
    end: float = d.get("signal_seen", d.get("engine_end", d["sent"]))
    phase = max(end - start, 1e-9)

    def during(spans: list[list[float]]) -> list[float]:
        return [took for at, took in spans if start <= at < end]

    saves = during(d["flushes"])
    writes = sum(during(d.get("store_writes", [])))
    final = sum(took for at, took in d["flushes"] if at >= end)
    final += d["store"].get("close", 0.0)
    record_image, claim = d["store"]["record_image"], d["store"]["claim"]
    share = (sum(saves) + record_image + claim) / phase
    # What the downloads waited for: the engine thread's part of saving.
    blocked = (sum(during(d.get("saver_main", []))) + record_image + claim) / phase
    rate = d.get("images_at_signal", d.get("images_total", 0)) / phase
    return [
        d["backend"],
        size,
        f"{start - d['began']:.1f}",
        seconds("catalog_read"),
        seconds("plan"),
        f"{d['startup_peak_mb']:,.0f}",
        f"{rate:,.0f}",
        f"{share:.1%}",
        f"{blocked:.1%}",
        f"{len(saves)}: {sum(saves):.2f} s ({writes:.2f} s store)",
        f"{record_image:.2f}",
        f"{claim:.2f}",
        f"{max(saves, default=0):.2f}",
        f"{final:.2f}",
        peak,
        f"{d['exit_s']:.1f}",
        f"{d['state_mb']:,.0f}",
    ]


def empty_products(args: argparse.Namespace, root: Path, stores: list[str]) -> str:
    """Products with nothing to download: how fast the engine records them."""
    catalog = root / "empty.jsonl"
    write_catalog(catalog, args.empty_products, None, images=False)
    rows = []
    for store in stores:
        out = root / f"empty-{store}"
        timings = root / "timings-empty.json"
        command = probe_command(catalog, out, store, timings)
        process, began = start(command, root / "empty.log")
        done = wait_measured(process, began)
        data = json.loads(timings.read_text())
        engine = data["engine_end"] - data["engine_start"]
        rows.append([
            store, f"{args.empty_products:,}", f"{done.wall:.1f}", f"{engine:.1f}",
            f"{args.empty_products / engine:,.0f}", f"{done.cpu:.1f}",
        ])  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
    return table(
        [
            "store",
            "products (no images)",
            "wall (s)",
            "engine (s)",
            "products/s",
            "CPU (s)",
        ],
        rows,
    )


def scenario(args: argparse.Namespace, root: Path) -> str:
    from speed import load  # the main script's helper; imported late (no cycle)

    before = load()
    work = root / "catalog"
    work.mkdir()
    cases = [
        (store, size) for size in args.catalog_products for store in args.catalog_stores
    ]
    if args.catalog_json_products and "json" in args.catalog_stores:
        cases.insert(0, ("json", args.catalog_json_products))
    rows = []
    with Nginx(image_size=args.image_size, delay=0.1) as server:
        catalogs: dict[int, Path] = {}
        for store, size in cases:
            if size not in catalogs:
                catalogs[size] = work / f"catalog-{size}.jsonl"
                print(
                    f"scenario 3: writing a {size:,}-product catalog",
                    file=sys.stderr,
                    flush=True,
                )
                write_catalog(catalogs[size], size, lambda n: server.url("i", n))
            print(
                f"scenario 3: {store}, {size:,} products", file=sys.stderr, flush=True
            )
            data = measure(args, catalogs[size], store, size, work)
            rows.append(_row(data, args.catalog_startup_limit))
            print(
                "  " + " | ".join(str(c) for c in rows[-1]), file=sys.stderr, flush=True
            )
            if data.get("missing"):
                print(f"  probe hooks missing: {data['missing']}", file=sys.stderr)
        sizes = {size: catalogs[size].stat().st_size / 1e6 for size in catalogs}
    empty = empty_products(args, work, args.catalog_stores)
    header = [
        "store", "products", "start-up (s)", "catalog read (s)",
        "planning (s)", "peak RSS at start (MB)", "images/s in run",
        "state share of run", "engine thread's share",
        "saves in run: count, time (store part)",
        "record_image (s)", "claim (s)", "longest save (s)",
        "save after SIGINT, close included (s)",
        "peak RSS (MB)", "SIGINT to exit (s)", "state on disk (MB)",
    ]  # fmt: skip
    catalog_sizes = ", ".join(
        f"{n:,} products: {mb:,.0f} MB" for n, mb in sizes.items()
    )
    return "\n".join([
        "## 3. Large catalogs, each store",
        "",
        f"JSON Lines catalogs of products with 6 image URLs each ({catalog_sizes}). "
        "Start-up is from launch until the engine starts (catalog read, then "
        "planning: every product recorded as pending and flushed). The run then "
        f"downloads from nginx (loopback) with {CATALOG_WORKERS} workers for "
        f"{args.catalog_run_seconds:g} s and gets SIGINT. \"state share\" is the "
        "time spent in saves (image folder syncs plus the store's writes; they "
        "run on a thread of their own while downloads go on, and are counted "
        "whole all the same) and in per-image store calls (record_image, and claim, "
        "which hands the engine its next products), over the run's length; a "
        "save's store part is the store's record_many and flush, the rest syncs "
        "image folders. \"engine thread's share\" counts only what the "
        "downloads waited for: the per-image store calls and the engine "
        "thread's own part of saving (deciding, starting and taking in saves). "
        f"Before: {before}; after: {load()}.",
        "",
        table(header, rows),
        "",
        "Products with no image left to fetch (a catalog of products with empty "
        "image lists; what a resume of a mostly finished catalog looks like to "
        "the engine):",
        "",
        empty,
    ])  # fmt: skip
