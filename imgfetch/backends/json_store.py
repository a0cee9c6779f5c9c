"""The JSON-file store: the spec's image_mapping.json and pending_tasks.json."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..catalog import InvalidRecord, reason_of
from ..errors import StateError, StorageError
from ..fsutil import atomic_write_bytes, create_temp_beside, fsync_dir, write_all
from ..messages import Text
from ..paths import FAILED_FILE, MAPPING_FILE, PENDING_FILE
from .base import Entry, Failure, ProductKey, StateStore
from .state_files import (
    checked_failure,
    is_valid_entry,
    load_state_json,
    scan_state_array,
)

# A pending file of up to this many products is rewritten at every save; a
# bigger one only when it changes in another way (see JsonStore).
SMALL_PENDING = 1000
# Items joined into one write when a file is written.
_WRITE_ITEMS = 1000


class JsonStore(StateStore):
    """Keeps the mapping in memory, pending products in their file, and rewrites
    the JSON files on `flush`.

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
    products that the mapping holds, as after a kill: the mapping wins.

    A pending record is not kept in memory (a 1M-product catalog held 2.9 GB as
    dicts, 570 MB as text): only where its text is, a `_Spot`. That is in the
    pending file as last written or read, or, for a product added since, in a
    spool: a file without a name beside it, which the next rewrite copies from.
    A rewrite copies each stretch of texts that lie one after another with one
    read and one write. Everything a save writes comes from one snapshot: a save
    holds the lock from the first write to the last.
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
        self._mapping: dict[str, Entry] = {}
        # Each completed product's text in the mapping file: json.dumps with
        # indent runs in pure Python, so each text is made once and kept.
        self._mapping_text: dict[str, bytes] = {}
        # Each pending product's _Spot, in the order they were added.
        self._pending: dict[str, int] = {}
        self._pending_file: _OpenFile | None = (
            None  # the pending file as read or written
        )
        self._spool: _OpenFile | None = None
        self._failures: dict[str, list[Failure]] = {}
        self._pending_on_disk = False
        self._failures_on_disk = False
        self._mapping_changed = False
        self._pending_changed = False  # products added since the file was written
        self._failures_changed = False
        self._pending_written = 0  # products in the pending file on disk
        self._pending_stale = 0  # of those, products no longer pending
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
        self._release()
        self._mapping = _load_mapping(self.mapping_path)
        self._mapping_text = {}
        self._failures = _load_failures(self.failed_path)
        self._failures_on_disk = self.failed_path.exists()
        self._pending_file = _open_pending(self.pending_path)
        self._pending_on_disk = self._pending_file is not None
        self._pending, self._pending_written = {}, 0
        if self._pending_file is not None:
            self._pending_written = _index_pending(
                self.pending_path,
                self._pending_file.fd,
                product_key,
                self._pending,
                self._mapping,
            )
        # A kill between writing the mapping and the pending file leaves a product
        # in both; the mapping is the truth. Rewrite (or delete) the pending file
        # at the next flush, not here: open never writes. A first run writes the
        # mapping even when it stays empty.
        self._pending_stale = self._pending_written - len(self._pending)
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
        # Read a slice at a time: the records of a big catalog do not fit in
        # memory at once. A product completed meanwhile is left out.
        with self._lock:
            order = list(self._pending)
        for start in range(0, len(order), _READ_ITEMS):
            with self._lock:
                spots = [
                    (pid, spot)
                    for pid in order[start : start + _READ_ITEMS]
                    if (spot := self._pending.get(pid)) is not None
                ]
                texts = self._read_texts([spot for _pid, spot in spots])
            for (pid, _spot), text in zip(spots, texts, strict=True):
                yield pid, self._decode(text)

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
            new: dict[str, bytes] = {}
            for pid, text in texts:
                if pid not in self._mapping and pid not in self._pending:
                    new.setdefault(pid, text)
            if not new:
                return
            try:
                if self._spool is None:
                    self._spool = _OpenFile.anonymous(self.data_dir)
                # Each text with a comma after it: a stretch of them is then
                # copied as it is into the pending file.
                offset = self._spool.append(b",".join(new.values()) + b",")
            except OSError as exc:
                raise _write_error(self.data_dir, exc) from exc
            for pid, text in new.items():
                self._pending[pid] = _spot(_SPOOL, offset, len(text))
                offset += len(text) + 1
            self._pending_changed = True

    def record_product(
        self, product_id: str, entry: Entry, failures: list[Failure]
    ) -> None:
        with self._lock:
            self._mapping[product_id] = {k: list(v) for k, v in entry.items()}
            self._mapping_text.pop(product_id, None)
            spot = self._pending.pop(product_id, None)
            if spot is not None and _source(spot) == _FILE:
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
        if not unflushed and self._pending_stale and self._pending_on_disk:
            with contextlib.suppress(StorageError, StateError, OSError):
                folder = os.stat(self.data_dir)
                if self._folder == (folder.st_dev, folder.st_ino):
                    self._save(tidy=True)
        with self._lock:
            self._release()

    def _release(self) -> None:
        """Close the files `open` and `add_pending` opened."""
        for file in (self._pending_file, self._spool):
            if file is not None:
                file.close()
        self._pending_file = self._spool = None

    def _save(self, *, tidy: bool) -> None:
        # The lock is held throughout: the mapping and the pending file must be
        # written from the same moment, or a product recorded in between would
        # be in neither file. (Two saves at once would also write their
        # snapshots in the wrong order.)
        with self._lock:
            write_failures = (
                self._failures_changed or bool(self._failures) != self._failures_on_disk
            )
            write_pending = self._pending_due(tidy)
            try:
                if self._mapping_changed:
                    texts = _texts(self._mapping, self._mapping_text, keyed=True)
                    _write_items(self.mapping_path, b"{", texts, b"}")
                    self._mapping_changed = False
                if write_failures:
                    self._write_failures()
                    self._failures_changed = False
                if write_pending:
                    self._write_pending()
            except OSError as exc:  # written again by the next save
                raise _write_error(self.data_dir, exc) from exc

    def _write_failures(self) -> None:
        if self._failures:
            failures = {
                pid: [f.to_json() for f in items]
                for pid, items in self._failures.items()
            }
            atomic_write_bytes(self.failed_path, dump_json(failures))
            self._failures_on_disk = True
        else:
            self.failed_path.unlink(missing_ok=True)
            self._failures_on_disk = False

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

    def _write_pending(self) -> None:
        """Replace the pending file with the pending products' texts, copied from
        where they are (or delete it when none are left); then point each
        product's spot into the new file."""
        if not self._pending:
            self.pending_path.unlink(missing_ok=True)
            self._pending_on_disk = False
            self._release()
            self._pending_written = self._pending_stale = 0
            self._pending_changed = False
            return
        fd, name = create_temp_beside(self.pending_path)
        try:
            # Opened before the rename: the file read later is the one written.
            written = _OpenFile(os.open(name, os.O_RDONLY | _CLOEXEC))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        try:
            try:
                self._copy_pending(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(name, self.pending_path)
        except BaseException:
            written.close()
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        # The new file is in place: from here on, texts are read from it alone.
        # Inlined _spot and _length: this runs once per product (0.2 s a million).
        offset, pending = 1, self._pending  # 1: after "["
        for pid, spot in pending.items():  # values only: no key changes
            length = (spot >> 1) & _LENGTH_MASK
            pending[pid] = (offset << _LENGTH_BITS | length) << 1 | _FILE
            offset += length + 1
        self._release()
        self._pending_file = written
        self._pending_on_disk = True
        self._pending_written, self._pending_stale = len(self._pending), 0
        self._pending_changed = False
        try:
            fsync_dir(self.pending_path.parent)
        except OSError:
            self._pending_changed = True  # the rename may not last: rewrite it
            raise

    def _copy_pending(self, fd: int) -> None:
        """Write the pending file's content: "[", the texts joined by commas, and
        the closing bracket, as `dump_json` of the records would write it."""
        files = self._files()
        # closefd=False: the caller fsyncs the descriptor and closes it.
        with open(fd, "wb", buffering=_BLOCK, closefd=False) as out:
            out.write(b"[")
            first = True
            for source, start, end in _stretches(self._pending.values()):
                if not first:
                    out.write(b",")
                first = False
                for piece in range(start, end, _BLOCK):
                    size = min(_BLOCK, end - piece)
                    out.write(_read_exactly(files, source, piece, size))
            out.write(b"\n]\n")

    def _files(self) -> dict[int, _OpenFile]:
        files = {}
        if self._pending_file is not None:
            files[_FILE] = self._pending_file
        if self._spool is not None:
            files[_SPOOL] = self._spool
        return files

    def _read_texts(self, spots: list[int]) -> list[bytes]:
        """The texts at `spots` (called with the lock held); texts that lie close
        together, as a claim's mostly do, are read with one call."""
        texts: list[bytes] = []
        files = self._files()
        try:
            for source, start, end, group in _reads(spots):
                block = _read_exactly(files, source, start, end - start)
                texts += (
                    block[_offset(spot) - start : _offset(spot) - start + _length(spot)]
                    for spot in group
                )
        except OSError as exc:
            raise self._unreadable(exc.strerror or exc) from exc
        return texts

    def _decode(self, text: bytes) -> dict[str, Any]:
        """A pending record from its text."""
        try:
            record = json.loads(text)
        except ValueError as exc:  # the file was changed by hand while we ran
            raise self._unreadable(exc) from None
        if not isinstance(record, dict):
            raise self._unreadable(f"not an object: {text[:80]!r}")
        return record

    def _unreadable(self, detail: object) -> StateError:
        return StateError("state_unreadable", path=self.pending_path, detail=detail)

    # -- handing out work ----------------------------------------------------------

    def claim(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        # The base class would list every pending record as a dict at once.
        with self._lock:
            if self._claim_order is None:
                self._claim_order = iter(list(self._pending))
            taken: list[tuple[str, int]] = []
            if limit > 0:
                for pid in self._claim_order:
                    spot = self._pending.get(pid)
                    if spot is not None:  # None: completed since
                        taken.append((pid, spot))
                        if len(taken) == limit:
                            break
            texts = self._read_texts([spot for _pid, spot in taken])
        return [
            (pid, self._decode(text))
            for (pid, _spot), text in zip(taken, texts, strict=True)
        ]


# -- where a pending product's text is -------------------------------------------------

# A _Spot is an int: (offset << _LENGTH_BITS | length) << 1 | source. One int per
# product (40 bytes) instead of a tuple of three (150).
_FILE, _SPOOL = 0, 1  # the pending file as last read or written; the spool
_LENGTH_BITS = 40  # a record's text is shorter than a terabyte
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1


def _spot(source: int, offset: int, length: int) -> int:
    return ((offset << _LENGTH_BITS | length) << 1) | source


def _source(spot: int) -> int:
    return spot & 1


def _offset(spot: int) -> int:
    return spot >> (_LENGTH_BITS + 1)


def _length(spot: int) -> int:
    return (spot >> 1) & _LENGTH_MASK


def _stretches(spots: Iterable[int]) -> Iterator[tuple[int, int, int]]:
    """(source, start, end) of each run of texts that lie one after another, with
    one comma between each two, in the order of `spots`."""
    # Inlined _offset and _length: this runs once per product at each rewrite.
    shift, mask = _LENGTH_BITS + 1, _LENGTH_MASK
    source = start = end = -1
    for spot in spots:
        offset = spot >> shift
        if offset == end + 1 and (spot & 1) == source:
            end = offset + ((spot >> 1) & mask)
            continue
        if start >= 0:
            yield source, start, end
        source, start = spot & 1, offset
        end = offset + ((spot >> 1) & mask)
    if start >= 0:
        yield source, start, end


# Texts at most this far apart are read with one call (the bytes between are
# products completed since: a few of them cost less than another call).
_GAP = 64 * 1024


def _reads(spots: list[int]) -> Iterator[tuple[int, int, int, list[int]]]:
    """(source, start, end, spots) of each read that gets the texts at `spots`, in
    order: texts in the same file, in increasing order and close together, share
    one read of at most _BLOCK bytes (a longer text gets one of its own)."""
    index = 0
    while index < len(spots):
        first = spots[index]
        source, start = _source(first), _offset(first)
        end = start + _length(first)
        last = index + 1
        while last < len(spots):
            spot = spots[last]
            offset = _offset(spot)
            if (
                _source(spot) != source
                or not end <= offset <= end + _GAP
                or offset + _length(spot) - start > _BLOCK
            ):
                break
            end = offset + _length(spot)
            last += 1
        yield source, start, end, spots[index:last]
        index = last


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Bytes read or written at a time when texts are copied or read back.
_BLOCK = 1 << 20
# Pending records read back at a time by iter_pending.
_READ_ITEMS = 1000


class _OpenFile:
    """A file the store reads texts from by offset (and appends to: the spool)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0  # what `append` has written

    @classmethod
    def anonymous(cls, folder: Path) -> _OpenFile:
        """A new file with no name in `folder` (it goes away with the process):
        on the data directory's disk, not in memory like /tmp may be."""
        with tempfile.TemporaryFile(dir=folder) as handle:
            return cls(os.dup(handle.fileno()))

    def append(self, data: bytes) -> int:
        """Write `data` at the end; return the offset it starts at."""
        start, view = self.size, memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], start + done)
        self.size += len(data)
        return start

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _read_exactly(
    files: dict[int, _OpenFile], source: int, offset: int, size: int
) -> bytes:
    """`size` bytes at `offset` of the file `source`; OSError if it is shorter."""
    file = files.get(source)
    if file is None:  # closed: a read after `close`
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    data = os.pread(file.fd, size, offset)
    if len(data) < size:
        chunks, got = [data], len(data)
        while got < size and (more := os.pread(file.fd, size - got, offset + got)):
            chunks.append(more)
            got += len(more)
        data = b"".join(chunks)
        if got < size:
            # Cut short by hand under the data directory's lock: not what was
            # written, so no record is read from it.
            raise OSError(errno.EIO, "the file is shorter than imgfetch wrote it")
    return data


