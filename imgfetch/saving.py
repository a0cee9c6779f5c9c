"""Saves: finished products written to the store after their images are durable.

The engine hands over each finished product and each folder it wrote an image
into; `Saver` decides when a save is due and makes it, in two steps that never
change order: the images are synced (one syncfs for all of them), then the
products are recorded and the store flushed, so a durable record never names an
image that is not durable.

A save that falls due while downloads run is made on a thread of its own, and
the engine's loop goes on moving downloads meanwhile: on a disk, a sync of a
second's images took 20 to 60 ms, and every transfer stood still for it (3 to 4%
of the rate with 100 ms responses, #6). At most one save runs at a time. `now`
saves on the calling thread, after waiting for one in the background; the engine
calls it at the end of a run and at a shutdown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .backends import StateStore
from .backends.base import Entry, Failure
from .errors import StorageError
from .fsutil import BATCH_SYNC, fsync_dir, sync_filesystem
from .paths import IMAGES_DIR

SAVE_THREAD_NAME = "imgfetch-save"
# Seconds between saves for stores whose record cost is flat: each save also
# syncs the images saved since the last one (10-30 ms, mostly fixed), so once a
# second keeps that to a few percent of the run, and kill -9 loses at most about
# a second of records (their images stay, and the next run reuses them).
DURABLE_SAVE_INTERVAL = 1.0
# Never more than this many seconds between two saves, whatever their cost.
MAX_SAVE_GAP = 10.0

Finished = tuple[str, Entry, list[Failure]]


@dataclass(eq=False)
class _Save:
    """One save: what it writes, and how it ended."""

    products: list[Finished]
    folders: set[Path]
    began: float
    thread: threading.Thread | None = None
    written: bool = False  # False: the data directory moved, nothing written
    error: BaseException | None = None


class Saver:
    """Collects finished products and image folders, and saves them when due.

    `check_home` (the engine's; main thread only) raises when the data directory
    was deleted or replaced; `home_moved` answers the same from any thread.
    """

    def __init__(
        self,
        data_dir: Path,
        store: StateStore,
        *,
        save_every: int,
        save_interval: float,
        check_home: Callable[[], None],
        home_moved: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.save_every = save_every
        self.save_interval = save_interval
        self.check_home = check_home
        self.home_moved = home_moved
        self.clock = clock
        # Finished products wait here for the next save, so that one sync of
        # their folders and one write of the store covers many of them.
        self._products: list[Finished] = []
        self._folders: set[Path] = set()
        self._last = clock()  # when the last save ended
        self._cost = 0.0  # how long it took
        self._running: _Save | None = None

    def product_finished(self, product: Finished) -> None:
        self._products.append(product)

    def wrote_into(self, folder: Path) -> None:
        """An image was saved (or linked) into `folder` since the last save."""
        self._folders.add(folder)

    def maybe(self) -> None:
        """Start a save in the background when one is due; first take in the
        one that ended, raising what it failed with."""
        if self.busy:
            return
        if self._running is not None:
            self._take_in(self._running)
        if self._due():
            self._start()

    def now(self) -> None:
        """Save everything finished so far, on this thread."""
        if self._running is not None:
            self._take_in(self._running)
        self.check_home()  # before syncing a folder that is gone, too
        save = self._begin()
        self._write(save)
        self._take_in(save)

    @property
    def busy(self) -> bool:
        """A save is running in the background."""
        thread = self._running.thread if self._running is not None else None
        return thread is not None and thread.is_alive()

    def wait(self) -> None:
        """Let a save in the background end (its outcome is dropped: this is for
        a run that is ending by an error already)."""
        running, self._running = self._running, None
        if running is not None and running.thread is not None:
            running.thread.join()

    # -- the policy ---------------------------------------------------------------

    def _due(self) -> bool:
        if not self._products:
            return False
        interval, every = self.save_interval, len(self._products) >= self.save_every
        if self.store.durable_on_record:
            # Recording is cheap and flat for these stores: a save is mostly
            # the sync of its images, worth making once a second.
            interval, every = min(interval, DURABLE_SAVE_INTERVAL), False
        since = self.clock() - self._last
        # Never spend more than about a twentieth of the run saving (a big JSON
        # mapping is slow to rewrite), whatever --save-every says; and never let
        # that stretch the gap between two saves past MAX_SAVE_GAP.
        spacing = min(19 * self._cost, MAX_SAVE_GAP)
        return (every or since >= interval) and since >= spacing

    # -- making a save ------------------------------------------------------------

    def _begin(self) -> _Save:
        save = _Save(self._products, self._folders, self.clock())
        self._products, self._folders = [], set()
        return save

    def _start(self) -> None:
        self.check_home()
        save = self._begin()
        save.thread = threading.Thread(
            target=self._write, args=(save,), name=SAVE_THREAD_NAME, daemon=True
        )
        self._running = save
        save.thread.start()

    def _write(self, save: _Save) -> None:
        try:
            self._sync(save.folders)
            # Not into a data directory that replaced the one the run started
            # in: the records would name images deleted with the old one.
            # Checked after the sync, which can take a while.
            if self.home_moved():
                return
            if save.products:
                self.store.record_many(save.products)
            self.store.flush()
            save.written = True
        except BaseException as exc:  # handed to the engine's thread
            save.error = exc

    def _sync(self, folders: set[Path]) -> None:
        if folders and BATCH_SYNC:
            try:
                # Their data and folders at once, on the file system of images/
                # (which may be a link to another disk than the state's).
                sync_filesystem(self.data_dir / IMAGES_DIR)
            except OSError as exc:  # an I/O error writing back, or a full disk
                raise storage_error(exc, self.data_dir) from exc
        elif folders:
            for folder in folders:
                fsync_dir(folder)
            fsync_dir(self.data_dir / IMAGES_DIR)

    def _take_in(self, save: _Save) -> None:
        """The end of `save`, on the engine's thread: what it did not write goes
        into the next one, and its error or the moved data directory is raised."""
        if save.thread is not None:
            save.thread.join()
        self._running = None
        self._last = self.clock()
        self._cost = self._last - save.began
        if save.written:
            return
        self._products[:0] = save.products
        self._folders |= save.folders
        if save.error is not None:
            raise save.error
        self.check_home()  # raises: the data directory moved


def storage_error(error: OSError, folder: Path) -> StorageError:
    """The error for images that could not be written or made durable."""
    return StorageError(
        "write_images",
        hint="free_space_resume",
        path=folder,
        detail=error.strerror or error,
    )
