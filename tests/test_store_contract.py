"""The StateStore contract, written once and run against every registered store.

Each test names one guarantee from `imgfetch/backends/base.py`. The kill tests run
a real writer process and SIGKILL it at a random moment; the seed is in the
assertion message, so a failure can be replayed with `STORE_SEED=<seed>`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgfetch.backends import backend_names, open_store
from imgfetch.backends.base import Failure, StateStore
from imgfetch.catalog import product_id

STORES = backend_names()
HOSTILE_IDS = [
    "商品-١٢٣-é",
    "../../etc/passwd",
    "a/b\\c",
    "CON",
    "nul\x00byte",
    "\u202eright-to-left",
    ".",
    "..",
    " spaced ",
    "x" * 10_000,
    "MiXeD",
    "mixed",
]


def key(record: dict[str, Any]) -> str:
    return product_id(record, None)


def opened(name: str, data_dir: Path) -> StateStore:
    store = open_store(name, data_dir)
    store.open(key)
    return store


def entry(pid: str, images: int = 2) -> dict[str, list[str]]:
    folder = f"images/p{abs(hash(pid)) % 10**8}"
    return {
        "main": [f"{folder}/main_{n}.jpg" for n in range(1, images + 1)],
        "sku": [],
        "qc": [f"{folder}/qc_1.png"],
    }


def record(pid: str) -> dict[str, Any]:
    return {"id": pid, "title": f"t-{pid}", "main_images": [f"http://x/{pid}"]}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(params=STORES)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_open_on_an_empty_directory_writes_nothing(name: str, tmp_path: Path) -> None:
    store = opened(name, tmp_path)
    assert store.completed_count() == 0
    assert store.pending_count() == 0
    assert not store.has_pending()
    assert store.failures() == {}
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_pending_keeps_records_and_order_and_skips_known_ids(
    name: str, tmp_path: Path
) -> None:
    store = opened(name, tmp_path)
    store.add_pending([(str(n), record(str(n))) for n in (3, 1, 2)])
    store.record_product("1", entry("1"), [])
    # Already pending (2) or completed (1): left as they are, not moved or doubled.
    store.add_pending([("2", {"id": "2", "other": True}), ("1", record("1"))])
    store.add_pending([("0", record("0"))])
    store.flush()
    store.close()

    again = opened(name, tmp_path)
    assert again.pending() == [
        ("3", record("3")),
        ("2", record("2")),
        ("0", record("0")),
    ]
    assert again.pending_count() == 3
    assert again.has_pending()
    assert again.is_completed("1") and not again.is_completed("2")


def test_recording_moves_a_product_from_pending_to_completed(
    name: str, tmp_path: Path
) -> None:
    store = opened(name, tmp_path)
    store.add_pending([(str(n), record(str(n))) for n in range(5)])
    fail = Failure("main", 2, "http://x/2", "HTTP 404", 1)
    store.record_product("2", entry("2"), [fail])
    store.record_many([("4", entry("4"), []), ("0", entry("0", 3), [])])
    store.flush()
    store.close()

    again = opened(name, tmp_path)
    assert [pid for pid, _ in again.pending()] == ["1", "3"]
    assert again.completed_count() == 3
    assert again.mapping_entry("0") == entry("0", 3)
    assert again.mapping_entry("1") is None
    assert dict(again.iter_mapping()) == {
        "2": entry("2"),
        "4": entry("4"),
        "0": entry("0", 3),
    }
    assert again.failures() == {"2": [fail]}
    assert again.failure_count() == 1


def test_no_pending_left_after_everything_is_recorded(
    name: str, tmp_path: Path
) -> None:
    store = opened(name, tmp_path)
    store.add_pending([("a", record("a"))])
    store.flush()
    assert store.has_pending()
    store.record_product("a", entry("a"), [])
    store.flush()
    store.close()
    again = opened(name, tmp_path)
    assert not again.has_pending()
    assert again.pending() == []


def test_recording_again_replaces_entry_and_failures(name: str, tmp_path: Path) -> None:
    # This is how --retry-failed completes a product.
    store = opened(name, tmp_path)
    first = [Failure("main", 1, "http://x/1", "timeout", 4), Failure("qc", 1, "u", "r")]
    store.record_product("p", {"main": [], "sku": [], "qc": []}, first)
    store.flush()
    store.record_product("p", entry("p"), [first[1]])
    store.flush()
    store.close()

    again = opened(name, tmp_path)
    assert again.completed_count() == 1
    assert again.mapping_entry("p") == entry("p")
    assert again.failures() == {"p": [first[1]]}
    again.record_product("p", entry("p"), [])
    again.flush()
    again.close()
    assert opened(name, tmp_path).failures() == {}


def test_failures_keep_reason_and_attempts_in_index_order(
    name: str, tmp_path: Path
) -> None:
    store = opened(name, tmp_path)
    failures = [
        Failure("main", 1, "http://x/a", "transient: HTTP 503", 4),
        Failure("main", 3, "http://x/b", "permanent: HTTP 404", 1),
        Failure("sku", 2, "http://x/c", "permanent: not an image (HTML page)", 1),
    ]
    store.record_product("p", entry("p"), failures)
    store.flush()
    store.close()
    assert opened(name, tmp_path).failures() == {"p": failures}


@pytest.mark.parametrize("pid", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_hostile_ids_round_trip_and_stay_inside_the_store(
    name: str, tmp_path: Path, pid: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = opened(name, data)
    store.add_pending([(pid, record(pid)), ("plain", record("plain"))])
    store.record_product(pid, entry(pid), [Failure("main", 1, "http://x", "r")])
    store.flush()
    store.close()

    again = opened(name, data)
    assert again.is_completed(pid)
    assert again.mapping_entry(pid) == entry(pid)
    assert list(again.failures()) == [pid]
    assert again.pending() == [("plain", record("plain"))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_claim_hands_out_each_pending_product_once_in_order(
    name: str, tmp_path: Path
) -> None:
    store = opened(name, tmp_path)
    store.add_pending([(str(n), record(str(n))) for n in range(10)])
    store.record_product("4", entry("4"), [])
    store.flush()
    store.close()

    again = opened(name, tmp_path)
    handed = []
    while batch := again.claim(3):
        assert len(batch) <= 3
        handed.extend(pid for pid, _ in batch)
        again.record_product(batch[0][0], entry(batch[0][0]), [])
    assert handed == [str(n) for n in range(10) if n != 4]
    assert again.claim(3) == []


@pytest.mark.parametrize(
    "pid", [*HOSTILE_IDS, "bad\ud800id"], ids=range(len(HOSTILE_IDS) + 1)
)
def test_claim_hands_out_hostile_ids_and_records_exactly(
    name: str, tmp_path: Path, pid: str
) -> None:
    # A lone surrogate (json.loads makes one from "\ud800") has no UTF-8 form.
    raw = {**record(pid), "note": "\udfff", "n": [1.5, None, True, -0.0]}
    store = opened(name, tmp_path)
    store.add_pending(
        [("first", record("first")), (pid, raw), ("last", record("last"))]
    )
    store.flush()
    store.close()
    again = opened(name, tmp_path)
    assert again.claim(2) == [("first", record("first")), (pid, raw)]
    assert again.claim(2) == [("last", record("last"))]
    assert again.claim(2) == []


def test_threads_recording_at_once_lose_nothing(name: str, tmp_path: Path) -> None:
    store = opened(name, tmp_path)
    ids = [f"t{n}-{i}" for n in range(8) for i in range(40)]
    store.add_pending([(pid, record(pid)) for pid in ids])
    store.flush()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                pid = f"t{n}-{i}"
                store.record_product(pid, entry(pid), [])
                if i % 10 == 0:
                    store.flush()
                    store.completed_count()
                    store.failures()
        except BaseException as exc:  # reported by the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.flush()
    store.close()
    assert errors == []
    again = opened(name, tmp_path)
    assert again.completed_count() == len(ids)
    assert again.pending_count() == 0
    assert dict(again.iter_mapping()) == {pid: entry(pid) for pid in ids}


def test_reading_never_changes_a_file(name: str, tmp_path: Path) -> None:
    store = opened(name, tmp_path)
    store.add_pending([(str(n), record(str(n))) for n in range(6)])
    store.record_product("1", entry("1"), [Failure("sku", 1, "http://x", "r", 2)])
    store.flush()
    store.close()
    before = snapshot(tmp_path)

    reader = opened(name, tmp_path)
    reader.pending()
    list(reader.iter_mapping())
    reader.failures()
    reader.claim(2)
    reader.saved_images("2")
    reader.close()
    after = {k: v for k, v in snapshot(tmp_path).items() if not k.endswith("-shm")}
    assert after == {k: v for k, v in before.items() if not k.endswith("-shm")}


def test_saved_images_are_either_kept_or_not_claimed(name: str, tmp_path: Path) -> None:
    # Per-image stores return what was recorded; the others return nothing and
    # the engine falls back to the files on disk. Either way a completed product
    # has no saved slots left over.
    store = opened(name, tmp_path)
    store.add_pending([("p", record("p"))])
    store.record_image("p", "main", 1, "http://x/1", "images/p/main_1.jpg")
    store.flush()
    slots = store.saved_images("p")
    assert slots in ({}, {("main", 1): slots.get(("main", 1))})
    if slots:
        assert slots[("main", 1)].relpath == "images/p/main_1.jpg"
        assert slots[("main", 1)].url == "http://x/1"
    store.record_product("p", entry("p"), [])
    store.flush()
    assert store.saved_images("p") == {}


def test_owned_paths_cover_every_file_the_store_writes(
    name: str, tmp_path: Path
) -> None:
    store = opened(name, tmp_path)
    store.add_pending([(str(n), record(str(n))) for n in range(3)])
    store.record_product("0", entry("0"), [Failure("main", 1, "u", "r")])
    store.record_image("1", "main", 1, "u", "images/1/main_1.jpg")
    store.flush()
    store.close()
    owned = store.owned_paths(tmp_path)
    assert type(store).present(tmp_path)
    for path in tmp_path.iterdir():
        assert any(path == o or o in path.parents for o in owned), path


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs when there is one: the 100k test checks the stores' logic
    at scale, not the disk (50k durable files take 40 s on a slow disk)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="imgfetch-test-") as folder:
        yield Path(folder)


def test_a_hundred_thousand_products(name: str, scratch: Path) -> None:
    count = 100_000
    ids = [f"p{n:06d}" for n in range(count)]
    tmp_path = scratch
    store = opened(name, tmp_path)
    store.add_pending([(pid, {"id": pid}) for pid in ids])
    store.flush()
    done = ids[: count // 4]
    for start in range(0, len(done), 5000):
        store.record_many(
            [
                (pid, {"main": [f"images/{pid}/main_1.jpg"]}, [])
                for pid in done[start : start + 5000]
            ]
        )
    store.flush()
    store.close()

    again = opened(name, tmp_path)
    assert again.completed_count() == count // 4
    assert again.pending_count() == count - count // 4
    assert again.claim(2) == [
        (ids[count // 4], {"id": ids[count // 4]}),
        (ids[count // 4 + 1], {"id": ids[count // 4 + 1]}),
    ]
    assert again.mapping_entry(ids[123]) == {"main": [f"images/{ids[123]}/main_1.jpg"]}


# -- kill -9 at random points -------------------------------------------------------

_WRITER = r"""
import sys
from imgfetch.backends import open_store
from imgfetch.backends.base import Failure
from imgfetch.catalog import product_id

