"""The markers store: one small file per completed product, fanned out by hash."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog import InvalidRecord, reason_of
from ..errors import StateError, StorageError
from ..fsutil import (
    BATCH_SYNC,
    atomic_write_bytes,
    create_temp_beside,
    fsync_dir,
    sync_filesystem,
    write_all,
)
from ..messages import Text
from .base import Entry, Failure, ProductKey, StateStore
from .state_files import checked_failure, is_valid_entry, load_state_json

MARKERS_DIR = "markers"
# Products per pending batch file, and batch files per pending folder.
BATCH = 1000
# Threads that write a batch of markers. Written one by one, every marker needs
# an fsync of its own, and file systems commit fsyncs that arrive together in
# one journal write: a few writers make a batch 3 to 6 times faster on ext4.
# Synced together, the writers' waits (for the journal, for the GIL after each
# call into the file system) overlap.
WRITERS = 8
# From this many products on, a record_many writes its markers without an fsync
# each and makes them durable with a few syncs of the whole file system (see
# `_write_synced_together`): during a run, every fsync of a marker made ext4 commit
# its journal with the images written since the last one, and a batch of a
# thousand markers took seconds. Linux only: there, sync and syncfs return once
# the data is on disk.
SYNC_TOGETHER_FROM = 8
SYNC_TOGETHER = BATCH_SYNC and sys.platform.startswith("linux")
# With this many products pending, every fan-out folder of done/ will be used:
# they are all made while planning, so that no record during the run pays for
# a new folder (its first marker cost twice the others).
PREPARE_FOLDERS_FROM = 20_000

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
    when they are read. What the listing found is kept as 64-bit prefixes of the
    hashes, so that asking whether a product is completed costs a stat only for
    products that may be: the planning step asks it for every product of the
    catalog, and claim for every product it hands out.
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
        # Prefixes (`_short`) of every product that has, or may have, a done
        # marker (a failed copy): the listing at open, then every product before
        # its marker is written. None before open: every question is a stat.
        self._maybe_done: set[int] | None = None
        self._maybe_failed: set[int] | None = None
        self._folders_ready = False

    @classmethod
    def owned_paths(cls, data_dir: Path) -> list[Path]:
        return [data_dir / MARKERS_DIR]

    # -- reading -----------------------------------------------------------------

    def open(self, product_key: ProductKey) -> None:
        # The ids are inside the markers: product_key is not needed.
        self._known, self._sweep, self._claim_cache = None, None, None
        self._completed = 0
        self._folders_ready = False
        self._claim_next = (0, 0)
        maybe_done: set[int] = set()
        for digest in _markers(self.done_dir):
            maybe_done.add(_short(digest))
            self._completed += 1
        self._maybe_done, self._maybe_failed = maybe_done, set()
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
        return self._is_done(_digest(product_id))

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
                if not self._is_done(_digest(pid)):
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
            if self._maybe_failed is not None:
                self._maybe_failed.add(_short(digest))
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
                if key in known or key in keys or self._is_done(digest):
                    continue
                items.append({"id": pid, "record": raw})
                keys.add(key)
                if len(items) == BATCH:
                    self._write_batch(items, keys)
                    items, keys = [], set()
            if items:
                self._write_batch(items, keys)
            if self._live >= PREPARE_FOLDERS_FROM and not self._folders_ready:
                self._prepare_folders()

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
            newly = {digest: not self._is_done(digest) for digest in latest}
            self._note_written(latest)
            if SYNC_TOGETHER and len(latest) >= SYNC_TOGETHER_FROM:
                self._write_synced_together(latest, newly)
                return
            if len(latest) == 1:
                [(digest, done)] = latest.items()
                self._write_done(digest, *done)
                self._count_done(digest, newly[digest])
                return
            workers = min(WRITERS, len(latest))
            with ThreadPoolExecutor(workers, "imgfetch-markers") as pool:
                futures = {
                    digest: pool.submit(self._write_done, digest, *done)
                    for digest, done in latest.items()
                }
            self._count_all(futures, newly)

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
                    if not self._is_done(_digest(pid)):
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
            self._make_folders(path.parent)
            for folder in [path.parent, *path.parent.parents]:
                if folder == self.data_dir:
                    break
                fsync_dir(folder.parent)
            atomic_write_bytes(path, data)

    def _prepare_folders(self) -> None:
        """Make every fan-out folder of done/ that is missing, durably."""
        names = {f"{number:03x}" for number in range(16**3)}
        missing = [
            self.done_dir / name
            for name in sorted(names - set(_listdir(self.done_dir)))
        ]
        if missing:
            self._make_folders(missing[0])  # and done/ itself
            with ThreadPoolExecutor(WRITERS, "imgfetch-markers") as pool:
                list(pool.map(self._make_folders, missing[1:]))
            # One sync of each level makes them all durable, so a marker written
            # on its own later needs only its own syncs (see _write).
            fsync_dir(self.done_dir)
            fsync_dir(self.root)
        self._folders_ready = True

    def _make_folders(self, folder: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            folder.mkdir(exist_ok=True)  # a new fan-out folder: its parents exist
            return
        # Folders below the data directory only: one deleted mid-run must not
        # come back holding markers of images that were deleted with it.
        below = folder.relative_to(self.data_dir).parts
        for depth in range(1, len(below) + 1):
            self.data_dir.joinpath(*below[:depth]).mkdir(exist_ok=True)

    def _write_synced_together(
        self, latest: dict[str, Done], newly: dict[str, bool]
    ) -> None:
        """Write many products' markers with two or three syncs in all.

        The order `_write_done` keeps for one product holds for the batch: every
        file's data is on disk before its name, and a failed copy before its done
        marker. A kill at any point leaves each marker whole or absent (and
        temporary files, which the next run removes).
        """
        failed: list[_Staged] = []
        done: list[_Staged] = []
        clean: list[Path] = []
        for digest, (pid, entry, failures) in latest.items():
            stored = [failure.to_json() for failure in failures]
            if failures:
                copy = {"id": pid, "failures": stored}
                failed.append(_Staged(digest, self._failed_path(digest), _encode(copy)))
            elif self._may_have_failed(digest):
                clean.append(self._failed_path(digest))
            marker = {"id": pid, "entry": entry, "failures": stored}
            done.append(_Staged(digest, self._done_path(digest), _encode(marker)))
        try:
            with ThreadPoolExecutor(WRITERS, "imgfetch-markers") as pool:
                _each(pool, self._stage, failed + done)
                sync_filesystem(self.root)
                if failed:
                    _each(pool, _Staged.move, failed)
                    sync_filesystem(self.root)
                _each(pool, _Staged.move, done)
                sync_filesystem(self.root)
        except BaseException:
            for staged in failed + done:
                staged.discard()
            raise
        finally:
            for staged in done:
                if staged.moved:
                    self._count_done(staged.digest, newly[staged.digest])
        for target in clean:
            target.unlink(missing_ok=True)

    def _stage(self, staged: _Staged) -> None:
        """Write `staged` into a temporary file beside its path, not synced yet."""
        try:
            fd, staged.temp = create_temp_beside(staged.path)
        except FileNotFoundError:  # the first marker of its folder
            self._make_folders(staged.path.parent)
            fd, staged.temp = create_temp_beside(staged.path)
        try:
            write_all(fd, staged.data)
        finally:
            os.close(fd)

    def _write_done(
        self, digest: str, pid: str, entry: Entry, failures: list[Failure]
    ) -> None:
        """Write one product's markers, each synced on its own."""
        done, failed = self._done_path(digest), self._failed_path(digest)
        stored = [failure.to_json() for failure in failures]
        if failures:
            self._write(failed, {"id": pid, "failures": stored})
        self._write(done, {"id": pid, "entry": entry, "failures": stored})
        if not failures and self._may_have_failed(digest):
            failed.unlink(missing_ok=True)

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
                        live += not self._is_done(digest)
            self._known, self._live = known, live
        return self._known

    def _is_done(self, digest: str) -> bool:
        """Whether the product's done marker exists: a stat only when it may."""
        if self._maybe_done is not None and _short(digest) not in self._maybe_done:
            return False
        return self._done_path(digest).exists()

    def _may_have_failed(self, digest: str) -> bool:
        return self._maybe_failed is None or _short(digest) in self._maybe_failed

    def _note_written(self, latest: dict[str, Done]) -> None:
        # Before the markers are written: a write that fails halfway may leave
        # one, and a prefix too many costs only a stat.
        if self._maybe_done is not None:
            self._maybe_done.update(_short(digest) for digest in latest)
        if self._maybe_failed is not None:
            self._maybe_failed.update(
                _short(digest) for digest, done in latest.items() if done[2]
            )

    def _count_done(self, digest: str, newly: bool) -> None:
        if newly:
            self._completed += 1
            if self._known is not None and bytes.fromhex(digest) in self._known:
                self._live -= 1

    def _count_all(
        self, futures: dict[str, Future[None]], newly: dict[str, bool]
    ) -> None:
        # Count every write that succeeded before raising the first error.
        error: Exception | None = None
        for digest, future in futures.items():
            try:
                future.result()
                self._count_done(digest, newly[digest])
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
            while waiting and self._is_done(waiting[0]):
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


