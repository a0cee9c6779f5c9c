"""The JSON-file store: the spec's image_mapping.json and pending_tasks.json."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..catalog import InvalidRecord, reason_of
from ..errors import StateError, StorageError
from ..fsutil import atomic_write_bytes, create_temp_beside, fsync_dir, write_all
from ..messages import Text
from ..paths import FAILED_FILE, MAPPING_FILE, PENDING_FILE
from .base import Entry, Failure, ProductKey, StateStore
from .state_files import checked_failure, is_valid_entry, load_state_json

# A pending file of up to this many products is rewritten at every save; a
# bigger one only when it changes in another way (see JsonStore).
SMALL_PENDING = 1000
# Items joined into one write when a file is written.
_WRITE_ITEMS = 1000


class JsonStore(StateStore):
    """Keeps all state in memory and rewrites the JSON files on `flush`.

    TODO(#3): a flush costs time in proportion to the mapping; stores with a
    flat cost per product are that issue's subject.

    Recorded means flushed: kill -9 loses what was recorded since the last flush
    (the engine flushes every few seconds), never what was flushed before.
    Mapping is written before pending, so a kill between the two leaves a product
    in both (harmless: completed wins) and never in neither.

    The pending file is rewritten at a flush only when products were added, when
    none remain (it is deleted), when it holds at most SMALL_PENDING products, or
    when half of those it holds are completed; and at `close`, the end of every
    command (the spec updates it at each interruption). Rewritten at every save,
    it made a save of a 100k-product catalog write 44 MB. In between, it may list
    products that the mapping holds, as after a kill: the mapping wins. Pending
    records are kept as their text in that file: as dicts, a 1M-product catalog
    held 2.9 GB.
    """

    name = "json"
    durable_on_record = False
    pending_is_file = True

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.mapping_path = data_dir / MAPPING_FILE
        self.pending_path = data_dir / PENDING_FILE
        self.failed_path = data_dir / FAILED_FILE
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._mapping: dict[str, Entry] = {}
        # A pending product's record as read from the pending file, or its text
        # in that file (every product added since): json.dumps with indent runs
        # in pure Python, so each text is made once and kept.
        self._pending: dict[str, dict[str, Any] | bytes] = {}
        # Each completed product's text in the mapping file, for the same reason.
        self._mapping_text: dict[str, bytes] = {}
        self._failures: dict[str, list[Failure]] = {}
        self._pending_on_disk = False
        self._failures_on_disk = False
        self._mapping_changed = False
        self._pending_changed = False  # products added since the file was written
        self._failures_changed = False
        self._pending_written = 0  # products in the pending file on disk
        self._pending_stale = 0  # of those, products completed since
        self._claim_order: Iterator[str] | None = None
        self._folder: tuple[int, int] | None = None  # the data directory at open

    @classmethod
    def owned_paths(cls, data_dir: Path) -> list[Path]:
        return [
            data_dir / MAPPING_FILE,
            data_dir / PENDING_FILE,
            data_dir / FAILED_FILE,
        ]

    def open(self, product_key: ProductKey) -> None:
        self._mapping = _load_mapping(self.mapping_path)
        self._mapping_text = {}
        self._failures = _load_failures(self.failed_path)
        self._failures_on_disk = self.failed_path.exists()
        raw_pending = load_state_json(self.pending_path, list, Text("shape_products"))
        self._pending_on_disk = raw_pending is not None
        pending = _index_pending(self.pending_path, raw_pending or [], product_key)
        self._pending = dict(pending)
        del raw_pending, pending
        self._pending_written = len(self._pending)
        # A kill between writing the mapping and the pending file leaves a product
        # in both; the mapping is the truth.
        finished = [pid for pid in self._pending if pid in self._mapping]
        for pid in finished:
            del self._pending[pid]
        # Rewrite (or delete) the pending file at the next flush, not here: open
        # never writes. A first run writes the mapping even when it stays empty.
        self._pending_stale = len(finished)
        self._pending_changed = self._failures_changed = False
        self._mapping_changed = not self.mapping_path.exists()
        self._claim_order = self._folder = None
        with contextlib.suppress(OSError):
            folder = os.stat(self.data_dir)
            self._folder = (folder.st_dev, folder.st_ino)

    @property
    def mapping_label(self) -> str:
        return self.mapping_path.name

    @property
    def pending_label(self) -> str:
        return str(self.pending_path)

    @property
    def failures_label(self) -> str:
        return str(self.failed_path)

    def pending_modified(self) -> float | None:
        try:
            return self.pending_path.stat().st_mtime
        except FileNotFoundError:
            return None

    def is_completed(self, product_id: str) -> bool:
        return product_id in self._mapping

    def completed_count(self) -> int:
        return len(self._mapping)

    def mapping_entry(self, product_id: str) -> Entry | None:
        entry = self._mapping.get(product_id)
        return None if entry is None else {k: list(v) for k, v in entry.items()}

    def iter_mapping(self) -> Iterator[tuple[str, Entry]]:
        with self._lock:
            items = list(self._mapping.items())
        for pid, entry in items:
            yield pid, {k: list(v) for k, v in entry.items()}

    def iter_pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            items = list(self._pending.items())
        for pid, value in items:
            yield pid, _record(value)

    def pending_count(self) -> int:
        return len(self._pending)

    def has_pending(self) -> bool:
        return self._pending_on_disk

    def failures(self) -> dict[str, list[Failure]]:
        with self._lock:
            return {pid: list(items) for pid, items in self._failures.items()}

    def add_pending(self, products: Iterable[tuple[str, dict[str, Any]]]) -> None:
        # Encoded outside the lock: a batch of 10,000 takes a while.
        texts = [
            (pid, item_text(pid, raw, keyed=False))
            for pid, raw in products
            if pid not in self._mapping and pid not in self._pending
        ]
        with self._lock:
            for pid, text in texts:
                if pid not in self._mapping and pid not in self._pending:
                    self._pending[pid] = text
                    self._pending_changed = True

    def record_product(
        self, product_id: str, entry: Entry, failures: list[Failure]
    ) -> None:
        with self._lock:
            self._mapping[product_id] = {k: list(v) for k, v in entry.items()}
            self._mapping_text.pop(product_id, None)
            if self._pending.pop(product_id, None) is not None:
                self._pending_stale += 1
            if failures:
                self._failures[product_id] = sorted(
                    failures, key=lambda f: (f.category, f.index)
                )
                self._failures_changed = True
            elif self._failures.pop(product_id, None) is not None:
                self._failures_changed = True
            self._mapping_changed = True

    def flush(self) -> None:
        self._save(tidy=False)

    def close(self) -> None:
        # The end of a command: the pending file lists exactly what is left. Not
        # worth failing a close for (the file is valid as it is), and never
        # written into a data directory that replaced the one opened. Only when
        # everything recorded was flushed: recorded means flushed, and a close
        # must not make durable what no flush did (the mapping is written before
        # the pending file, so tidying the one alone would lose products).
        with self._lock:
            unflushed = (
                self._mapping_changed or self._pending_changed or self._failures_changed
            )
        if unflushed or not (self._pending_stale and self._pending_on_disk):
            return
        with contextlib.suppress(StorageError, OSError):
            folder = os.stat(self.data_dir)
            if self._folder == (folder.st_dev, folder.st_ino):
                self._save(tidy=True)

    def _save(self, *, tidy: bool) -> None:
        # One save at a time: two concurrent saves could otherwise write their
        # snapshots in the wrong order and leave the older one on disk.
        with self._flush_lock:
            with self._lock:
                changes = _Changes(
                    mapping=self._mapping_changed,
                    failures=self._failures_changed
                    or bool(self._failures) != self._failures_on_disk,
                    pending=self._pending_due(tidy),
                    added=self._pending_changed,
                    stale=self._pending_stale,
                )
                if not (changes.mapping or changes.failures or changes.pending):
                    return
                mapping = pending = None
                if changes.mapping:
                    mapping = _texts(self._mapping, self._mapping_text, keyed=True)
                if changes.pending:
                    pending = self._pending_texts()
                    self._pending_changed, self._pending_stale = False, 0
                failures = None
                if changes.failures and self._failures:
                    failures = dump_json(
                        {
                            pid: [f.to_json() for f in items]
                            for pid, items in self._failures.items()
                        }
                    )
                self._mapping_changed = self._failures_changed = False
            try:
                self._write(mapping, pending, failures, changes.failures)
            except OSError as exc:
                with self._lock:  # written again by the next save
                    self._mapping_changed |= changes.mapping
                    self._failures_changed |= changes.failures
                    if changes.pending:
                        self._pending_changed |= changes.added
                        self._pending_stale += changes.stale
                raise StorageError(
                    "write_state",
                    hint="free_space",
                    path=self.data_dir,
                    detail=exc.strerror or exc,
                ) from exc

    def _pending_due(self, tidy: bool) -> bool:
        """Whether this save rewrites (or deletes) the pending file."""
        if not self._pending:
            return self._pending_on_disk
        if self._pending_changed or not self._pending_on_disk:
            return True
        if not self._pending_stale:
            return False
        return (
            tidy
            or len(self._pending) <= SMALL_PENDING
            or 2 * self._pending_stale >= self._pending_written
        )

    def _pending_texts(self) -> list[bytes]:
        """Every pending product's text; records read at open are encoded now
        and kept as text from then on."""
        texts = []
        for pid, value in self._pending.items():
            if not isinstance(value, bytes):
                value = self._pending[pid] = item_text(pid, value, keyed=False)
            texts.append(value)
        return texts

    def _write(
        self,
        mapping: list[bytes] | None,
        pending: list[bytes] | None,
        failures: bytes | None,
        write_failures: bool,
    ) -> None:
        if mapping is not None:
            _write_items(self.mapping_path, b"{", mapping, b"}")
        if write_failures:
            if failures is not None:
                atomic_write_bytes(self.failed_path, failures)
                self._failures_on_disk = True
            else:
                self.failed_path.unlink(missing_ok=True)
                self._failures_on_disk = False
        if pending is None:
            return
        if pending:
            _write_items(self.pending_path, b"[", pending, b"]")
            self._pending_on_disk = True
        else:
            self.pending_path.unlink(missing_ok=True)
            self._pending_on_disk = False
        self._pending_written = len(pending)

    # -- handing out work ----------------------------------------------------------

    def claim(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        # The base class would list every pending record as a dict at once.
        taken: list[tuple[str, dict[str, Any] | bytes]] = []
        with self._lock:
            if self._claim_order is None:
                self._claim_order = iter(list(self._pending))
            if limit > 0:
                for pid in self._claim_order:
                    value = self._pending.get(pid)
                    if value is not None:  # None: completed since
                        taken.append((pid, value))
                        if len(taken) == limit:
                            break
        return [(pid, _record(value)) for pid, value in taken]


@dataclass(frozen=True)
class _Changes:
    """What one save writes, and what it takes from the pending counters."""

    mapping: bool
    failures: bool
    pending: bool
    added: bool
    stale: int


def _texts(
    items: dict[str, Any], cache: dict[str, bytes], *, keyed: bool
) -> list[bytes]:
    """Each item's text inside its file, from `cache` or encoded now."""
    texts = []
    for key, value in items.items():
        text = cache.get(key)
        if text is None:
            text = cache[key] = item_text(key, value, keyed=keyed)
        texts.append(text)
    return texts


def item_text(key: str, value: Any, *, keyed: bool) -> bytes:
    """One member of a dumped object (`keyed`) or array, exactly as `dump_json` of
    the whole would write it: the text between the brackets, with its newline
    and indentation in front and without the separating comma."""
    whole = dump_json({key: value} if keyed else [value])
    return whole.rstrip(b"\n")[1:-2]


def _write_items(
    path: Path, opening: bytes, texts: list[bytes], closing: bytes
) -> None:
    """Replace `path` with the items joined as `dump_json` would write them, like
    `atomic_write_bytes` but a slice at a time: a million pending products made
    a second copy of 400 MB when joined first."""
    fd, name = create_temp_beside(path)
    try:
        write_all(fd, opening)
        for start in range(0, len(texts), _WRITE_ITEMS):
            part = b",".join(texts[start : start + _WRITE_ITEMS])
            write_all(fd, (b"," + part) if start else part)
        write_all(fd, (b"\n" if texts else b"") + closing + b"\n")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    os.close(fd)
    try:
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    fsync_dir(path.parent)


def _record(value: dict[str, Any] | bytes) -> dict[str, Any]:
    """A pending record from what the store keeps of it."""
    if isinstance(value, bytes):
        record: dict[str, Any] = json.loads(value)
        return record
    return value


def dump_json(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, indent=2) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON input may hold "\\ud800") has no UTF-8 form;
        # escaped, it is still valid JSON and reads back as the same string.
        return (json.dumps(value, ensure_ascii=True, indent=2) + "\n").encode()


