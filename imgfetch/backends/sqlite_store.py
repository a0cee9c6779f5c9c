"""The SQLite store: one WAL database that keeps state per product and per image."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..catalog import InvalidRecord, reason_of
from ..errors import ImgfetchError, StateError, StorageError
from ..fsutil import fsync_dir
from .base import Entry, Failure, ProductKey, SavedSlot, StateStore, StoreBusy
from .sqlite_schema import (
    COLUMNS,
    SCHEMA,
    SQL_ADD_FAILURE,
    SQL_ADD_PENDING,
    SQL_CLAIM,
    SQL_COMPLETED,
    SQL_DROP_FAILURES,
    SQL_DROP_IMAGES,
    SQL_ENTRY,
    SQL_FAILURE_COUNT,
    SQL_FAILURES,
    SQL_HAS_PENDING,
    SQL_IS_DONE,
    SQL_MAPPING_PAGE,
    SQL_PENDING_COUNT,
    SQL_PENDING_PAGE,
    SQL_RECORD_IMAGE,
    SQL_RECORD_PRODUCT,
    SQL_SAVED,
)
from .state_files import checked_failure, is_valid_entry

DB_FILE = "imgfetch.sqlite3"
FORMAT = "imgfetch"
SCHEMA_VERSION = 1

# Only another process (a sqlite3 shell, a backup tool) can hold the database:
# the lock on the data directory keeps other imgfetch processes out.
BUSY_TIMEOUT_SECONDS = 10.0
# Rows read per query by the iterators, so memory stays flat however big the
# catalog is, and no cursor stays open between two yields.
PAGE = 1000

# Primary result codes (the low byte of an extended code).
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_STORAGE_CODES = {
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_NOLFS,
}

# A reader of a WAL database needs room for its shared-memory file (-shm): on a
# full disk even a read fails, and that is the disk's fault, not the state's.
_SHM_CODES = {
    sqlite3.SQLITE_IOERR_SHMOPEN,
    sqlite3.SQLITE_IOERR_SHMSIZE,
    sqlite3.SQLITE_IOERR_SHMMAP,
}

Row = tuple[Any, ...]


class SqliteStore(StateStore):
    """Every write is one transaction, committed and synced before it returns
    (a saved image only with the next record or flush: see `record_image`).

    One connection serves every thread, under a lock: SQLite allows one writer at
    a time anyway, and each call is short. Reads page through an index, so start-up
    and every call cost the same whether the catalog holds a thousand products or
    millions. The database is created by the first write, never by `open`.
    """

    name = "sqlite"
    durable_on_record = True

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.path = data_dir / DB_FILE
        self.wal_path = data_dir / f"{DB_FILE}-wal"
        self._lock = threading.Lock()
        self._claim_lock = threading.Lock()
        # Saved images wait here for the next transaction: one per image cost
        # about 1 ms of the engine's main thread (see record_image).
        self._images: list[tuple[Any, ...]] = []
        self._images_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._has_schema = False  # False for a database still without tables
        self._prepared = False  # WAL mode and tables checked since the last open
        self._unsynced = False  # an image was committed without a sync since
        self._last_claimed = 0

    @classmethod
    def owned_paths(cls, data_dir: Path) -> list[Path]:
        db = data_dir / DB_FILE
        companions = ("-wal", "-shm", "-journal")
        return [db, *(db.with_name(db.name + suffix) for suffix in companions)]

    def open(self, product_key: ProductKey) -> None:
        # Ids are stored beside their records, so product_key is not needed.
        with self._lock:
            self._disconnect()
            self._last_claimed = 0
            if not self.path.exists():
                self._refuse_orphan_wal()
                return
            self._conn, self._has_schema = self._connect(create=False)

    def close(self) -> None:
        if self._images:
            # Advisory rows: worth keeping, not worth failing a close for.
            with contextlib.suppress(ImgfetchError):
                with self._write() as conn:
                    self._write_images(conn)
        with self._lock:
            self._disconnect()

    # -- labels --------------------------------------------------------------------

    @property
    def mapping_label(self) -> str:
        return self.path.name

    @property
    def pending_label(self) -> str:
        return str(self.path)

    @property
    def failures_label(self) -> str:
        return str(self.path)

    def pending_modified(self) -> float | None:
        # In WAL mode a commit changes the -wal file; the database itself changes
        # only when the log is copied back into it.
        times = []
        for path in (self.path, self.wal_path):
            with contextlib.suppress(OSError):
                times.append(path.stat().st_mtime)
        return max(times) if times else None

    # -- reading -------------------------------------------------------------------

    def is_completed(self, product_id: str) -> bool:
        return bool(self._query(SQL_IS_DONE, (_bind(product_id),)))

    def completed_count(self) -> int:
        return self._count(SQL_COMPLETED)

    def mapping_entry(self, product_id: str) -> Entry | None:
        rows = self._query(SQL_ENTRY, (_bind(product_id),))
        return self._entry(product_id, rows[0][0]) if rows else None

    def iter_mapping(self) -> Iterator[tuple[str, Entry]]:
        for _done_seq, pid, text in self._pages(SQL_MAPPING_PAGE):
            yield _text(pid), self._entry(_text(pid), text)

    def iter_pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for _seq, pid, text in self._pages(SQL_PENDING_PAGE):
            yield _text(pid), self._record(_text(pid), text)

    def pending_count(self) -> int:
        return self._count(SQL_PENDING_COUNT)

    def has_pending(self) -> bool:
        return bool(self._count(SQL_HAS_PENDING))

    def failures(self) -> dict[str, list[Failure]]:
        found: dict[str, list[Failure]] = {}
        for pid, category, index, url, reason, attempts in self._query(SQL_FAILURES):
            failure = {
                "category": category,
                "index": index,
                "url": _text(url),
                "reason": _text(reason),
                "attempts": attempts,
            }
            try:
                item = checked_failure(Failure.from_json(failure))
            except ValueError as exc:
                raise StateError(
                    "failures_damaged",
                    hint="damaged_db",
                    path=self.path,
                    pid=_text(pid),
                    reason=reason_of(exc),
                ) from None
            found.setdefault(_text(pid), []).append(item)
        return found

    def failure_count(self) -> int:
        return self._count(SQL_FAILURE_COUNT)

    def saved_images(self, product_id: str) -> dict[tuple[str, int], SavedSlot]:
        if self._images:
            with self._write() as conn:
                self._write_images(conn)
        saved = {}
        for category, index, url, relpath in self._query(
            SQL_SAVED, (_bind(product_id),)
        ):
            try:
                if not isinstance(index, int) or not isinstance(relpath, str):
                    raise InvalidRecord("failure_types")
                # The category and index name the file, as for a failure.
                checked_failure(Failure(category, index, _text(url), ""))
            except ValueError as exc:
                raise StateError(
                    "saved_image_damaged",
                    hint="damaged_db",
                    path=self.path,
                    pid=product_id,
                    reason=reason_of(exc),
                ) from None
            saved[(category, index)] = SavedSlot(_text(url), relpath)
        return saved

    # -- writing -------------------------------------------------------------------

    def add_pending(self, products: Iterable[tuple[str, dict[str, Any]]]) -> None:
        rows = ((_bind(pid), _dumps(raw)) for pid, raw in products)
        with self._write() as conn:
            # One transaction for the whole catalog: a commit per product would
            # cost a disk sync each.
            conn.executemany(SQL_ADD_PENDING, rows)

    def record_image(
        self, product_id: str, category: str, index: int, url: str, relpath: str
    ) -> None:
        row = (_bind(product_id), category, index, _bind(url), relpath)
        # Advisory (see StateStore): written with the next record or flush, so
        # that an image costs an append and not a transaction.
        with self._images_lock:
            self._images.append(row)

    def _write_images(self, conn: sqlite3.Connection) -> None:
        with self._images_lock:
            rows, self._images = self._images, []
        conn.executemany(SQL_RECORD_IMAGE, rows)

    def record_product(
        self, product_id: str, entry: Entry, failures: list[Failure]
    ) -> None:
        self.record_many([(product_id, entry, failures)])

    def record_many(self, products: Iterable[tuple[str, Entry, list[Failure]]]) -> None:
        rows = []
        for product_id, entry, failures in products:
            pid = _bind(product_id)
            failed = [
                (pid, f.category, f.index, _bind(f.url), _bind(f.reason), f.attempts)
                for f in failures
            ]
            rows.append((pid, _dumps(entry), failed))
        if not rows:
            return
        with self._write() as conn:
            self._write_images(conn)
            for pid, entry_json, failed in rows:
                conn.execute(SQL_RECORD_PRODUCT, (pid, entry_json))
                # The entry names the saved images now.
                conn.execute(SQL_DROP_IMAGES, (pid,))
                conn.execute(SQL_DROP_FAILURES, (pid,))
                conn.executemany(SQL_ADD_FAILURE, failed)

    def flush(self) -> None:
        # Everything but images is synced already. A run that recorded nothing
        # still creates the database, so the closing report names a file that
        # exists.
        if self._images:
            with self._write() as conn:
                self._write_images(conn)
        with self._lock, self._errors(writing=True):
            self._writable()
            if self._unsynced:
                self._sync_log()

    def claim(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        with self._claim_lock:
            rows = self._claim_rows((self._last_claimed, max(limit, 0)))
            if rows:
                self._last_claimed = rows[-1][0]
        return [(_text(pid), self._record(_text(pid), text)) for _, pid, text in rows]

    def _claim_rows(self, params: tuple[int, int]) -> list[Row]:
        try:
            found = self._query(SQL_CLAIM, params)
            rows = json.loads(found[0][0]) if found else []
        except (sqlite3.Error, ValueError, TypeError):
            # A BLOB id or record (lone surrogates), a damaged row, or an SQLite
            # without JSON functions: row by row, which reports what is wrong.
            return self._query(SQL_PENDING_PAGE, params)
        rows.sort(key=lambda row: row[0])
        return rows

    # -- the connection ------------------------------------------------------------

    def _connect(self, create: bool) -> tuple[sqlite3.Connection, bool]:
        """A connection to the database and whether it has imgfetch's tables;
        StateError when the file is not an imgfetch database of this version."""
        with self._errors(writing=create):
            conn = sqlite3.connect(
                self._uri(create),
                uri=True,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # transactions are begun explicitly
                check_same_thread=False,  # shared by threads, under self._lock
            )
        try:
            with self._errors(writing=create):
                # FULL syncs the log at every commit. NORMAL, the usual choice
                # with WAL, survives a killed process but can lose the last
                # commits on power loss, and the contract promises that a recorded
                # product survives both.
                conn.execute("PRAGMA synchronous = FULL")
                # A completed product's input record (which may hold a password
                # in a URL) is cleared; without this, builds compiled without
                # SQLITE_SECURE_DELETE leave its bytes in the file's free space.
                conn.execute("PRAGMA secure_delete = ON")
                return conn, self._check_schema(conn)
        except BaseException:
            conn.close()
            raise

    def _uri(self, create: bool) -> str:
        uri = self.path.absolute().as_uri()
        if create:
            return f"{uri}?mode=rwc"
        if not _read_only_mount(self.data_dir):
            # mode=rw: open must never create the file, even if it vanished just now.
            return f"{uri}?mode=rw"
        # A read-only mount (a snapshot, a backup) cannot hold the -shm file that
        # a reader of a WAL database makes. Without a log, the database file is
        # the whole state and nothing can change it: it is opened as immutable.
        if self.wal_path.exists():
            return f"{uri}?mode=ro"
        return f"{uri}?mode=ro&immutable=1"

    def _check_schema(self, conn: sqlite3.Connection) -> bool:
        tables: dict[str, set[str]] = {}
        for table, column in conn.execute(
            "SELECT m.name, c.name FROM sqlite_master AS m,"
            " pragma_table_info(m.name) AS c WHERE m.type = 'table'"
        ):
            tables.setdefault(table, set()).add(column)
        if not tables:
            # Empty or zero bytes: a first write was killed before its commit.
            return False
        meta = {}
        if COLUMNS["meta"] <= tables.get("meta", set()):
            meta = dict(conn.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise StateError("state_foreign_db", hint="foreign_db", path=self.path)
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise StateError(
                "state_db_version",
                hint="db_version",
                path=self.path,
                version=meta.get("schema_version"),
                supported=SCHEMA_VERSION,
            )
        for table, columns in COLUMNS.items():
            missing = columns - tables.get(table, set())
            if missing:
                raise StateError(
                    "state_db_damaged",
                    hint="damaged_db",
                    path=self.path,
                    detail=f"{table}: no column {', '.join(sorted(missing))}",
                )
        return True

    def _writable(self) -> sqlite3.Connection:
        """The connection, ready to write: created, in WAL mode, with the tables."""
        created = False
        if self._conn is None:
            created = not self.path.exists()
            if created:
                self._refuse_orphan_wal()
            self._conn, self._has_schema = self._connect(create=True)
        conn = self._conn
        if not self._prepared:
            # WAL: a commit appends to one log file and a kill -9 at any point
            # leaves the database readable; readers never wait for the writer.
            # The mode is kept in the file, so this writes only the first time.
            conn.execute("PRAGMA journal_mode = WAL")
            if not self._has_schema:
                with _transaction(conn):
                    for statement in SCHEMA:
                        conn.execute(statement)
                    conn.executemany(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                        [("format", FORMAT), ("schema_version", str(SCHEMA_VERSION))],
                    )
                self._has_schema = True
            if created:
                # SQLite syncs the log's folder entry but not the database's.
                fsync_dir(self.data_dir)
            self._prepared = True
        return conn

    def _refuse_orphan_wal(self) -> None:
        """A log left without its database would be replayed into a new one."""
        with contextlib.suppress(OSError):
            if self.wal_path.stat().st_size > 0:
                raise StateError(
                    "state_orphan_wal", hint="orphan_wal", path=self.wal_path
                )

    def _disconnect(self) -> None:
        if self._conn is not None:
            # The last connection to close copies the log into the database and
            # removes it.
            self._conn.close()
            self._conn = None
        self._unsynced = False  # that copy syncs the log and the database
        self._has_schema = False
        self._prepared = False

    @contextlib.contextmanager
    def _write(self, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """One locked, committed transaction, synced to disk unless told not to;
        errors become imgfetch's."""
        with self._lock, self._errors(writing=True):
            conn = self._writable()
            if synced:
                with _transaction(conn):
                    yield conn
                # Syncing the log syncs every commit before this one as well.
                self._unsynced = False
                return
            conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with _transaction(conn):
                    yield conn
                self._unsynced = True
            finally:
                conn.execute("PRAGMA synchronous = FULL")

    def _sync_log(self) -> None:
        """Sync what unsynced commits appended to the log."""
        try:
            fd = os.open(self.wal_path, os.O_RDWR)
        except FileNotFoundError:
            # No log: a checkpoint copied it into the database, which it syncs.
            self._unsynced = False
            return
        except OSError as exc:
            raise _storage_error(self.data_dir, exc) from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _storage_error(self.data_dir, exc) from exc
        finally:
            os.close(fd)
        self._unsynced = False

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Row]:
        with self._lock, self._errors(writing=False):
            if self._conn is None or not self._has_schema:
                return []
            return self._conn.execute(sql, params).fetchall()

    def _count(self, sql: str) -> int:
        rows = self._query(sql)
        return int(rows[0][0]) if rows else 0

    def _pages(self, sql: str) -> Iterator[Row]:
        """Rows of `sql` (key > ? ORDER BY key LIMIT ?), a page at a time; the
        lock is held only while a page is read, so writes go on in between."""
        last = 0
        while True:
            rows = self._query(sql, (last, PAGE))
            yield from rows
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    @contextlib.contextmanager
    def _errors(self, writing: bool) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            error = self._translate(exc, writing)
            if error is None:
                raise
            raise error from exc

    def _translate(
        self, exc: sqlite3.Error, writing: bool
    ) -> ImgfetchError | StoreBusy | None:
        """The error to raise for a failure of SQLite; None for a bug of ours."""
        extended = getattr(exc, "sqlite_errorcode", None) or 0
        code = extended & 0xFF
        detail = str(exc)
        if code in _BUSY_CODES:
            return StoreBusy(f"{self.path}: {detail}")
        if code == sqlite3.SQLITE_NOTADB:
            return StateError(
                "state_not_db", hint="damaged_db", path=self.path, detail=detail
            )
        if code == sqlite3.SQLITE_CORRUPT:
            return StateError(
                "state_db_damaged", hint="damaged_db", path=self.path, detail=detail
            )
        if extended in _SHM_CODES:
            return _storage_error(self.data_dir, f"{detail} ({self.path.name}-shm)")
        if code in _STORAGE_CODES and writing:
            return _storage_error(self.data_dir, detail)
        if code in _STORAGE_CODES:
            return StateError("state_unreadable", path=self.path, detail=detail)
        return None

    # -- stored values -------------------------------------------------------------

    def _entry(self, product_id: str, text: Any) -> Entry:
        try:
            entry = _loads(text)
        except ValueError:
            entry = None
        if not is_valid_entry(entry):
            raise StateError(
                "mapping_entry", hint="damaged_db", path=self.path, pid=product_id
            )
        return entry

    def _record(self, product_id: str, text: Any) -> dict[str, Any]:
        try:
            record = _loads(text)
            if not isinstance(record, dict):
                raise InvalidRecord("not_object", kind=type(record).__name__)
        except ValueError as exc:
            raise StateError(
                "pending_damaged",
                hint="damaged_db",
                path=self.path,
                pid=product_id,
                reason=reason_of(exc),
            ) from None
        return record


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # no statvfs (Windows), or no folder
        return False


