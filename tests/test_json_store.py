"""The JSON-file store: the spec's files, their write order, and what open reads."""

from __future__ import annotations

import json
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from imgfetch.backends import json_store, open_store
from imgfetch.backends.base import Failure
from imgfetch.backends.json_store import JsonStore
from imgfetch.catalog import product_id
from imgfetch.errors import StateError, UsageError

PENDING = "pending_tasks.json"


def key(record: dict[str, Any]) -> str:
    return product_id(record, None)


def opened(data_dir: Path) -> JsonStore:
    store = JsonStore(data_dir)
    store.open(key)
    return store


def entry(pid: str) -> dict[str, list[str]]:
    return {"main": [f"images/{pid}/main_1.jpg"], "sku": [], "qc": []}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_open_on_an_empty_directory_writes_nothing(tmp_path: Path) -> None:
    store = opened(tmp_path)
    assert store.completed_count() == 0
    assert not store.has_pending()
    assert list(tmp_path.iterdir()) == []


def test_pending_keeps_input_dicts_and_order_until_recorded(tmp_path: Path) -> None:
    records = [{"id": 2, "x": "é"}, {"id": "1"}, {"item_id": "z"}]
    store = opened(tmp_path)
    store.add_pending((key(r), r) for r in records)
    store.flush()
    assert json.loads((tmp_path / "pending_tasks.json").read_text()) == records

    store.record_product("2", entry("2"), [])
    store.flush()
    assert json.loads((tmp_path / "pending_tasks.json").read_text()) == records[1:]
    assert json.loads((tmp_path / "image_mapping.json").read_text()) == {
        "2": entry("2")
    }

    store.record_product("1", entry("1"), [])
    store.record_product("z", entry("z"), [])
    store.flush()
    assert not (tmp_path / "pending_tasks.json").exists()
    assert opened(tmp_path).completed_count() == 3


def test_failures_file_exists_only_while_there_are_failures(tmp_path: Path) -> None:
    store = opened(tmp_path)
    failure = Failure("main", 2, "http://127.0.0.1:1/x.jpg", "HTTP 404", 1)
    store.record_product("a", entry("a"), [failure])
    store.flush()
    saved = json.loads((tmp_path / "failed_images.json").read_text())
    assert saved == {"a": [failure.to_json()]}
    assert opened(tmp_path).failures() == {"a": [failure]}

    store.record_product("a", entry("a"), [])  # a retry that succeeded
    store.flush()
    assert not (tmp_path / "failed_images.json").exists()


def test_a_product_in_both_files_counts_as_completed(tmp_path: Path) -> None:
    # kill -9 between writing the mapping and the pending file leaves this state.
    (tmp_path / "image_mapping.json").write_text(json.dumps({"a": entry("a")}))
    pending = [{"id": "a"}, {"id": "b"}]
    (tmp_path / "pending_tasks.json").write_text(json.dumps(pending))
    before = snapshot(tmp_path)

    store = opened(tmp_path)
    assert [pid for pid, _ in store.pending()] == ["b"]
    assert snapshot(tmp_path) == before  # open never writes
    store.flush()
    assert json.loads((tmp_path / "pending_tasks.json").read_text()) == [{"id": "b"}]


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("image_mapping.json", '{"a": ', "line 1, column 7"),
        ("image_mapping.json", "[]", "top level is list"),
        ("image_mapping.json", "", "is empty"),
        ("image_mapping.json", '{"a": {"main": "x.jpg"}}', "product 'a'"),
        ("pending_tasks.json", '[{"id": 1},\n{"id": ', "line 2"),
        ("pending_tasks.json", '{"id": 1}', "top level is dict"),
        ("pending_tasks.json", '[{"id": 1}, {"name": "no id"}]', "record 2"),
        ("pending_tasks.json", "[1]", "record 1"),
        ("failed_images.json", '{"a": [{"url": "u"}]}', "product 'a'"),
        ("failed_images.json", "\xff", "line 1"),
    ],
)
def test_damaged_files_are_reported_and_left_alone(
    tmp_path: Path, name: str, content: str, says: str
) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    before = snapshot(tmp_path)
    with pytest.raises(StateError) as raised:
        opened(tmp_path)
    assert name in str(raised.value) and says in str(raised.value)
    assert snapshot(tmp_path) == before


