"""The JSON-file store: the spec's image_mapping.json and pending_tasks.json."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..catalog import InvalidRecord, reason_of
from ..errors import StateError, StorageError
from ..fsutil import atomic_write_bytes
from ..messages import Text
from ..paths import FAILED_FILE, MAPPING_FILE, PENDING_FILE
from .base import Entry, Failure, ProductKey, StateStore
from .state_files import checked_failure, is_valid_entry, load_state_json


class JsonStore(StateStore):
    """Keeps all state in memory and rewrites the three JSON files on `flush`.

    TODO(#3): a flush costs time in proportion to the whole catalog; stores with a
    flat cost per product are that issue's subject.

    Recorded means flushed: kill -9 loses what was recorded since the last flush
    (the engine flushes every few seconds), never what was flushed before.
    Mapping is written before pending, so a kill between the two leaves a product
    in both (harmless: completed wins) and never in neither.
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
        self._pending: dict[str, dict[str, Any]] = {}
        # Each product's text as it appears in the files, kept between flushes:
        # json.dumps with indent runs in pure Python, and re-encoding every product
        # on every flush made a flush of 10k products cost over 100 ms.
        self._mapping_text: dict[str, bytes] = {}
        self._pending_text: dict[str, bytes] = {}
        self._failures: dict[str, list[Failure]] = {}
        self._pending_on_disk = False
        self._failures_on_disk = False
        self._dirty = False

    @classmethod
    def owned_paths(cls, data_dir: Path) -> list[Path]:
        return [
            data_dir / MAPPING_FILE,
            data_dir / PENDING_FILE,
            data_dir / FAILED_FILE,
        ]

    def open(self, product_key: ProductKey) -> None:
        self._mapping = _load_mapping(self.mapping_path)
        self._failures = _load_failures(self.failed_path)
        self._failures_on_disk = self.failed_path.exists()
        raw_pending = load_state_json(self.pending_path, list, Text("shape_products"))
        self._pending_on_disk = raw_pending is not None
        self._pending = _index_pending(
            self.pending_path, raw_pending or [], product_key
        )
        # A kill between writing the mapping and the pending file leaves a product
        # in both; the mapping is the truth.
        finished = [pid for pid in self._pending if pid in self._mapping]
        for pid in finished:
            del self._pending[pid]
        # Rewrite (or delete) the pending file at the next flush, not here: open
        # never writes. A first run writes the mapping even when it stays empty.
        self._dirty = bool(finished) or not self.mapping_path.exists()

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
        yield from items

    def pending_count(self) -> int:
        return len(self._pending)

    def has_pending(self) -> bool:
        return self._pending_on_disk

    def failures(self) -> dict[str, list[Failure]]:
        with self._lock:
            return {pid: list(items) for pid, items in self._failures.items()}

    def add_pending(self, products: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self._lock:
            for pid, raw in products:
                if pid not in self._mapping and pid not in self._pending:
                    self._pending[pid] = raw
                    self._dirty = True

    def record_product(
        self, product_id: str, entry: Entry, failures: list[Failure]
    ) -> None:
        with self._lock:
            self._mapping[product_id] = {k: list(v) for k, v in entry.items()}
            self._mapping_text.pop(product_id, None)
            self._pending.pop(product_id, None)
            self._pending_text.pop(product_id, None)
            if failures:
                self._failures[product_id] = sorted(
                    failures, key=lambda f: (f.category, f.index)
                )
            else:
                self._failures.pop(product_id, None)
            self._dirty = True

    def flush(self) -> None:
        # One flush at a time: two concurrent flushes could otherwise write their
        # snapshots in the wrong order and leave the older one on disk.
        with self._flush_lock:
            with self._lock:
                if not self._dirty:
                    return
                mapping = _join(b"{", _texts(self._mapping, self._mapping_text), b"}")
                pending = (
                    _join(
                        b"[",
                        _texts(self._pending, self._pending_text, keyed=False),
                        b"]",
                    )
                    if self._pending
                    else None
                )
                failures = (
                    dump_json(
                        {
                            pid: [f.to_json() for f in fs]
                            for pid, fs in self._failures.items()
                        }
                    )
                    if self._failures
                    else None
                )
                self._dirty = False
            try:
                self._write(mapping, pending, failures)
            except OSError as exc:
                self._dirty = True
                raise StorageError(
                    "write_state",
                    hint="free_space",
                    path=self.data_dir,
                    detail=exc.strerror or exc,
                ) from exc

    def _write(
        self, mapping: bytes, pending: bytes | None, failures: bytes | None
    ) -> None:
        atomic_write_bytes(self.mapping_path, mapping)
        if failures is not None:
            atomic_write_bytes(self.failed_path, failures)
            self._failures_on_disk = True
        elif self._failures_on_disk:
            self.failed_path.unlink(missing_ok=True)
            self._failures_on_disk = False
        if pending is not None:
            atomic_write_bytes(self.pending_path, pending)
            self._pending_on_disk = True
        elif self._pending_on_disk:
            self.pending_path.unlink(missing_ok=True)
            self._pending_on_disk = False


def _texts(
    items: dict[str, Any], cache: dict[str, bytes], *, keyed: bool = True
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


def _join(opening: bytes, texts: list[bytes], closing: bytes) -> bytes:
    if not texts:
        return opening + closing + b"\n"
    return opening + b",".join(texts) + b"\n" + closing + b"\n"


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
