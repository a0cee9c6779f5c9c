"""Which store owns a data directory: the `.imgfetch-store` file and migrations.

A data directory is written by one store. The first run that writes state records
the store's name in `.imgfetch-store`; a directory written by the original
download_images.py has no such file and is recognised by its JSON files. Opening a
directory with another store than its own is refused, because that store would see
no progress and download everything again beside the real state.

A migration from store A to B (see `imgfetch.transfer`) uses the same file as its
commit point, so that a kill at any instruction leaves one usable store:

    {"store": "A", "migrating_to": "B"}   B is being written; A is the truth
    {"store": "B", "migrated_from": "A"}  B is complete; A's files are leftovers
    {"store": "B"}                        done

The next command that holds the lock finishes the job: it deletes B's partial
files in the first case and A's leftovers in the second.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import StateError, StorageError
from ..fsutil import atomic_write_bytes
from . import DEFAULT_BACKEND, backend_names, check_backend, store_class

log = logging.getLogger(__name__)

STORE_FILE = ".imgfetch-store"


@dataclass(frozen=True)
class Identity:
    store: str
    migrating_to: str | None = None
    migrated_from: str | None = None


def read_identity(data_dir: Path) -> Identity | None:
    """The store named in `data_dir`, or None when no store wrote its name."""
    path = data_dir / STORE_FILE
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StateError("state_unreadable", path=path, detail=exc.strerror) from None
    try:
        data = json.loads(raw.decode("utf-8"))
        identity = Identity(
            store=data["store"],
            migrating_to=data.get("migrating_to"),
            migrated_from=data.get("migrated_from"),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StateError(
            "store_file_damaged",
            hint="store_file",
            path=path,
            names=", ".join(backend_names()),
        ) from None
    for name in (identity.store, identity.migrating_to, identity.migrated_from):
        if name is not None and name not in backend_names():
            raise StateError(
                "store_file_unknown",
                hint="store_file",
                path=path,
                name=name,
                names=", ".join(backend_names()),
            )
    return identity


def write_identity(data_dir: Path, identity: Identity) -> None:
    data = {"store": identity.store}
    if identity.migrating_to:
        data["migrating_to"] = identity.migrating_to
    if identity.migrated_from:
        data["migrated_from"] = identity.migrated_from
    try:
        atomic_write_bytes(data_dir / STORE_FILE, (json.dumps(data) + "\n").encode())
    except OSError as exc:
        raise StorageError(
            "write_state", hint="free_space", path=data_dir, detail=exc.strerror or exc
        ) from exc


def current_store(data_dir: Path) -> str | None:
    """The store whose state is the truth in `data_dir`, or None for a new one."""
    identity = read_identity(data_dir)
    if identity is not None:
        return identity.store
    # Written before stores named themselves (or by download_images.py): the first
    # store whose files are there.
    for name in backend_names():
        if store_class(name).present(data_dir):
            return name
    return None


def choose_store(data_dir: Path, requested: str | None) -> str:
    """The store to open: the one asked for, which must be the directory's own.

    With no request (no --backend, no IMGFETCH_BACKEND) the directory's own store
    is used, and the default store for a new directory.
    """
    if requested is not None:
        check_backend(requested)
    found = current_store(data_dir)
    chosen = requested or found or DEFAULT_BACKEND
    if found is not None and chosen != found:
        raise StateError(
            "store_mismatch",
            hint="store_mismatch",
            path=data_dir,
            found=found,
            asked=chosen,
        )
    for path in store_class(chosen).owned_paths(data_dir):
        # A planted link would make the store write wherever it points.
        if path.is_symlink():
            raise StateError("store_symlink", hint="store_symlink", path=path)
    return chosen


def finish_migration(data_dir: Path) -> None:
    """Complete or undo a migration a kill interrupted; needs the directory lock."""
    identity = read_identity(data_dir)
    if identity is None:
        return
    leftover = identity.migrating_to or identity.migrated_from
    if leftover is None:
        return
    log.info("finishing an interrupted migration: removing %s state", leftover)
    remove_store_files(data_dir, leftover)
    write_identity(data_dir, Identity(identity.store))


def claim_directory(data_dir: Path, name: str) -> None:
    """Name `name` as the directory's store before its first write."""
    if read_identity(data_dir) is None:
        write_identity(data_dir, Identity(name))


def remove_store_files(data_dir: Path, name: str) -> None:
    try:
        for path in store_class(name).owned_paths(data_dir):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(
            "write_state", hint="free_space", path=data_dir, detail=exc.strerror or exc
        ) from exc
