"""The markers store's own layout: fan-out, what a record touches, kills, damage."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from imgfetch.backends import markers_store
from imgfetch.backends.base import Failure
from imgfetch.backends.markers_store import MarkersStore
from imgfetch.catalog import product_id
from imgfetch.errors import StateError, StorageError


def key(record: dict[str, Any]) -> str:
    return product_id(record, None)


def opened(data_dir: Path) -> MarkersStore:
    store = MarkersStore(data_dir)
    store.open(key)
    return store


def entry(pid: str) -> dict[str, list[str]]:
    return {"main": [f"images/{pid}/main_1.jpg"], "sku": [], "qc": []}


def record(pid: str) -> dict[str, Any]:
    return {"id": pid, "main_images": [f"http://x/{pid}.jpg"]}


def digest(pid: str) -> str:
    return hashlib.sha256(pid.encode("utf-8", "surrogatepass")).hexdigest()


def done_path(data_dir: Path, pid: str) -> Path:
    h = digest(pid)
    return data_dir / "markers" / "done" / h[:3] / f"{h}.json"


def failed_path(data_dir: Path, pid: str) -> Path:
    h = digest(pid)
    return data_dir / "markers" / "failed" / h[:3] / f"{h}.json"


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`."""
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def changes(
    before: dict[str, bytes | None], after: dict[str, bytes | None]
) -> set[str]:
    """Names of files and folders added, removed or rewritten."""
    names = before.keys() | after.keys()
    return {name for name in names if before.get(name, 0) != after.get(name, 0)}


# -- layout and fan-out ----------------------------------------------------------


