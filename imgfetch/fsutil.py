"""Durable file writes: temporary file, fsync, rename, fsync of the folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .paths import TEMP_PREFIX, TEMP_SUFFIX, is_temp_name


def _current_umask() -> int:
    # os.umask can only be read by setting it; this runs once, at import, before
    # any worker thread exists.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()
# The final name is only a hint in the temporary name; a long one would push the
# temporary name past NAME_MAX (255 bytes) and make the write fail.
_NAME_HINT = 100


@contextlib.contextmanager
def temp_file_beside(path: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """An open temporary file in the folder of `path`, removed unless kept.

    The caller renames it into place with `commit`; if the block ends without a
    commit, normally or by any exception, the temporary file is deleted.
    """
    hint = os.fsencode(path.name)[:_NAME_HINT].decode("utf-8", "ignore")
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f"{TEMP_PREFIX}{hint}.", suffix=TEMP_SUFFIX
    )
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp creates 0600 files; the user's images and state want normal
            # modes. Some file systems (FAT, SMB mounts) refuse chmod: keep 0600.
            with contextlib.suppress(OSError):
                os.fchmod(handle.fileno(), FILE_MODE)
            yield handle, temp
    finally:
        # After commit the name is gone (renamed); otherwise, error or not, the
        # unfinished file must not stay behind.
        with contextlib.suppress(OSError):
            temp.unlink()


def commit(handle: IO[bytes], temp: Path, path: Path) -> None:
    """Make the temporary file durable and move it to its final name atomically."""
    handle.flush()
    os.fsync(handle.fileno())
    os.replace(temp, path)


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


class FolderGuard:
    """Tells whether a folder was deleted or replaced since the guard was made.

    `rm -rf` of the data directory during a run would otherwise go unnoticed:
    folders get recreated on the next write, and state written into the new folder
    would name images that went with the old one. An open descriptor keeps the old
    folder's inode allocated, so a new folder can never reuse its number.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None
        try:
            self._fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            held = os.fstat(self._fd)
        except OSError:
            # Folders cannot be opened everywhere (Windows): compare stats alone.
            held = os.stat(folder)
        self._identity = (held.st_dev, held.st_ino)

    def moved(self) -> bool:
        """True when the folder is gone, or its path now names another folder."""
        try:
            now = os.stat(self.folder)
            if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
                return True
        except OSError:
            return True
        return (now.st_dev, now.st_ino) != self._identity

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
