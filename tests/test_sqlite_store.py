"""The SQLite store: its file, per-image state, refusals, kill -9 and scale.

What every store guarantees is tested in tests/test_store_contract.py; these tests
cover what only this store does.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imgfetch.backends import sqlite_store
from imgfetch.backends.base import Failure, SavedSlot, StoreBusy
from imgfetch.backends.sqlite_store import DB_FILE, SqliteStore
from imgfetch.catalog import product_id
from imgfetch.errors import StateError, StorageError


def key(record: dict[str, Any]) -> str:
    return product_id(record, None)


def opened(data_dir: Path) -> SqliteStore:
    store = SqliteStore(data_dir)
    store.open(key)
    return store


def entry(pid: str) -> dict[str, list[str]]:
    return {"main": [f"images/{pid}/main_1.jpg"], "sku": [], "qc": []}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def sql(data_dir: Path, *statements: str) -> list[Any]:
    """Run statements on the database with a connection of the test's own."""
    conn = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
    try:
        rows = [conn.execute(s).fetchall() for s in statements]
    finally:
        conn.close()
    return rows[-1]


def a_store_with_state(data_dir: Path) -> None:
    store = opened(data_dir)
    store.add_pending([(p, {"id": p}) for p in ("a", "b", "c")])
    store.record_product("a", entry("a"), [Failure("qc", 1, "http://x/q", "HTTP 404")])
    store.close()


# -- the file ----------------------------------------------------------------------


def test_nothing_is_created_until_the_first_write(tmp_path: Path) -> None:
    store = opened(tmp_path)
    assert not store.has_pending()
    assert store.claim(5) == []
    assert store.saved_images("a") == {}
    assert list(store.iter_mapping()) == []
    assert list(tmp_path.iterdir()) == []

    # A run that recorded nothing still leaves the file its report names.
    store.flush()
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_FILE]
    assert store.mapping_label == DB_FILE
    assert opened(tmp_path).completed_count() == 0


def test_the_database_is_in_wal_mode_and_syncs_every_commit(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.add_pending([("a", {"id": "a"})])
    assert sql(tmp_path, "PRAGMA journal_mode") == [("wal",)]
    # Per connection, so only the store's own can tell; 2 is FULL.
    assert store._conn is not None
    assert store._conn.execute("PRAGMA synchronous").fetchone() == (2,)
    store.close()


def test_an_empty_file_is_an_empty_store(tmp_path: Path) -> None:
    # What a first write killed before its first commit leaves behind.
    (tmp_path / DB_FILE).write_bytes(b"")
    store = opened(tmp_path)
    assert store.completed_count() == 0 and not store.has_pending()
    store.add_pending([("a", {"id": "a"})])
    store.close()
    assert opened(tmp_path).pending() == [("a", {"id": "a"})]


# -- refusals: the file is left exactly as it was ----------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b'{"p1": {"main": []}}\n',  # a JSON file under the database's name
        b"SQLite format 3\x00" + b"\xff" * 200,  # a header and then garbage
        bytes(range(256)) * 64,
    ],
    ids=["json", "bad-header", "binary"],
)
def test_a_file_that_is_not_a_database_is_refused_untouched(
    tmp_path: Path, content: bytes
) -> None:
    (tmp_path / DB_FILE).write_bytes(content)
    before = snapshot(tmp_path)
    store = SqliteStore(tmp_path)
    with pytest.raises(StateError) as caught:
        store.open(key)
    message = str(caught.value)
    assert str(tmp_path / DB_FILE) in message
    assert "\n" not in message
    assert snapshot(tmp_path) == before


def test_an_unknown_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    a_store_with_state(tmp_path)
    sql(tmp_path, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    before = snapshot(tmp_path)
    with pytest.raises(StateError, match="version '99'") as caught:
        opened(tmp_path)
    assert str(tmp_path / DB_FILE) in str(caught.value)
    assert snapshot(tmp_path) == before


def test_a_database_of_another_program_is_refused_untouched(tmp_path: Path) -> None:
    sql(tmp_path, "CREATE TABLE products (id TEXT, price REAL)")
    before = snapshot(tmp_path)
    with pytest.raises(StateError, match="did not write"):
        opened(tmp_path)
    assert snapshot(tmp_path) == before


def test_a_log_without_its_database_is_refused(tmp_path: Path) -> None:
    # Replayed into a new database it would corrupt it.
    (tmp_path / f"{DB_FILE}-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\x00" * 60)
    before = snapshot(tmp_path)
    with pytest.raises(StateError, match="-wal"):
        opened(tmp_path)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        # a hand edit that would put a file outside the product's folder on retry
        ("UPDATE failures SET category = '../../x'", "failures of product 'a'"),
        ("UPDATE failures SET idx = 0", "failures of product 'a'"),
        ("UPDATE products SET entry = '[1]' WHERE id = 'a'", "entry of product 'a'"),
        ("UPDATE products SET record = '{' WHERE id = 'b'", "pending record of"),
        ("UPDATE products SET record = '[]' WHERE id = 'b'", "pending record of"),
    ],
)
def test_damaged_rows_are_refused_when_read(
    tmp_path: Path, statement: str, error: str
) -> None:
    a_store_with_state(tmp_path)
    sql(tmp_path, statement)
    store = opened(tmp_path)
    # Rows are checked when read, not at open (which reads no rows): the read
    # that meets the damaged one raises.
    with pytest.raises(StateError, match=error) as caught:
        store.failures()
        list(store.iter_mapping())
        store.pending()
    assert str(tmp_path / DB_FILE) in str(caught.value)