def _storage_error(data_dir: Path, detail: OSError | str) -> StorageError:
    if isinstance(detail, OSError):
        detail = detail.strerror or str(detail)
    return StorageError("write_state", hint="free_space", path=data_dir, detail=detail)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock at once, so a busy database fails here,
    # before any work, rather than at the first write inside.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # A full disk or an I/O error may already have rolled it back.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _bind(text: str) -> str | bytes:
    """A string as SQLite can store it.

    json.loads turns "\\ud800" into a lone surrogate, which UTF-8 cannot encode;
    such a string is stored as a BLOB of its surrogate-passing bytes instead. A
    BLOB never equals a TEXT, so the two forms cannot collide as ids.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def _text(value: Any) -> Any:
    """The reverse of `_bind`; other values are left for the caller to check."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace")


def _dumps(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if isinstance(_bind(text), bytes):
        # Lone surrogates: escaped as \\udXXX they read back the same.
        return json.dumps(value, separators=(",", ":"))
    return text


def _loads(text: Any) -> Any:
    if not isinstance(text, str):
        raise InvalidRecord("not_object", kind=type(text).__name__)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRecord("invalid_json", detail=exc.msg) from None
    except RecursionError:
        raise InvalidRecord("too_deep") from None
    except ValueError:  # an integer beyond Python's int-from-text digit limit
        raise InvalidRecord("too_many_digits") from None