def test_threads_recording_at_once_lose_nothing(tmp_path: Path) -> None:
    store = opened(tmp_path)
    ids = [f"p{i}" for i in range(400)]
    store.add_pending((pid, {"id": pid}) for pid in ids)

    def record(chunk: list[str]) -> None:
        for pid in chunk:
            store.record_product(pid, entry(pid), [])
            if pid.endswith("7"):
                store.flush()

    threads = [threading.Thread(target=record, args=(ids[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.flush()
    reopened = opened(tmp_path)
    assert reopened.completed_count() == 400
    assert not reopened.has_pending()


def test_registry_suggests_a_close_name(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="did you mean 'json'"):
        open_store("jsn", tmp_path)
    assert isinstance(open_store("json", tmp_path), JsonStore)


# -- a big pending file is not rewritten at every save ---------------------------------


def pending_ids(data_dir: Path) -> list[str]:
    return [r["id"] for r in json.loads((data_dir / "pending_tasks.json").read_text())]


def test_a_big_pending_file_is_rewritten_when_added_to_half_done_and_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json_store, "SMALL_PENDING", 1)
    ids = [f"p{n}" for n in range(6)]
    store = opened(tmp_path)
    store.add_pending((pid, {"id": pid}) for pid in ids)
    store.flush()
    assert pending_ids(tmp_path) == ids

    # Recorded: in the mapping at once, while the pending file keeps listing it
    # (as after a kill between the two writes); every reader sees it completed.
    store.record_product("p0", entry("p0"), [])
    store.flush()
    assert pending_ids(tmp_path) == ids
    assert "p0" in json.loads((tmp_path / "image_mapping.json").read_text())
    assert [pid for pid, _ in opened(tmp_path).pending()] == ids[1:]

    # Half of the file done: rewritten.
    store.record_many([(pid, entry(pid), []) for pid in ("p1", "p2")])
    store.flush()
    assert pending_ids(tmp_path) == ids[3:]

    # Products added: rewritten.
    store.record_product("p3", entry("p3"), [])
    store.add_pending([("p6", {"id": "p6"})])
    store.flush()
    assert pending_ids(tmp_path) == ["p4", "p5", "p6"]

    # The end of the command: exactly what is left.
    store.record_product("p4", entry("p4"), [])
    store.flush()
    assert pending_ids(tmp_path) == ["p4", "p5", "p6"]
    store.close()
    assert pending_ids(tmp_path) == ["p5", "p6"]
    reopened = opened(tmp_path)
    assert reopened.completed_count() == 5
    assert [pid for pid, _ in reopened.claim(5)] == ["p5", "p6"]


def test_close_writes_nothing_into_a_folder_that_replaced_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json_store, "SMALL_PENDING", 0)
    data = tmp_path / "data"
    data.mkdir()
    store = opened(data)
    store.add_pending((pid, {"id": pid}) for pid in ("a", "b", "c"))
    store.flush()
    store.record_product("a", entry("a"), [])
    store.flush()
    data.rename(tmp_path / "moved")
    data.mkdir()
    store.close()
    assert list(data.iterdir()) == []
    assert [
        r["id"] for r in json.loads((tmp_path / "moved" / PENDING).read_text())
    ] == [
        "a",
        "b",
        "c",
    ]


def test_the_failures_file_is_written_only_when_failures_change(tmp_path: Path) -> None:
    store = opened(tmp_path)
    failure = Failure("main", 1, "http://127.0.0.1:1/x.jpg", "HTTP 404", 1)
    store.record_product("a", entry("a"), [failure])
    store.flush()
    failed = tmp_path / "failed_images.json"
    written = failed.stat().st_ino  # a new inode with every atomic write
    store.record_product("b", entry("b"), [])
    store.flush()
    assert failed.stat().st_ino == written
    store.record_product("c", entry("c"), [failure])
    store.flush()
    assert failed.stat().st_ino != written
    assert sorted(json.loads(failed.read_text())) == ["a", "c"]


def test_pending_records_are_read_from_the_file_not_held_in_memory(
    tmp_path: Path,
) -> None:
    # As dicts, a million pending products held 2.9 GB; as their text, 570 MB.
    # The store keeps where each text is, and reads it back when it is claimed.
    records = [
        {"id": str(n), "main_images": [f"http://x/{n}/{'a' * 900}.jpg"]}
        for n in range(20_000)
    ]
    (tmp_path / PENDING).write_bytes(json_store.dump_json(records))
    size = (tmp_path / PENDING).stat().st_size

    tracemalloc.start()
    try:
        store = opened(tmp_path)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert store.pending_count() == len(records)
    # What open keeps is a fraction of the file; while reading it, a few
    # megabytes at a time (the file here is 20 MB).
    assert held < size / 8, (held, size)
    assert peak < size / 2, (peak, size)
    assert store.claim(2) == [("0", records[0]), ("1", records[1])]
    assert list(store.iter_pending()) == [(r["id"], r) for r in records]


def test_added_pending_records_are_written_exactly_as_dump_json_would(
    tmp_path: Path,
) -> None:
    # Texts added after open sit in a spool file and are copied into the pending
    # file at the next rewrite, next to those already there.
    first = [{"id": "a", "main_images": ["http://x/a.jpg"], "名": "中文"}]
    (tmp_path / PENDING).write_bytes(json_store.dump_json(first))
    store = opened(tmp_path)
    added = [{"id": str(n), "main_images": [f"http://x/{n}.jpg"]} for n in range(3)]
    store.add_pending((r["id"], r) for r in added)
    assert store.pending() == [("a", first[0])] + [(r["id"], r) for r in added]

    store.record_product("1", entry("1"), [])
    store.flush()
    store.close()

    left = first + [added[0], added[2]]
    assert (tmp_path / PENDING).read_bytes() == json_store.dump_json(left)
    again = opened(tmp_path)
    assert again.pending() == [(r["id"], r) for r in left]