def test_damaged_pages_are_a_state_error_and_are_left_alone(tmp_path: Path) -> None:
    a_store_with_state(tmp_path)
    path = tmp_path / DB_FILE
    [(page,)] = sql(tmp_path, "PRAGMA page_size")
    data = path.read_bytes()
    assert len(data) > page
    # Page 1 (the header and the list of tables) stays, every other one is noise.
    path.write_bytes(data[:page] + b"\xa5" * (len(data) - page))
    before = snapshot(tmp_path)
    store = SqliteStore(tmp_path)
    try:
        with pytest.raises(StateError, match="malformed") as caught:
            store.open(key)
            store.failures()
            store.pending()
            list(store.iter_mapping())
    finally:
        store.close()
    assert str(path) in str(caught.value)
    assert snapshot(tmp_path) == before


def test_a_saved_image_with_a_hostile_category_is_refused(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.add_pending([("a", {"id": "a"})])
    store.record_image("a", "main", 1, "http://x/1", "images/a/main_1.jpg")
    store.close()
    sql(tmp_path, "UPDATE images SET category = '../../x'")
    with pytest.raises(StateError, match="saved image of product 'a'"):
        opened(tmp_path).saved_images("a")


# -- state per image -----------------------------------------------------------------


def test_saved_images_survive_a_reopen_until_the_product_is_recorded(
    tmp_path: Path,
) -> None:
    store = opened(tmp_path)
    store.add_pending([("a", {"id": "a"}), ("b", {"id": "b"})])
    store.record_image("a", "main", 1, "http://x/1", "images/a/main_1.jpg")
    store.record_image("a", "sku", 2, "http://x/\ud800", "images/a/sku_2.png")
    store.record_image("b", "main", 1, "http://x/b", "images/b/main_1.jpg")
    store.flush()
    store.close()

    again = opened(tmp_path)
    assert again.saved_images("a") == {
        ("main", 1): SavedSlot("http://x/1", "images/a/main_1.jpg"),
        ("sku", 2): SavedSlot("http://x/\ud800", "images/a/sku_2.png"),
    }
    again.record_product("a", entry("a"), [])
    again.close()

    last = opened(tmp_path)
    assert last.saved_images("a") == {}
    assert sql(tmp_path, "SELECT product_id FROM images") == [("b",)]
    assert list(last.saved_images("b")) == [("main", 1)]


def test_a_retry_keeps_the_product_in_its_place(tmp_path: Path) -> None:
    store = opened(tmp_path)
    for pid in ("a", "b", "c"):
        store.record_product(pid, entry(pid), [Failure("main", 2, "http://x", "r")])
    store.record_product(
        "a", {"main": ["images/a/main_1.jpg", "images/a/main_2.jpg"]}, []
    )
    assert [pid for pid, _ in store.iter_mapping()] == ["a", "b", "c"]
    assert list(store.failures()) == ["b", "c"]


def test_pending_records_come_back_with_their_key_order(tmp_path: Path) -> None:
    raw = {"z": 1, "id": "商品", "a": {"y": [1.5, None, True], "b": "\ud83d"}}
    store = opened(tmp_path)
    store.add_pending([("商品", raw)])
    store.close()
    [(pid, back)] = opened(tmp_path).pending()
    assert pid == "商品"
    assert back == raw
    assert list(back) == list(raw) and list(back["a"]) == list(raw["a"])


def test_a_claim_is_one_row_of_json_unless_an_id_cannot_be_json(
    tmp_path: Path,
) -> None:
    # Each row the sqlite3 module steps to lets other threads take the GIL; a
    # claim reads its whole batch as one row. A BLOB id (a lone surrogate, see
    # _bind) has no JSON form: that batch is read row by row.
    ids = ["a", "b\ud800", "c", "d", "e"]
    store = opened(tmp_path)
    store.add_pending([(pid, {"id": pid, "n": n}) for n, pid in enumerate(ids)])
    assert store._conn is not None
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)

    assert store.claim(1) == [("a", {"id": "a", "n": 0})]
    assert statements[-1].startswith("SELECT json_group_array")
    assert store.claim(2) == [
        ("b\ud800", {"id": "b\ud800", "n": 1}),
        ("c", {"id": "c", "n": 2}),
    ]
    assert statements[-1].startswith("SELECT seq, id, record")
    assert store.claim(5) == [("d", {"id": "d", "n": 3}), ("e", {"id": "e", "n": 4})]
    assert statements[-1].startswith("SELECT json_group_array")
    assert store.claim(5) == []


