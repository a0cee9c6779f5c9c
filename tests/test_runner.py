"""The runner's planning step, one seam at a time (the rest is tested end to end)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from imgfetch.backends import open_store
from imgfetch.catalog import CatalogOptions, product_id, read_catalog
from imgfetch.runner import _PENDING_BATCH, _queue_new
from imgfetch.signals import SignalWatcher


def write_jsonl(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for n in range(count):
            out.write(json.dumps({"id": f"p{n}", "main_images": []}) + "\n")
    return path


def test_a_signal_stops_queueing_between_batches(tmp_path: Path) -> None:
    count = 3 * _PENDING_BATCH + 5
    catalog = read_catalog(write_jsonl(tmp_path / "c.jsonl", count), CatalogOptions())
    store = open_store("sqlite", tmp_path)
    store.open(lambda record: product_id(record, None))
    with SignalWatcher() as signals:
        signal.raise_signal(signal.SIGINT)
        done_before = _queue_new(store, catalog, signals)
    assert done_before == 0
    # The first batch is saved whole, in input order; the rest is left for the
    # next download of the catalog.
    assert store.pending_count() == _PENDING_BATCH
    assert [pid for pid, _ in store.claim(3)] == ["p0", "p1", "p2"]
    store.close()


def test_without_a_signal_every_new_product_is_queued(tmp_path: Path) -> None:
    count = _PENDING_BATCH + 7
    catalog = read_catalog(write_jsonl(tmp_path / "c.jsonl", count), CatalogOptions())
    store = open_store("sqlite", tmp_path)
    store.open(lambda record: product_id(record, None))
    store.record_product("p3", {"main": []}, [])
    with SignalWatcher() as signals:
        done_before = _queue_new(store, catalog, signals)
    assert done_before == 1
    assert store.pending_count() == count - 1
    store.close()