def _index_pending(
    path: Path, records: list[Any], product_key: ProductKey
) -> dict[str, dict[str, Any]]:
    pending: dict[str, dict[str, Any]] = {}
    for number, raw in enumerate(records, start=1):
        try:
            if not isinstance(raw, dict):
                raise InvalidRecord("not_object", kind=type(raw).__name__)
            pid = product_key(raw)
        except ValueError as exc:
            raise StateError(
                "state_record",
                hint="pending_id_field",
                path=path,
                number=number,
                reason=reason_of(exc),
                damaged=Text("hint_damaged"),
            ) from None
        pending.setdefault(pid, raw)
    return pending


def _load_mapping(path: Path) -> dict[str, Entry]:
    mapping = load_state_json(path, dict, Text("shape_ids"))
    if mapping is None:
        return {}
    for pid, entry in mapping.items():
        if not is_valid_entry(entry):
            raise StateError("mapping_entry", hint="damaged", path=path, pid=pid)
    return mapping


def _load_failures(path: Path) -> dict[str, list[Failure]]:
    raw = load_state_json(path, dict, Text("shape_ids"))
    if raw is None:
        return {}
    failures: dict[str, list[Failure]] = {}
    for pid, items in raw.items():
        try:
            if not isinstance(items, list):
                raise InvalidRecord("not_list")
            failures[pid] = [checked_failure(Failure.from_json(item)) for item in items]
        except ValueError as exc:
            raise StateError(
                "failures_damaged",
                hint="damaged",
                path=path,
                pid=pid,
                reason=reason_of(exc),
            ) from None
    return failures
