"""The markers store: one small file per completed product, fanned out by hash."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..catalog import InvalidRecord, reason_of
from ..errors import StateError, StorageError
from ..fsutil import atomic_write_bytes, fsync_dir
from ..messages import Text
from .base import Entry, Failure, ProductKey, StateStore
from .state_files import checked_failure, is_valid_entry, load_state_json

MARKERS_DIR = "markers"
# Products per pending batch file, and batch files per pending folder.
BATCH = 1000
# Every marker needs an fsync of its own. File systems commit fsyncs that arrive
# together in one journal write, so a few writers at once make a batch of records
# several times faster (3 to 6 times on ext4) than one writer.
WRITERS = 8

_FANOUT = re.compile(r"[0-9a-f]{3}")
_MARKER = re.compile(r"([0-9a-f]{64})\.json")
_BATCH_FOLDER = re.compile(r"[0-9]{6,}")
_BATCH_FILE = re.compile(r"([0-9]{9,})\.json")

Done = tuple[str, Entry, list[Failure]]


class MarkersStore(StateStore):
    """Keeps state in small files under DATA_DIR/markers/ (h: sha256 of the id).

    - `done/<h[:3]>/<h>.json`, {"id", "entry", "failures"}: the product is
      completed. The only truth for its entry and its failures.
    - `failed/<h[:3]>/<h>.json`, {"id", "failures"}: a copy for people to read and
      the index `failures()` starts from. Written before the done marker and
      removed after it, so it names a superset of the failed products.
    - `pending/<b // 1000>/<b>.json`, [{"id", "record"}, ...]: batch number b of
      up to 1000 products added as pending, in order; never rewritten.

    A product is pending while a batch holds it and it has no done marker: done
    always wins. Recording writes only the product's own markers, so it costs the
    same at the millionth product as at the first, and a kill -9 between two
    writes leaves nothing a reader has to repair. `flush` deletes the batches
    whose products are all done, and failed copies that a kill left stale. At a
    million products, done/ and failed/ hold 4096 folders of about 250 files;
    pending/ holds at most 1000 folders of 1000 batches.

    `open` only lists folders (to count completed products and find the batches)
    and reads the done markers of failed products; other markers are checked
    when they are read.
    """

    name = "markers"
    durable_on_record = True

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.root = data_dir / MARKERS_DIR
        self.done_dir = self.root / "done"
        self.failed_dir = self.root / "failed"
        self.pending_dir = self.root / "pending"
        # Writers hold _lock: they share batch numbers, counters and the sweep.
        self._lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._notes_lock = threading.Lock()
        self._completed = 0
        self._batches: list[int] = []  # pending batch files on disk, in order
        self._next_batch = 0
        # Ids (sha256) of the products in pending batches, and how many of them
        # are not completed: read from the batches the first time they are needed.
        self._known: set[bytes] | None = None
        self._live = 0
        # The oldest batch, and those of its ids not yet seen completed.
        self._sweep: tuple[int, deque[str]] | None = None
        self._claim_next = (0, 0)  # (batch, position) where the next claim starts
        self._claim_cache: tuple[int, list[tuple[str, dict[str, Any]]]] | None = None
        self._stale_failed: set[str] = set()

    @classmethod
    def owned_paths(cls, data_dir: Path) -> list[Path]:
        return [data_dir / MARKERS_DIR]

    # -- reading -----------------------------------------------------------------

    def open(self, product_key: ProductKey) -> None:
        # The ids are inside the markers: product_key is not needed.
        self._known, self._sweep, self._claim_cache = None, None, None
        self._claim_next = (0, 0)
        self._completed = sum(1 for _ in _markers(self.done_dir))
        self._batches = sorted(number for number, _ in self._batch_files())
        self._next_batch = self._batches[-1] + 1 if self._batches else 0
        # Reads the done markers of failed products: a damaged one stops the run
        # here rather than at its end, when the summary counts failures.
        self.failures()

    @property
    def mapping_label(self) -> str:
        return str(self.done_dir)

    @property
    def pending_label(self) -> str:
        return str(self.pending_dir)

    @property
    def failures_label(self) -> str:
        return str(self.failed_dir)

    def pending_modified(self) -> float | None:
        batches = self._batches
        if not batches:
            return None
        try:
            return self._batch_path(batches[-1]).stat().st_mtime
        except OSError:
            return None

    def is_completed(self, product_id: str) -> bool:
        return self._done_path(_digest(product_id)).exists()

    def completed_count(self) -> int:
        return self._completed

    def mapping_entry(self, product_id: str) -> Entry | None:
        digest = _digest(product_id)
        done = _read_done(self._done_path(digest), digest)
        return None if done is None else done[1]

    def iter_mapping(self) -> Iterator[tuple[str, Entry]]:
        for digest in _markers(self.done_dir):
            done = _read_done(self._done_path(digest), digest)
            if done is not None:
                yield done[0], done[1]

    def iter_pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for _number, items in self._iter_batches():
            for pid, raw in items:
                if not self.is_completed(pid):
                    yield pid, raw

    def pending_count(self) -> int:
        with self._lock:
            self._index()
            return self._live

    def has_pending(self) -> bool:
        return bool(self._batches)

    def failures(self) -> dict[str, list[Failure]]:
        found: dict[str, list[Failure]] = {}
        for digest in _markers(self.failed_dir):
            done = _read_done(self._done_path(digest), digest)
            if done is not None and done[2]:
                found[done[0]] = done[2]
            else:
                # Left by a kill between the two writes of a record: flush removes it.
                with self._notes_lock:
                    self._stale_failed.add(digest)
        return found

    # -- writing -----------------------------------------------------------------

    def add_pending(self, products: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self._writing():
            known = self._index()
            items: list[dict[str, Any]] = []
            keys: set[bytes] = set()
            for pid, raw in products:
                digest = _digest(pid)
                key = bytes.fromhex(digest)
                if key in known or key in keys or self._done_path(digest).exists():
                    continue
                items.append({"id": pid, "record": raw})
                keys.add(key)
                if len(items) == BATCH:
                    self._write_batch(items, keys)
                    items, keys = [], set()
            if items:
                self._write_batch(items, keys)

    def record_product(
        self, product_id: str, entry: Entry, failures: list[Failure]
    ) -> None:
        self.record_many([(product_id, entry, failures)])

    def record_many(self, products: Iterable[tuple[str, Entry, list[Failure]]]) -> None:
        # The last record of a product wins, as if they were recorded one by one.
        latest: dict[str, Done] = {}
        for pid, entry, failures in products:
            latest[_digest(pid)] = (pid, entry, sorted(failures, key=_failure_order))
        if not latest:
            return
        with self._writing():
            if len(latest) == 1:
                [(digest, done)] = latest.items()
                self._count_done(digest, self._write_done(digest, *done))
                return
            workers = min(WRITERS, len(latest))
            with ThreadPoolExecutor(workers, "imgfetch-markers") as pool:
                futures = {
                    digest: pool.submit(self._write_done, digest, *done)
                    for digest, done in latest.items()
                }
            self._count_all(futures)

    def flush(self) -> None:
        # Every record is durable already; what is left is tidying up.
        with self._writing():
            self._drop_stale_failed()
            self._sweep_batches()

    # -- handing out work ----------------------------------------------------------

    def claim(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        batch: list[tuple[str, dict[str, Any]]] = []
        if limit < 1:
            return batch
        with self._claim_lock:
            batches = list(self._batches)
            start = bisect.bisect_left(batches, self._claim_next[0])
            for number in batches[start:]:
                items = self._claimable(number)
                first = self._claim_next[1] if number == self._claim_next[0] else 0
                for position in range(first, len(items)):
                    self._claim_next = (number, position + 1)
                    pid, raw = items[position]
                    if not self.is_completed(pid):
                        batch.append((pid, raw))
                        if len(batch) == limit:
                            return batch
                self._claim_next = (number + 1, 0)
        return batch

    def _claimable(self, number: int) -> list[tuple[str, dict[str, Any]]]:
        # A claim of 64 should not parse a batch of 1000 products again each time.
        if self._claim_cache is None or self._claim_cache[0] != number:
            items = _read_batch(self._batch_path(number)) or []
            self._claim_cache = (number, items)
        return self._claim_cache[1]

    # -- paths and files -----------------------------------------------------------

    def _done_path(self, digest: str) -> Path:
        return self.done_dir / digest[:3] / f"{digest}.json"

    def _failed_path(self, digest: str) -> Path:
        return self.failed_dir / digest[:3] / f"{digest}.json"

    def _batch_path(self, number: int) -> Path:
        return self.pending_dir / f"{number // BATCH:06d}" / f"{number:09d}.json"

    def _batch_files(self) -> Iterator[tuple[int, Path]]:
        for folder in _listdir(self.pending_dir):
            if not _BATCH_FOLDER.fullmatch(folder):
                continue
            for name in _listdir(self.pending_dir / folder):
                match = _BATCH_FILE.fullmatch(name)
                # Only files where _batch_path looks for them count, as for markers.
                if match and int(match[1]) // BATCH == int(folder):
                    yield int(match[1]), self.pending_dir / folder / name

    def _iter_batches(self) -> Iterator[tuple[int, list[tuple[str, dict[str, Any]]]]]:
        for number in list(self._batches):
            items = _read_batch(self._batch_path(number))
            if items is not None:  # None: swept since the list was copied
                yield number, items

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the writers' lock; report file-system errors as StorageError."""
        with self._lock:
            try:
                yield
            except OSError as exc:
                raise StorageError(
                    "write_state",
                    hint="free_space",
                    path=self.root,
                    detail=exc.strerror or exc,
                ) from exc

    def _write(self, path: Path, value: Any) -> None:
        data = _encode(value)
        try:
            atomic_write_bytes(path, data)
        except FileNotFoundError:
            # The first marker of its folder (open makes no folders). Another
            # writer may be making the same folder at this moment: sync every level
            # up to the data directory either way, or this marker might not be
            # durable when the call returns.
            # Folders below the data directory only: one deleted mid-run must not
            # come back holding markers of images that were deleted with it.
            below = path.parent.relative_to(self.data_dir).parts
            for depth in range(1, len(below) + 1):
                self.data_dir.joinpath(*below[:depth]).mkdir(exist_ok=True)
            for folder in [path.parent, *path.parent.parents]:
                if folder == self.data_dir:
                    break
                fsync_dir(folder.parent)
            atomic_write_bytes(path, data)

    def _write_done(
        self, digest: str, pid: str, entry: Entry, failures: list[Failure]
    ) -> bool:
        """Write one product's markers; True when it was not completed before."""
        done, failed = self._done_path(digest), self._failed_path(digest)
        was_done = done.exists()
        stored = [failure.to_json() for failure in failures]
        if failures:
            self._write(failed, {"id": pid, "failures": stored})
        self._write(done, {"id": pid, "entry": entry, "failures": stored})
        if not failures:
            failed.unlink(missing_ok=True)
        return not was_done

    def _write_batch(self, items: list[dict[str, Any]], keys: set[bytes]) -> None:
        number = self._next_batch
        self._write(self._batch_path(number), items)
        self._next_batch += 1
        self._batches.append(number)
        self._index().update(keys)
        self._live += len(items)

    # -- bookkeeping (callers hold _lock) ------------------------------------------

    def _index(self) -> set[bytes]:
        """Ids of the products in pending batches, read from them once."""
        if self._known is None:
            known: set[bytes] = set()
            live = 0
            for _number, items in self._iter_batches():
                for pid, _raw in items:
                    digest = _digest(pid)
                    key = bytes.fromhex(digest)
                    if key not in known:
                        known.add(key)
                        live += not self._done_path(digest).exists()
            self._known, self._live = known, live
        return self._known

    def _count_done(self, digest: str, newly: bool) -> None:
        if newly:
            self._completed += 1
            if self._known is not None and bytes.fromhex(digest) in self._known:
                self._live -= 1

    def _count_all(self, futures: dict[str, Future[bool]]) -> None:
        # Count every write that succeeded before raising the first error.
        error: Exception | None = None
        for digest, future in futures.items():
            try:
                self._count_done(digest, future.result())
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    def _drop_stale_failed(self) -> None:
        with self._notes_lock:
            stale, self._stale_failed = self._stale_failed, set()
        for digest in stale:
            done = _read_done(self._done_path(digest), digest)
            if done is None or not done[2]:
                self._failed_path(digest).unlink(missing_ok=True)

    def _sweep_batches(self) -> None:
        """Delete the oldest batches while all their products are completed."""
        swept = 0
        for number in self._batches:
            if self._sweep is None or self._sweep[0] != number:
                items = _read_batch(self._batch_path(number)) or []
                self._sweep = (number, deque(_digest(pid) for pid, _ in items))
            waiting = self._sweep[1]
            # Products finish roughly in order: stop at the first one still pending.
            while waiting and self._done_path(waiting[0]).exists():
                waiting.popleft()
            if waiting:
                break
            self._batch_path(number).unlink(missing_ok=True)
            swept += 1
        if not swept:
            return
        gone = self._batches[:swept]
        del self._batches[:swept]
        if not self._batches:
            # Nothing pending: remove the folders too, with any temporary file a
            # killed write left in them.
            shutil.rmtree(self.pending_dir, ignore_errors=True)
            return
        current = self._batches[0] // BATCH
        for folder in sorted({number // BATCH for number in gone} - {current}):
            with contextlib.suppress(OSError):  # not empty: a temporary file
                (self.pending_dir / f"{folder:06d}").rmdir()


def _digest(product_id: str) -> str:
    # surrogatepass: ids read from JSON may hold lone surrogates ("\ud800").
    return hashlib.sha256(product_id.encode("utf-8", "surrogatepass")).hexdigest()


def _failure_order(failure: Failure) -> tuple[str, int]:
    return failure.category, failure.index


def _encode(value: Any) -> bytes:
    try:
        return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate has no UTF-8 form; escaped as \ud800 it round-trips.
        return (json.dumps(value) + "\n").encode("ascii")


def _listdir(folder: Path) -> list[str]:
    """The names in `folder`, sorted; none when it does not exist (yet or any more)."""
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StateError("state_unreadable", path=folder, detail=exc.strerror) from None


def _markers(root: Path) -> Iterator[str]:
    """The hash of every `<h[:3]>/<h>.json` under `root`, in hash order.

    Other names (temporary files of a killed write, an editor's backups) are not
    markers, for every reader alike.
    """
    for folder in _listdir(root):
        if _FANOUT.fullmatch(folder):
            for name in _listdir(root / folder):
                match = _MARKER.fullmatch(name)
                if match and name.startswith(folder):
                    yield match[1]


def _read_done(path: Path, digest: str) -> Done | None:
    """A done marker's id, entry and failures; None when there is none."""
    data = load_state_json(path, dict, Text("shape_marker"))
    if data is None:
        return None
    pid = data.get("id")
    if not isinstance(pid, str):
        raise StateError("marker_field", hint="damaged", path=path, field="id")
    if _digest(pid) != digest:
        # Renamed or copied by hand: is_completed would look for it elsewhere.
        raise StateError("marker_misplaced", hint="damaged", path=path, pid=pid)
    entry = data.get("entry")
    if not is_valid_entry(entry):
        raise StateError("mapping_entry", hint="damaged", path=path, pid=pid)
    try:
        items = data.get("failures", [])
        if not isinstance(items, list):
            raise InvalidRecord("not_list")
        failures = [checked_failure(Failure.from_json(item)) for item in items]
    except ValueError as exc:
        raise StateError(
            "failures_damaged",
            hint="damaged",
            path=path,
            pid=pid,
            reason=reason_of(exc),
        ) from None
    return pid, entry, sorted(failures, key=_failure_order)


def _read_batch(path: Path) -> list[tuple[str, dict[str, Any]]] | None:
    """The (id, record) pairs of a pending batch; None when it is gone."""
    items = load_state_json(path, list, Text("shape_products"))
    if items is None:
        return None
    batch = []
    for number, item in enumerate(items, start=1):
        pid = item.get("id") if isinstance(item, dict) else None
        raw = item.get("record") if isinstance(item, dict) else None
        if not isinstance(pid, str) or not isinstance(raw, dict):
            raise StateError(
                "state_record",
                hint="damaged",
                path=path,
                number=number,
                reason=Text("reason_pending_item"),
            )
        batch.append((pid, raw))
    return batch
