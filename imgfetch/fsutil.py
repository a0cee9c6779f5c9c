"""Durable file writes: temporary file, fsync, rename, fsync of the folder."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

from .paths import TEMP_PREFIX, TEMP_SUFFIX, is_temp_name

# The final name is only a hint in the temporary name; a long one would push the
# temporary name past NAME_MAX (255 bytes) and make the write fail.
_NAME_HINT = 100


_TEMP_NAMES = itertools.count()


def create_temp_beside(path: str | Path) -> tuple[int, str]:
    """A new, empty temporary file in the folder of `path`: (descriptor, name).

    Opened with mode 0666 so that the kernel applies the umask, as for any file
    the user makes; the name holds the process id and a counter, and O_EXCL makes
    sure a file left by a killed run is never written into.
    """
    folder, base = os.path.split(os.fspath(path))
    hint = os.fsencode(base)[:_NAME_HINT].decode("utf-8", "ignore")
    stem = os.path.join(folder, f"{TEMP_PREFIX}{hint}.{os.getpid():x}-")
    while True:
        name = f"{stem}{next(_TEMP_NAMES):x}{TEMP_SUFFIX}"
        try:
            return os.open(name, _CREATE, 0o666), name
        except FileExistsError:
            continue


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


@contextlib.contextmanager
def temp_file_beside(path: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """An open temporary file in the folder of `path`, removed unless kept.

    The caller renames it into place with `commit`; if the block ends without a
    commit, normally or by any exception, the temporary file is deleted.
    """
    fd, name = create_temp_beside(path)
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, temp
    finally:
        # After commit the name is gone (renamed); otherwise, error or not, the
        # unfinished file must not stay behind.
        with contextlib.suppress(OSError):
            temp.unlink()


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may take fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def commit(handle: IO[bytes], temp: Path, path: Path, *, sync: bool = True) -> None:
    """Move the temporary file to its final name atomically; made durable first
    unless the caller syncs a batch of them later (`sync_filesystem`)."""
    handle.flush()
    if sync:
        os.fsync(handle.fileno())
    os.replace(temp, path)


def _load_syncfs() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    return cast(Callable[[int], int], syncfs)


_SYNCFS = _load_syncfs()
# Images are synced a batch at a time where the OS can sync a whole file system
# in one call; an fsync per image was a fifth of the loopback run's time.
BATCH_SYNC = _SYNCFS is not None or hasattr(os, "sync")


def sync_filesystem(folder: Path) -> None:
    """Make everything written on `folder`'s file system durable (syncfs on
    Linux, sync elsewhere); used before state names a batch of new images."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(folder))
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: readers see the old or the new file, never a mix."""
    with temp_file_beside(path) as (handle, temp):
        handle.write(data)
        commit(handle, temp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Persist a rename: on POSIX the folder entry is only durable once synced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename still happened
    finally:
        os.close(fd)


def remove_stale_temp_files(root: Path) -> int:
    """Delete the temporary files a killed run left under `root`; return how many."""
    removed = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if is_temp_name(name):
                # Gone already, or not ours to delete: neither may stop a start.
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


class PathGuard:
    """Tells whether files or folders were deleted or replaced since it was made.

    `rm -rf` of the data directory during a run would otherwise go unnoticed:
    folders get recreated on the next write, and state written into the new folder
    would name images that went with the old one. Open descriptors keep the old
    inodes allocated, so a new file or folder can never reuse their numbers.
    """

    def __init__(self, paths: list[Path]) -> None:
        self._held: list[tuple[Path, int | None, tuple[int, int]]] = []
        try:
            for path in paths:
                self._held.append(_hold(path))
        except OSError:
            self.close()
            raise

    def moved(self) -> bool:
        """True when a path is gone, or now names another file or folder."""
        for path, fd, identity in self._held:
            try:
                now = os.stat(path)
                if fd is not None and os.fstat(fd).st_nlink == 0:
                    return True
            except OSError:
                return True
            if (now.st_dev, now.st_ino) != identity:
                return True
        return False

    def unchanged(self, path: Path) -> bool:
        """True when `path`, one of the guarded ones, still names what it did."""
        for held, _fd, identity in self._held:
            if held == path:
                with contextlib.suppress(OSError):
                    now = os.stat(path)
                    return (now.st_dev, now.st_ino) == identity
        return False

    def close(self) -> None:
        for _path, fd, _identity in self._held:
            if fd is not None:
                os.close(fd)
        self._held = []


def _hold(path: Path) -> tuple[Path, int | None, tuple[int, int]]:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd: int | None = os.open(path, flags)
    except OSError:
        if not path.exists():
            raise
        fd = None  # folders cannot be opened everywhere (Windows): stats alone
    held = os.fstat(fd) if fd is not None else os.stat(path)
    return path, fd, (held.st_dev, held.st_ino)