def test_iterating_while_recording_yields_each_product_once(tmp_path: Path) -> None:
    # Pages are read by key, so writes between two pages move nothing.
    count = sqlite_store.PAGE * 2 + 10
    ids = [f"p{n:05d}" for n in range(count)]
    store = opened(tmp_path)
    store.add_pending([(pid, {"id": pid}) for pid in ids])
    seen = []
    for n, (pid, _raw) in enumerate(store.iter_pending()):
        seen.append(pid)
        if n % 7 == 0:
            store.record_product(ids[-1 - n // 7], entry(pid), [])
    assert len(seen) == len(set(seen))
    assert seen[: sqlite_store.PAGE] == ids[: sqlite_store.PAGE]
    assert set(seen) | {pid for pid, _ in store.iter_mapping()} == set(ids)


# -- cost per record -----------------------------------------------------------------

# Statements run for every record or lookup: each must reach its rows through an
# index. A table scan would make the cost grow with the catalog.
PER_RECORD = {
    "SQL_IS_DONE": ("a",),
    "SQL_ENTRY": ("a",),
    "SQL_HAS_PENDING": (),
    "SQL_MAPPING_PAGE": (0, 10),
    "SQL_PENDING_PAGE": (0, 10),
    "SQL_CLAIM": (0, 10),
    "SQL_SAVED": ("a",),
    "SQL_ADD_PENDING": ("a", "{}"),
    "SQL_RECORD_PRODUCT": ("a", "{}"),
    "SQL_DROP_IMAGES": ("a",),
    "SQL_DROP_FAILURES": ("a",),
    "SQL_ADD_FAILURE": ("a", "main", 1, "u", "r", 1),
    "SQL_RECORD_IMAGE": ("a", "main", 1, "u", "images/a/main_1.jpg"),
}


# These find products by state, which only the index on done_seq orders.
BY_STATE = {"SQL_HAS_PENDING", "SQL_MAPPING_PAGE", "SQL_PENDING_PAGE", "SQL_CLAIM"}


@pytest.mark.parametrize("name", sorted(PER_RECORD))
def test_no_statement_of_a_record_scans_a_table(tmp_path: Path, name: str) -> None:
    a_store_with_state(tmp_path)
    conn = sqlite3.connect(tmp_path / DB_FILE)
    try:
        plan = conn.execute(
            f"EXPLAIN QUERY PLAN {getattr(sqlite_store, name)}", PER_RECORD[name]
        ).fetchall()
    finally:
        conn.close()
    steps = [row[-1] for row in plan]
    if name in BY_STATE:
        assert [s for s in steps if "INDEX products_done" in s], steps
    # SQL_CLAIM reads the rows its own subquery found through the index.
    reads_own_rows = ("SCAN CONSTANT ROW", "SCAN (subquery-1)")
    assert not [s for s in steps if s.startswith("SCAN") and s not in reads_own_rows], (
        steps
    )
    assert not [s for s in steps if "TEMP B-TREE" in s], steps


def test_a_hundred_thousand_products_are_added_in_one_transaction(
    tmp_path: Path,
) -> None:
    count = 100_000
    ids = [f"p{n:06d}" for n in range(count)]
    store = opened(tmp_path)
    store.add_pending([("first", {"id": "first"})])
    assert store._conn is not None
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)

    store.add_pending((pid, {"id": pid, "n": n}) for n, pid in enumerate(ids))
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    # Known ids are skipped, new ones go after everything already pending.
    store.add_pending([(ids[5], {"id": "changed"}), ("last", {"id": "last"})])
    store.close()

    again = opened(tmp_path)
    assert again.pending_count() == count + 2
    pending = again.pending()
    assert [pid for pid, _ in pending] == ["first", *ids, "last"]
    assert pending[6] == (ids[5], {"id": ids[5], "n": 5})


# -- errors ----------------------------------------------------------------------------


def test_a_full_disk_is_a_storage_error_and_changes_nothing(tmp_path: Path) -> None:
    a_store_with_state(tmp_path)
    store = opened(tmp_path)
    store.flush()
    assert store._conn is not None
    # The database cannot grow: what a full disk does to a write.
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    many = [(f"n{n}", {"id": f"n{n}", "pad": "x" * 500}) for n in range(2000)]
    with pytest.raises(StorageError, match="cannot write state") as caught:
        store.add_pending(many)
    assert str(tmp_path) in str(caught.value)
    store.close()
    again = opened(tmp_path)
    assert [pid for pid, _ in again.pending()] == ["b", "c"]
    assert again.mapping_entry("a") == entry("a")


def test_a_lock_held_by_another_process_is_store_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", 0.05)
    a_store_with_state(tmp_path)
    store = opened(tmp_path)
    other = sqlite3.connect(tmp_path / DB_FILE, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreBusy):
            store.record_product("b", entry("b"), [])
        assert store.completed_count() == 1  # readers are not blocked in WAL mode
    finally:
        other.close()
    # The failed write left nothing behind; trying again works.
    assert not store.is_completed("b")
    store.record_product("b", entry("b"), [])
    assert store.is_completed("b")
    store.close()


# -- kill -9 -------------------------------------------------------------------------

_WRITER = r"""
import sys
from pathlib import Path
from imgfetch.backends.base import Failure
from imgfetch.backends.sqlite_store import SqliteStore

store = SqliteStore(Path(sys.argv[1]))
store.open(lambda record: record["id"])
ids = [f"k{n}" for n in range(100_000)]
print("adding", flush=True)
store.add_pending([(pid, {"id": pid}) for pid in ids])
print("added", flush=True)
for n, pid in enumerate(ids):
    store.record_image(pid, "main", 1, f"http://x/{pid}/1", f"images/{pid}/main_1.jpg")
    store.record_image(pid, "main", 2, f"http://x/{pid}/2", f"images/{pid}/main_2.jpg")
    failures = [Failure("qc", 1, f"http://x/{pid}/q", "HTTP 404", n % 3 + 1)]
    store.record_product(pid, {"main": [f"images/{pid}/main_1.jpg"]}, failures)
    print(pid, flush=True)
"""


def start_writer(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )


def kill(child: subprocess.Popen[str]) -> list[str]:
    """SIGKILL the child; the lines it printed before it died."""
    assert child.stdout is not None
    child.send_signal(signal.SIGKILL)
    child.wait()
    rest = child.stdout.read().split()
    child.stdout.close()
    return rest


def test_kill_9_while_recording_keeps_every_returned_record(tmp_path: Path) -> None:
    child = start_writer(tmp_path)
    assert child.stdout is not None
    recorded: list[str] = []
    while len(recorded) < 300:
        line = child.stdout.readline()
        assert line, "the writer ended early"
        if line.startswith("k"):
            recorded.append(line.strip())
    recorded += kill(child)

    assert sql(tmp_path, "PRAGMA integrity_check") == [("ok",)]
    store = opened(tmp_path)
    mapping = dict(store.iter_mapping())
    failures = store.failures()
    for n, pid in enumerate(recorded):
        assert mapping[pid] == {"main": [f"images/{pid}/main_1.jpg"]}
        assert failures[pid] == [
            Failure("qc", 1, f"http://x/{pid}/q", "HTTP 404", n % 3 + 1)
        ]
        assert store.saved_images(pid) == {}
    assert set(mapping).isdisjoint(pid for pid, _ in store.iter_pending())
    assert store.completed_count() + store.pending_count() == 100_000


_HALFWAY = r"""
import sys
from pathlib import Path
from imgfetch.backends.sqlite_store import SqliteStore

store = SqliteStore(Path(sys.argv[1]))
store.open(lambda record: record["id"])
store.add_pending([("a", {"id": "a"}), ("b", {"id": "b"})])
store.record_product("a", {"main": []}, [])


def products():
    for n in range(100_000):
        if n == 60_000:
            print("halfway", flush=True)
            sys.stdin.readline()  # wait, inside the transaction, to be killed
        yield f"n{n}", {"id": f"n{n}", "pad": "x" * 200}


store.add_pending(products())
print("added", flush=True)
"""


def test_kill_9_inside_a_big_transaction_keeps_none_of_it(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _HALFWAY, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == "halfway\n"
    # Rows that did not fit in the page cache are in the log, uncommitted.
    assert (tmp_path / f"{DB_FILE}-wal").stat().st_size > 100_000
    kill(child)
    child.stdin.close()

    assert sql(tmp_path, "PRAGMA integrity_check") == [("ok",)]
    store = opened(tmp_path)
    assert store.pending() == [("b", {"id": "b"})]
    assert [pid for pid, _ in store.iter_mapping()] == ["a"]