name, data_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
batch = int(sys.argv[4])  # products per record_many; 1: record_product
store = open_store(name, __import__("pathlib").Path(data_dir))
store.open(lambda r: product_id(r, None))
ids = [f"k{n}" for n in range(count)]
store.add_pending([(pid, {"id": pid, "n": n}) for n, pid in enumerate(ids)])
store.flush()
print("pending", flush=True)
for start in range(0, count, batch):
    done = []
    for n in range(start, min(start + batch, count)):
        pid = ids[n]
        entry = {"main": [f"images/{pid}/main_{i}.jpg" for i in range(1, n % 4 + 2)]}
        failures = []
        if n % 5 == 0:
            failures = [Failure("qc", 1, f"http://x/{pid}", "r", n % 3 + 1)]
        done.append((pid, entry, failures))
    if batch == 1:
        store.record_product(*done[0])
    else:
        store.record_many(done)
    if not store.durable_on_record:
        store.flush()
    for pid, _entry, _failures in done:
        print("recorded", pid, flush=True)
store.close()
print("end", flush=True)
"""


def _expected_entry(n: int) -> dict[str, list[str]]:
    return {"main": [f"images/k{n}/main_{i}.jpg" for i in range(1, n % 4 + 2)]}


# 1: one record_product at a time; 40: record_many, as the engine records (the
# markers store writes a batch of that size with syncs shared by the batch).
@pytest.mark.parametrize("batch", [1, 40])
@pytest.mark.parametrize("round_", range(3))
def test_sigkill_at_a_random_moment_keeps_everything_recorded(
    name: str, tmp_path: Path, round_: int, batch: int
) -> None:
    seed = int(os.environ.get("STORE_SEED", random.randrange(10**9)))
    rng = random.Random(seed)
    count = 400
    stop_after = rng.randrange(1, 150 if batch == 1 else 300)
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, name, str(tmp_path), str(count), str(batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    recorded = []
    for line in child.stdout:
        if line.startswith("recorded"):
            recorded.append(line.split()[1])
            if len(recorded) == stop_after:
                break
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()

    store = opened(name, tmp_path)
    why = f"store {name}, batch {batch}, seed {seed} (replay: STORE_SEED={seed})"
    mapping = dict(store.iter_mapping())
    pending = [pid for pid, _ in store.pending()]
    assert set(recorded) <= set(mapping), why
    assert not set(mapping) & set(pending), why
    assert set(mapping) | set(pending) == {f"k{n}" for n in range(count)}, why
    for pid, value in mapping.items():
        assert value == _expected_entry(int(pid[1:])), why
    for pid, items in store.failures().items():
        n = int(pid[1:])
        assert pid in mapping and n % 5 == 0, why
        assert items == [Failure("qc", 1, f"http://x/{pid}", "r", n % 3 + 1)], why
    for pid, raw in store.pending():
        assert raw == {"id": pid, "n": int(pid[1:])}, why


def test_export_format_is_the_json_stores_own(name: str, tmp_path: Path) -> None:
    from imgfetch.backends.json_store import dump_json
    from imgfetch.transfer import write_spec_files

    data, out, ref = tmp_path / "data", tmp_path / "out", tmp_path / "ref"
    data.mkdir()
    ref.mkdir()
    stores = [opened(name, data), opened("json", ref)]
    for store in stores:
        store.add_pending([(str(n), record(str(n))) for n in range(4)])
        store.record_product("2", entry("2"), [Failure("main", 1, "u", "r", 2)])
        store.record_product("0", entry("0"), [])
        store.flush()
    write_spec_files(stores[0], out)
    for filename in ("image_mapping.json", "pending_tasks.json", "failed_images.json"):
        exported = (out / filename).read_bytes()
        # Same content as the JSON store's file, in the same layout (stores may
        # keep products in another order).
        assert json.loads(exported) == json.loads((ref / filename).read_bytes())
        assert dump_json(json.loads(exported)) == exported
    assert json.loads((out / "pending_tasks.json").read_text()) == [
        record("1"),
        record("3"),
    ]