def _open_pending(path: Path) -> _OpenFile | None:
    try:
        return _OpenFile(os.open(path, os.O_RDONLY | _CLOEXEC))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError("state_unreadable", path=path, detail=exc.strerror) from None


def _index_pending(
    path: Path,
    fd: int,
    product_key: ProductKey,
    pending: dict[str, int],
    mapping: dict[str, Entry],
) -> int:
    """Put the spot of each product in the pending file into `pending`, but for
    completed ones and repeats (the first counts); return how many it holds."""
    damaged: StateError | None = None
    count = 0
    for count, (offset, length, raw) in enumerate(
        scan_state_array(fd, path, Text("shape_products")), start=1
    ):
        try:
            if not isinstance(raw, dict):
                raise InvalidRecord("not_object", kind=type(raw).__name__)
            pid = product_key(raw)
        except ValueError as exc:
            # Reported once the whole file has been read: damaged JSON further
            # on is reported first, as when the file was parsed whole.
            damaged = damaged or StateError(
                "state_record",
                hint="pending_id_field",
                path=path,
                number=count,
                reason=reason_of(exc),
                damaged=Text("hint_damaged"),
            )
            continue
        if pid not in mapping and pid not in pending:
            pending[pid] = _spot(_FILE, offset, length)
    if damaged is not None:
        raise damaged
    return count


def _write_error(data_dir: Path, exc: OSError) -> StorageError:
    return StorageError(
        "write_state",
        hint="free_space",
        path=data_dir,
        detail=exc.strerror or exc,
    )


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


def dump_json(value: Any) -> bytes:
    text = json.dumps(value, ensure_ascii=False, indent=2) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (JSON input may hold "\\ud800") has no UTF-8 form;
        # escaped, it is still valid JSON and reads back as the same string.
        return (json.dumps(value, ensure_ascii=True, indent=2) + "\n").encode()


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