def test_markers_land_where_the_layout_says(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.add_pending([(str(n), record(str(n))) for n in range(5)])
    fail = Failure("main", 1, "http://x/1.jpg", "HTTP 404")
    store.record_product("1", entry("1"), [fail])
    store.record_product("2", entry("2"), [])

    assert json.loads(done_path(tmp_path, "1").read_bytes()) == {
        "id": "1",
        "entry": entry("1"),
        "failures": [fail.to_json()],
    }
    assert json.loads(failed_path(tmp_path, "1").read_bytes()) == {
        "id": "1",
        "failures": [fail.to_json()],
    }
    assert not failed_path(tmp_path, "2").exists()
    batch = tmp_path / "markers" / "pending" / "000000" / "000000000.json"
    assert json.loads(batch.read_bytes()) == [
        {"id": str(n), "record": record(str(n))} for n in range(5)
    ]
    files = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {
        str(done_path(tmp_path, "1").relative_to(tmp_path)),
        str(done_path(tmp_path, "2").relative_to(tmp_path)),
        str(failed_path(tmp_path, "1").relative_to(tmp_path)),
        str(batch.relative_to(tmp_path)),
    }


def test_no_folder_holds_more_than_a_few_thousand_entries_at_a_million(
    tmp_path: Path,
) -> None:
    # Where a marker goes depends on its id alone: check the rule on a few, then
    # count where a million products would go instead of writing them.
    store = MarkersStore(tmp_path)
    for pid in ("a", "商品", "../x"):
        h = digest(pid)
        assert store._done_path(h) == tmp_path / "markers/done" / h[:3] / f"{h}.json"
    per_folder = Counter(digest(f"p{n:07d}")[:3] for n in range(1_000_000))
    assert len(per_folder) == 4096  # the entries of done/ itself
    assert max(per_folder.values()) < 400  # about 244 in each
    # Pending at worst: a million calls of add_pending with one product each.
    assert store._batch_path(1_234_567) == (
        tmp_path / "markers/pending/001234/001234567.json"
    )
    batches = Counter(n // markers_store.BATCH for n in range(1_000_000))
    assert len(batches) == 1000 and max(batches.values()) == 1000


def test_pending_batches_fill_folders_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(markers_store, "BATCH", 3)
    store = opened(tmp_path)
    store.add_pending([(str(n), record(str(n))) for n in range(7)])  # 3 + 3 + 1
    for n in range(7, 10):
        store.add_pending([(str(n), record(str(n)))])
    pending = tmp_path / "markers" / "pending"
    assert {
        folder.name: sorted(p.name for p in folder.iterdir())
        for folder in pending.iterdir()
    } == {
        "000000": ["000000000.json", "000000001.json", "000000002.json"],
        "000001": ["000000003.json", "000000004.json", "000000005.json"],
    }
    assert [pid for pid, _ in opened(tmp_path).pending()] == [str(n) for n in range(10)]


# -- flat cost: what one record touches ---------------------------------------------


@pytest.mark.parametrize("size", [10, 2000])
def test_a_record_touches_only_its_own_markers_however_big_the_store(
    tmp_path: Path, size: int
) -> None:
    store = opened(tmp_path)
    ids = [f"p{n}" for n in range(size)]
    store.add_pending([(pid, record(pid)) for pid in ids])
    store.record_many([(pid, entry(pid), []) for pid in ids[: size // 2]])
    store.flush()

    before = tree(tmp_path)
    store.record_product(ids[-1], entry(ids[-1]), [])
    after = tree(tmp_path)
    # The done marker, plus its fan-out folder when it is the first one there.
    assert changes(before, after) - {
        str(done_path(tmp_path, ids[-1]).parent.relative_to(tmp_path))
    } == {str(done_path(tmp_path, ids[-1]).relative_to(tmp_path))}

    before = after
    fail = Failure("qc", 2, "http://x/q.jpg", "timeout", 3)
    store.record_product(ids[0], entry(ids[0]), [fail])
    changed = changes(before, tree(tmp_path))
    assert str(done_path(tmp_path, ids[0]).relative_to(tmp_path)) in changed
    assert str(failed_path(tmp_path, ids[0]).relative_to(tmp_path)) in changed
    assert all(name.startswith(("markers/done/", "markers/failed")) for name in changed)
    assert len(changed) <= 4  # two markers and at most two new fan-out folders
    assert store.completed_count() == size // 2 + 1


# -- kill -9 between two writes ---------------------------------------------------


def test_kill_after_the_done_marker_leaves_done_winning(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.add_pending([(pid, record(pid)) for pid in "abc"])
    store.record_product("a", entry("a"), [])
    # Killed here: the batch still lists "a" and was never swept by a flush.
    batch = tmp_path / "markers" / "pending" / "000000" / "000000000.json"
    assert [item["id"] for item in json.loads(batch.read_bytes())] == ["a", "b", "c"]

    before = tree(tmp_path)
    again = opened(tmp_path)
    assert again.pending() == [("b", record("b")), ("c", record("c"))]
    assert again.claim(5) == [("b", record("b")), ("c", record("c"))]
    assert again.pending_count() == 2
    assert again.completed_count() == 1
    assert again.has_pending()
    assert tree(tmp_path) == before  # reading repaired nothing

    again.record_many([("b", entry("b"), []), ("c", entry("c"), [])])
    assert again.has_pending()  # until flush sweeps the batch
    again.flush()
    assert not again.has_pending()
    assert not (tmp_path / "markers" / "pending").exists()


def test_kill_between_failed_copy_and_done_marker(tmp_path: Path) -> None:
    store = opened(tmp_path)
    fail = Failure("main", 1, "http://x", "HTTP 500", 4)
    store.record_product("old", entry("old"), [])
    # Killed after writing the failed copies of a new product and of a retried one,
    # before their done markers: neither failure is recorded.
    for pid in ("new", "old"):
        path = failed_path(tmp_path, pid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"id": pid, "failures": [fail.to_json()]}))
    # A temporary file of a killed write is no marker.
    temp = done_path(tmp_path, "x").parent / ".imgfetch-x.json.abc.tmp"
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_text("{")

    before = tree(tmp_path)
    again = opened(tmp_path)
    assert again.failures() == {}
    assert again.completed_count() == 1
    assert dict(again.iter_mapping()) == {"old": entry("old")}
    assert tree(tmp_path) == before
    again.flush()  # the first write tidies the stale copies away
    assert not failed_path(tmp_path, "new").exists()
    assert not failed_path(tmp_path, "old").exists()


def test_open_writes_nothing_not_even_folders(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.add_pending([("a", record("a"))])
    store.flush()
    assert store.failures() == {} and store.pending_count() == 1
    assert [p.name for p in (tmp_path / "markers").iterdir()] == ["pending"]
    before = tree(tmp_path)
    reader = opened(tmp_path)
    reader.pending()
    reader.claim(1)
    list(reader.iter_mapping())
    reader.mapping_entry("a")
    reader.pending_modified()
    assert tree(tmp_path) == before


# -- damaged markers ------------------------------------------------------------------

DAMAGED_DONE = [
    # (what is wrong, the file's bytes, words the message must hold)
    ("empty", b"", "is empty"),
    ("not JSON", b'{"id": "p",', "invalid JSON"),
    ("not UTF-8", b'{"id": "\xff"}', "not UTF-8"),
    ("a list", b"[]", "top level is list"),
    ("no id", b'{"entry": {}}', "'id'"),
    ("another product's", b'{"id": "q", "entry": {}}', "another file name"),
    ("bad entry", b'{"id": "p", "entry": {"main": "x.jpg"}}', "entry of product"),
    ("bad failures", b'{"id": "p", "entry": {}, "failures": {}}', "not a list"),
    (
        "unsafe category",
        b'{"id": "p", "entry": {}, "failures": [{"category": "../x", "url": "u"}]}',
        "not a category name",
    ),
]


@pytest.mark.parametrize(
    ("content", "words"),
    [case[1:] for case in DAMAGED_DONE],
    ids=[case[0] for case in DAMAGED_DONE],
)
def test_a_damaged_done_marker_is_named_and_left_as_it_was(
    tmp_path: Path, content: bytes, words: str
) -> None:
    store = opened(tmp_path)
    store.record_product("p", entry("p"), [])
    path = done_path(tmp_path, "p")
    path.write_bytes(content)
    before = tree(tmp_path)

    again = opened(tmp_path)  # p has no failures: open does not read its marker
    assert again.is_completed("p")
    for read in (lambda: again.mapping_entry("p"), lambda: list(again.iter_mapping())):
        with pytest.raises(StateError) as caught:
            read()
        assert str(path) in str(caught.value) and words in str(caught.value)
    assert tree(tmp_path) == before


def test_a_damaged_marker_of_a_failed_product_stops_open(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.record_product("p", entry("p"), [Failure("main", 1, "http://x", "r")])
    path = done_path(tmp_path, "p")
    path.write_bytes(b'{"id": "p", "entry": {}, "failures": [{"url": 1}]}')
    before = tree(tmp_path)
    with pytest.raises(StateError, match="failures of product 'p' are damaged"):
        opened(tmp_path)
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty"),
        (b'{"id": "a"}', "top level is dict"),
        (b'[{"id": "a", "record": {}}, {"id": 3, "record": {}}]', "record 2 is not"),
        (b'[{"id": "a"}]', "record 1 is not"),
    ],
)
def test_a_damaged_pending_batch_is_named_and_left_as_it_was(
    tmp_path: Path, content: bytes, words: str
) -> None:
    store = opened(tmp_path)
    store.add_pending([("a", record("a"))])
    batch = tmp_path / "markers" / "pending" / "000000" / "000000000.json"
    batch.write_bytes(content)
    before = tree(tmp_path)
    again = opened(tmp_path)
    for read in (again.pending, lambda: again.claim(1), again.pending_count):
        with pytest.raises(StateError) as caught:
            read()
        assert str(batch) in str(caught.value) and words in str(caught.value)
    assert tree(tmp_path) == before


# -- writing ---------------------------------------------------------------------------


def test_a_folder_that_cannot_be_written_raises_storage_error(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.record_product("a", entry("a"), [])
    # A file where the fan-out folder of "b" should be: no permission trick (the
    # tests may run as root), a real error from the file system.
    folder = done_path(tmp_path, "b").parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_bytes(b"")
    with pytest.raises(StorageError, match="cannot write state"):
        store.record_product("b", entry("b"), [])
    assert store.completed_count() == 1
    assert not store.is_completed("b")


def test_lone_surrogates_round_trip(tmp_path: Path) -> None:
    # json.loads makes these from "\ud800"; they have no UTF-8 form.
    pid = "bad\ud800id"
    store = opened(tmp_path)
    store.add_pending([(pid, {"id": pid, "t": "\udfff"}), ("é", record("é"))])
    fail = Failure("main", 1, "http://x/\ud800", "r")
    store.record_product("é", entry("é"), [fail])
    store.record_product("ü", entry("ü"), [])
    again = opened(tmp_path)
    assert again.pending() == [(pid, {"id": pid, "t": "\udfff"})]
    assert again.failures() == {"é": [fail]}
    assert again.mapping_entry("ü") == entry("ü")
    # Text that UTF-8 can carry stays readable in the file.
    assert "ü" in done_path(tmp_path, "ü").read_text(encoding="utf-8")


def test_the_last_record_of_a_product_in_a_batch_wins(tmp_path: Path) -> None:
    store = opened(tmp_path)
    fail = Failure("sku", 1, "http://x", "r")
    store.record_many(
        [("a", entry("x"), [fail]), ("b", entry("b"), []), ("a", entry("a"), [])]
    )
    assert store.completed_count() == 2
    again = opened(tmp_path)
    assert again.mapping_entry("a") == entry("a")
    assert again.failures() == {}
    assert again.completed_count() == 2


def test_batches_are_swept_in_order_once_all_their_products_are_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(markers_store, "BATCH", 2)
    store = opened(tmp_path)
    store.add_pending([(str(n), record(str(n))) for n in range(5)])  # 2 + 2 + 1
    pending = tmp_path / "markers" / "pending" / "000000"
    store.record_many([("0", entry("0"), []), ("2", entry("2"), [])])
    store.flush()
    # "1" is still pending: the sweep stops at batch 0.
    assert sorted(os.listdir(pending)) == ["000000000.json", "000000001.json"]
    store.record_product("1", entry("1"), [])
    store.flush()
    # Batch 0 is done; batch 1 waits for "3".
    assert sorted(os.listdir(pending)) == ["000000001.json"]
    store.record_product("3", entry("3"), [])
    store.flush()
    # Batch 1 is done, and its emptied folder went with it; batch 2 waits for "4".
    assert not pending.exists()
    assert [pid for pid, _ in store.pending()] == ["4"]
    assert store.pending_count() == 1


def test_a_writer_that_finds_its_new_folder_made_by_another_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Writer threads race to make a new fan-out folder: one finds it missing,
    # and another makes it before the first one looks again. Replay that order.
    real = markers_store.atomic_write_bytes
    made_by_other: list[Path] = []

    def racing(path: Path, data: bytes) -> None:
        if not path.parent.exists():
            path.parent.mkdir(parents=True)  # the other writer
            made_by_other.append(path.parent)
            raise FileNotFoundError(2, "No such file or directory", str(path))
        real(path, data)

    monkeypatch.setattr(markers_store, "atomic_write_bytes", racing)
    store = opened(tmp_path)
    store.record_product("a", entry("a"), [])
    assert made_by_other == [done_path(tmp_path, "a").parent]
    assert store.mapping_entry("a") == entry("a")


# -- batches: markers written together, synced together ------------------------------

together = pytest.mark.skipif(
    not markers_store.SYNC_TOGETHER, reason="batches are synced together on Linux"
)


def visible(data_dir: Path, pids: list[str]) -> tuple[set[str], set[str], int]:
    """Which of `pids` have a done marker, which a failed copy, and how many
    temporary files the markers folder holds."""
    temps = [p for p in (data_dir / "markers").rglob("*") if p.name.endswith(".tmp")]
    return (
        {pid for pid in pids if done_path(data_dir, pid).exists()},
        {pid for pid in pids if failed_path(data_dir, pid).exists()},
        len(temps),
    )


def batch_of(pids: list[str]) -> list[tuple[str, dict[str, list[str]], list[Failure]]]:
    """Every third product has a failed image."""
    return [
        (pid, entry(pid), [Failure("qc", 1, f"http://x/{pid}", "r")] if n % 3 else [])
        for n, pid in enumerate(pids)
    ]


@together
def test_a_batch_is_named_only_after_its_data_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = [f"b{n}" for n in range(12)]
    failed = {pid for n, pid in enumerate(pids) if n % 3}
    store = opened(tmp_path)
    store.add_pending([(pid, record(pid)) for pid in pids])
    seen: list[tuple[set[str], set[str], int]] = []
    real = markers_store.sync_filesystem

    def sync(folder: Path) -> None:
        seen.append(visible(tmp_path, pids))
        real(folder)

    monkeypatch.setattr(markers_store, "sync_filesystem", sync)
    store.record_many(batch_of(pids))
    assert seen == [
        # Every file written, none named: a power loss now loses the batch.
        (set(), set(), len(pids) + len(failed)),
        # Failed copies before any done marker: failed/ lists a superset.
        (set(), failed, len(pids)),
        # Then the done markers, made durable before the call returns.
        (set(pids), failed, 0),
    ]
    assert store.completed_count() == len(pids)
    again = opened(tmp_path)
    assert sorted(again.failures()) == sorted(failed)
    assert dict(again.iter_mapping()) == {pid: entry(pid) for pid in pids}


@together
@pytest.mark.parametrize("failing", [1, 2, 3])
def test_a_batch_that_fails_leaves_whole_markers_and_no_temporary_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    pids = [f"b{n}" for n in range(12)]
    store = opened(tmp_path)
    store.add_pending([(pid, record(pid)) for pid in pids])
    calls: list[Path] = []
    real = markers_store.sync_filesystem

    def sync(folder: Path) -> None:
        calls.append(folder)
        if len(calls) == failing:
            raise OSError(28, "No space left on device")
        real(folder)

    monkeypatch.setattr(markers_store, "sync_filesystem", sync)
    with pytest.raises(StorageError, match="cannot write state"):
        store.record_many(batch_of(pids))
    done, _failed, temps = visible(tmp_path, pids)
    assert temps == 0
    # Only the last sync comes after the done markers were named.
    assert done == (set(pids) if failing == 3 else set())
    assert store.completed_count() == len(done)
    again = opened(tmp_path)
    assert dict(again.iter_mapping()) == {pid: entry(pid) for pid in done}
    assert [pid for pid, _ in again.pending()] == [p for p in pids if p not in done]


@pytest.mark.parametrize("synced_together", [True, False])
def test_batches_and_single_records_keep_the_same_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced_together: bool
) -> None:
    monkeypatch.setattr(
        markers_store, "SYNC_TOGETHER", synced_together and markers_store.SYNC_TOGETHER
    )
    pids = [f"b{n}" for n in range(30)]
    store = opened(tmp_path)
    store.add_pending([(pid, record(pid)) for pid in pids])
    store.record_many(batch_of(pids[:20]))
    # A retry that saves every image: the failed copies go, the entries change.
    retried = [(pid, {"main": ["images/x/main_1.jpg"]}, []) for pid in pids[1:10]]
    store.record_many(retried)
    store.flush()
    failed = {pid for n, pid in enumerate(pids[:20]) if n % 3 and n >= 10}
    assert {pid for pid in pids if failed_path(tmp_path, pid).exists()} == failed
    again = opened(tmp_path)
    assert again.completed_count() == 20
    assert sorted(again.failures()) == sorted(failed)
    assert again.mapping_entry(pids[5]) == {"main": ["images/x/main_1.jpg"]}
    assert again.mapping_entry(pids[15]) == entry(pids[15])
    assert [pid for pid, _ in again.claim(100)] == pids[20:]


def test_products_whose_hash_prefix_is_known_are_checked_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whether a product is completed is asked of a set of 64-bit prefixes first;
    # a prefix shared with a completed product must not make another one count
    # as completed. Every product sharing one prefix is the worst case.
    monkeypatch.setattr(markers_store, "_short", lambda digest: 0)
    monkeypatch.setattr(markers_store, "BATCH", 4)
    pids = [f"p{n}" for n in range(10)]
    store = opened(tmp_path)
    store.add_pending([(pid, record(pid)) for pid in pids])
    store.record_many([(pid, entry(pid), []) for pid in pids[:5]])
    store.record_product(pids[7], entry(pids[7]), [])
    store.flush()
    for reader in (store, opened(tmp_path)):
        assert [reader.is_completed(pid) for pid in pids] == [
            n < 5 or n == 7 for n in range(10)
        ]
        assert reader.pending_count() == 4
        assert [pid for pid, _ in reader.pending()] == ["p5", "p6", "p8", "p9"]
    assert [pid for pid, _ in opened(tmp_path).claim(10)] == ["p5", "p6", "p8", "p9"]
    # Batch 0 (p0-p3) was swept; batch 1 waits for p5 and p6.
    pending = tmp_path / "markers" / "pending" / "000000"
    assert sorted(os.listdir(pending)) == ["000000001.json", "000000002.json"]


def test_a_big_catalog_gets_every_fan_out_folder_while_planning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(markers_store, "PREPARE_FOLDERS_FROM", 3)
    store = opened(tmp_path)
    store.add_pending([("a", record("a")), ("b", record("b"))])
    assert not (tmp_path / "markers" / "done").exists()
    store.add_pending([("c", record("c"))])
    folders = sorted(os.listdir(tmp_path / "markers" / "done"))
    assert folders == [f"{n:03x}" for n in range(4096)]
    before = tree(tmp_path)
    store.record_product("a", entry("a"), [])
    # Only the marker itself: its folder was there already.
    assert changes(before, tree(tmp_path)) == {
        str(done_path(tmp_path, "a").relative_to(tmp_path))
    }
    assert opened(tmp_path).completed_count() == 1