@dataclass(slots=True)
class _Staged:
    """One marker of a batch on its way to its path."""

    digest: str
    path: Path
    data: bytes  # encoded by the calling thread: the writers only make files
    temp: str | None = None
    moved: bool = False

    def move(self) -> None:
        assert self.temp is not None
        os.replace(self.temp, self.path)
        self.moved = True

    def discard(self) -> None:
        if self.temp is not None and not self.moved:
            with contextlib.suppress(OSError):
                os.unlink(self.temp)


def _each(
    pool: ThreadPoolExecutor, action: Callable[[_Staged], None], items: list[_Staged]
) -> None:
    """`action` on every item, a share of them on each thread of `pool`; the
    first error is raised once every thread has stopped."""
    shares = [items[start::WRITERS] for start in range(WRITERS)]
    futures = [pool.submit(_each_of, action, share) for share in shares if share]
    for future in futures:
        future.exception()  # waits
    for future in futures:
        future.result()


def _each_of(action: Callable[[_Staged], None], share: list[_Staged]) -> None:
    for item in share:
        action(item)


def _digest(product_id: str) -> str:
    # surrogatepass: ids read from JSON may hold lone surrogates ("\ud800").
    return hashlib.sha256(product_id.encode("utf-8", "surrogatepass")).hexdigest()


def _short(digest: str) -> int:
    # 64 bits of the hash: a set of a million costs about 70 MB, and two
    # products that share a prefix only cost a stat.
    return int(digest[:16], 16)


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
