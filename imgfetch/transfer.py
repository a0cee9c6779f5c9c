"""`imgfetch export` and `imgfetch migrate`: moving state between stores."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from .backends import open_store
from .backends.base import StateStore
from .backends.identity import (
    Identity,
    choose_store,
    current_store,
    finish_migration,
    remove_store_files,
    write_identity,
)
from .backends.json_store import JsonStore, dump_json, item_text
from .catalog import CatalogOptions
from .errors import ExitCode, StateError, StorageError, UsageError
from .fsutil import atomic_write_bytes
from .paths import FAILED_FILE, MAPPING_FILE, PENDING_FILE
from .runner import Reporter, locked_data_dir, open_state, product_key

log = logging.getLogger(__name__)

T = TypeVar("T")


def export_state(
    data_dir: Path,
    backend: str | None,
    catalog: CatalogOptions,
    target: Path,
    report: Reporter,
) -> int:
    """Write the spec's three files for the store of `data_dir` into `target`.

    Reads only and takes no lock, like inspect-pending: a running download keeps
    going, and the export shows the state as its reads found it.
    """
    if not data_dir.is_dir():
        raise StateError("no_data_dir", hint="pass_data_dir", path=str(data_dir))
    if target.exists() and not target.is_dir():
        raise UsageError("data_dir_is_file", hint="pass_dir", path=str(target))
    store = open_state(data_dir, backend, catalog, locked=False)
    try:
        if _same_dir(target, data_dir) and isinstance(store, JsonStore):
            report("export_is_store", path=data_dir)
            return ExitCode.OK
        completed, pending, failed = write_spec_files(store, target)
    finally:
        store.close()
    report(
        "exported",
        store=store.name,
        path=target,
        completed=completed,
        pending=pending,
        failed=failed,
    )
    return ExitCode.OK


def write_spec_files(store: StateStore, target: Path) -> tuple[int, int, int]:
    """The mapping always; pending and failures only when there are any (and a
    stale copy from an earlier export is removed, as the JSON store does)."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        completed = _write_mapping(store, target / MAPPING_FILE)
        failures = store.failures()
        _write_or_remove(
            target / FAILED_FILE,
            {pid: [f.to_json() for f in items] for pid, items in failures.items()},
        )
        pending = [raw for _pid, raw in store.iter_pending()]
        _write_or_remove(target / PENDING_FILE, pending)
    except OSError as exc:
        raise StorageError(
            "write_state", hint="free_space", path=target, detail=exc.strerror or exc
        ) from exc
    return completed, len(pending), sum(len(items) for items in failures.values())


def _write_mapping(store: StateStore, path: Path) -> int:
    # Streamed a product at a time, in exactly the layout JsonStore writes, so
    # that a million products never sit in memory as one document.
    count = 0

    def chunks() -> Iterator[bytes]:
        nonlocal count
        yield b"{"
        for pid, entry in store.iter_mapping():
            item = item_text(pid, entry, keyed=True)
            yield (b"," if count else b"") + item
            count += 1
        yield b"\n}\n" if count else b"}\n"

    atomic_write_bytes(path, b"".join(chunks()))
    return count


def _write_or_remove(path: Path, value: object) -> None:
    if value:
        atomic_write_bytes(path, dump_json(value))
    else:
        path.unlink(missing_ok=True)


def migrate_state(
    data_dir: Path,
    source: str,
    target: str,
    catalog: CatalogOptions,
    report: Reporter,
) -> int:
    """Convert `data_dir` from store `source` to store `target`, in place.

    `.imgfetch-store` is the commit point (see backends/identity.py): until it
    names the target, the source is untouched and is what every command uses.
    """
    if source == target:
        raise UsageError("migrate_same", hint="migrate_pick", name=source)
    if not data_dir.is_dir():
        raise StateError("no_data_dir", hint="pass_data_dir", path=str(data_dir))
    with locked_data_dir(data_dir):
        finish_migration(data_dir)
        found = current_store(data_dir)
        if found == target and found != source:
            report("migrate_already", path=data_dir, name=target)
            return ExitCode.OK
        choose_store(data_dir, source)  # refuses when `source` is not the owner
        old = open_state(data_dir, source, catalog, locked=False)
        try:
            write_identity(data_dir, Identity(source, migrating_to=target))
            remove_store_files(data_dir, target)  # a killed attempt's leftovers
            counts = _copy(old, data_dir, target, catalog)
        finally:
            old.close()
        write_identity(data_dir, Identity(target, migrated_from=source))
        remove_store_files(data_dir, source)
        write_identity(data_dir, Identity(target))
    report("migrated", source=source, target=target, path=data_dir, **counts)
    return ExitCode.OK


_BATCH = 1000


def _copy(
    old: StateStore, data_dir: Path, target: str, catalog: CatalogOptions
) -> dict[str, int]:
    new = open_store(target, data_dir)
    new.open(product_key(catalog))
    try:
        pending = 0
        for chunk in _batched(old.iter_pending()):
            new.add_pending(chunk)
            for pid, _raw in chunk:
                for (category, index), slot in old.saved_images(pid).items():
                    new.record_image(pid, category, index, slot.url, slot.relpath)
            pending += len(chunk)
        failures = old.failures()
        completed = 0
        for chunk in _batched(old.iter_mapping()):
            new.record_many([(pid, e, failures.get(pid, [])) for pid, e in chunk])
            completed += len(chunk)
        new.flush()
    finally:
        new.close()
    failed = sum(len(items) for items in failures.values())
    return {"completed": completed, "pending": pending, "failed": failed}


def _batched(items: Iterator[tuple[str, T]]) -> Iterator[list[tuple[str, T]]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.exists() and a.samefile(b)
    except OSError:
        return False
