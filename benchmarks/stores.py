"""State-store benchmark: start-up time and the cost of recording one product.

For each store and each size (10k, 100k, 1M recorded products by default) a fresh
child process builds the state, then a second child measures:

- start-up: opening the store and asking what a run asks first (completed count,
  pending count, the first claim), with its peak memory;
- record cost: recording products one at a time and making each durable (record
  plus flush), the median of many, which is what a kill -9 can cost at most.

The JSON store rewrites its files on every flush, so its record cost grows with
the catalog; markers and sqlite should stay flat. Run:

    .venv/bin/python benchmarks/stores.py                 # all stores, 10k..1M
    .venv/bin/python benchmarks/stores.py --sizes 10000 100000 --stores sqlite

The state is built under --dir (default: a folder in /dev/shm when it exists, so
the numbers measure the stores and not the disk; pass a disk folder to include
fsync costs). Results are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgfetch.backends import backend_names, open_store
from imgfetch.catalog import product_id

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
PENDING = 1_000  # products left pending beside the recorded ones
BATCH = 5_000


def _key(record: dict) -> str:
    return product_id(record, None)


def _entry(pid: str) -> dict[str, list[str]]:
    return {
        "main": [f"images/{pid}/main_{n}.jpg" for n in (1, 2, 3)],
        "sku": [f"images/{pid}/sku_1.jpg"],
        "qc": [f"images/{pid}/qc_1.jpg", f"images/{pid}/qc_2.jpg"],
    }


def build(name: str, data: Path, size: int) -> None:
    """Record `size` products (and leave PENDING more pending) through the store."""
    store = open_store(name, data)
    store.open(_key)
    ids = [f"p{n:08d}" for n in range(size + PENDING)]
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        store.add_pending([(pid, {"id": pid, "title": pid}) for pid in chunk])
    store.flush()
    for start in range(0, size, BATCH):
        chunk = ids[start : min(start + BATCH, size)]
        store.record_many([(pid, _entry(pid), []) for pid in chunk])
        store.flush()
    store.close()


def measure(name: str, data: Path, records: int) -> dict[str, float]:
    """Start-up time, then the median cost of one durable record."""
    began = time.perf_counter()
    store = open_store(name, data)
    store.open(_key)
    store.completed_count()
    store.pending_count()
    store.claim(64)
    startup = time.perf_counter() - began
    memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    costs = []
    pending = [pid for pid, _ in store.claim(records)]
    for pid in pending:
        began = time.perf_counter()
        store.record_product(pid, _entry(pid), [])
        store.flush()
        costs.append(time.perf_counter() - began)
    store.close()
    return {
        "startup_s": startup,
        "startup_peak_mb": memory,
        "record_ms": statistics.median(costs) * 1000,
        "records": len(costs),
    }


def _child(args: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.splitlines()[-1])


def run(stores: list[str], sizes: list[int], root: Path) -> list[dict]:
    rows = []
    for size in sizes:
        for name in stores:
            data = root / f"{name}-{size}"
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            began = time.perf_counter()
            _child(["--child-build", name, str(data), str(size)])
            built = time.perf_counter() - began
            # A JSON flush of a million products takes seconds: fewer samples.
            records = 20 if name == "json" and size >= 100_000 else 200
            result = _child(["--child-measure", name, str(data), str(records)])
            result.update(store=name, size=size, build_s=built)
            rows.append(result)
            print(_row(result), file=sys.stderr, flush=True)
            shutil.rmtree(data, ignore_errors=True)
    return rows


def _row(r: dict) -> str:
    return (
        f"| {r['store']} | {r['size']:,} | {r['startup_s']:.3f} | "
        f"{r['startup_peak_mb']:.0f} | {r['record_ms']:.3f} | {r['records']} |"
    )


def report(rows: list[dict], root: Path) -> str:
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; "
        f"state in {root}",
        "",
        "| store | recorded products | start-up (s) | start-up peak RSS (MB) | "
        "record + flush, median (ms) | samples |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child-build":
        build(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
        print("{}")
        return
    if len(sys.argv) == 5 and sys.argv[1] == "--child-measure":
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=list(backend_names()))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES))
    shm = Path("/dev/shm")
    parser.add_argument("--dir", type=Path, default=shm if shm.is_dir() else None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="imgfetch-bench-", dir=args.dir))
    try:
        print(report(run(args.stores, args.sizes, root), root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
