"""The download engine: starts products' images, records results, saves, stops.

Everything runs on the main thread. It starts products, hands their images to the
multiplexer (imgfetch/multiplex.py), which keeps up to `--workers` downloads going
at once over libcurl, takes back what ended, records completed products in the
store, drives the progress view and reacts to signals between two waits of at
most _POLL seconds. No download can block it: a stalled server is a timer in the
multiplexer, and `abort` ends every download at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Entry, Failure, StateStore
from .backends.identity import remove_store_files
from .catalog import ImageRef, Product
from .errors import StorageError
from .fetch import Aborted, Fetcher, ImageFailed, SavedImage
from .fsutil import (
    PathGuard,
    temp_file_beside,
)
from .multiplex import Multiplexer, Result
from .paths import LOCK_FILE, image_relpath, is_temp_name, product_dir
from .progress import ProductLine, ProgressView, Tally
from .redact import redact_url, strip_userinfo
from .saving import Saver, storage_error
from .signals import SignalWatcher
from .sniff import EXTENSIONS, SNIFF_BYTES, sniff_format

log = logging.getLogger(__name__)

_IMAGE_EXTENSIONS = frozenset(EXTENSIONS.values())
_INDEX_RE = re.compile(r"_(\d+)\.[^./]+$")
_POLL = 0.1  # seconds; how quickly the main thread notices a signal
_STARTS_PER_TURN = 256  # products started between two looks at the signal flag
_HOME_CHECK = 0.25  # seconds between two looks at the data directory
# URLs remembered for reuse: duplicates in catalogs sit close together (one
# product, one shop), and a million would cost a gigabyte.
_FETCHED_MEMORY = 50_000
_HEARTBEAT = 5.0  # seconds between calls that let a shared store renew its leases


@dataclass(frozen=True)
class EngineConfig:
    workers: int = 8
    save_every: int = 100
    save_interval: float = 5.0
    grace_period: float = 2.0
    categories: tuple[str, ...] = ("main", "sku", "qc")


@dataclass
class RunResult:
    """How a run ended, for the messages and the exit code."""

    signal: int | None = None
    completed: int = 0  # products in the mapping, all runs together
    pending: int = 0
    failures: int = 0  # images recorded as failed, all products together
    tally: Tally = field(default_factory=Tally)


class _Skipped:
    """Outcome of a job that was never started because the run is stopping."""


SKIPPED = _Skipped()


@dataclass
class _Fatal:
    error: OSError


Outcome = SavedImage | Failure | _Skipped | _Fatal


@dataclass
class _ProductRun:
    product: Product
    folder: Path
    merge_into: Entry | None  # retrying failed images: the entry to complete
    saved: dict[tuple[str, int], str] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    outstanding: int = 0
    incomplete: bool = False


@dataclass
class _Job:
    run: _ProductRun
    image: ImageRef


class Engine:
    """Downloads a list of products with a pool of workers; see the module doc."""

    def __init__(
        self,
        *,
        data_dir: Path,
        store: StateStore,
        fetcher: Fetcher,
        config: EngineConfig,
        view: ProgressView,
        tally: Tally,
        signals: SignalWatcher,
        say: Callable[..., None],
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.fetcher = fetcher
        self.config = config
        self.view = view
        self.tally = tally
        self.signals = signals
        self.say = say
        # Images waiting for the multiplexer to have room; it takes them itself
        # (`_next_download`) the moment a transfer ends.
        self.jobs: deque[_Job] = deque()
        self.downloads = Multiplexer(
            fetcher, config.workers, source=self._next_download
        )
        self.stop_starting = threading.Event()
        self.interrupted = False  # a signal stopped the run with work left
        self._outstanding = 0
        self._done = 0
        self._total = 0
        self.saver = Saver(
            data_dir,
            store,
            save_every=config.save_every,
            save_interval=config.save_interval,
            check_home=lambda: self._check_home(now=True),
            home_moved=lambda: self._home.moved(),
        )
        self._last_beat = time.monotonic()
        self._home_checked = 0.0
        # URL -> where this run saved it (the most recent few), and URL -> the
        # jobs waiting for its download in flight: a URL is fetched once.
        self._fetched: OrderedDict[str, tuple[str, SavedImage]] = OrderedDict()
        self._in_flight: dict[str, list[_Job]] = {}
        self._active: dict[str, _ProductRun] = {}

    def run(
        self, products: Iterable[Product], total: int, done_before: int, merge: bool
    ) -> RunResult:
        """Download every product; return early, state saved, on a signal.

        `products` is consumed lazily, a few per worker ahead of the downloads, so
        a store can hand out work as it is needed.
        """
        todo = _Lookahead(iter(products))
        self._total, self._done = total, done_before
        self._home = _guard(self.data_dir)
        try:
            self.view.begin(total, done_before)
            if self._loop(todo, merge):
                self.interrupted = True
                self._shutdown()
            else:
                self.view.end()
                self._flush()
        except StorageError:
            # Keep what was recorded before the disk filled up, if it still fits.
            self.stop_starting.set()
            self.fetcher.abort.set()
            # A write that failed because the folder went away: say that.
            self._check_home(now=True)
            with contextlib.suppress(StorageError):
                self._flush()
            raise
        finally:
            self.view.end()
            self._stop_downloads()
            self.saver.wait()  # it may use the data directory's guard
            self._home.close()
        return RunResult(
            # Only a signal the run stopped for: one that lands after the last
            # product (nothing pending) ends a complete run, not an interrupted one.
            # (stop_starting cannot tell: _stop_downloads sets it on every exit.)
            signal=self.signals.first_signal if self.interrupted else None,
            completed=self.store.completed_count(),
            pending=self.store.pending_count(),
            failures=self.store.failure_count(),
            tally=self.tally,
        )

    # -- the main loop -----------------------------------------------------------

    def _loop(self, todo: _Lookahead, merge: bool) -> bool:
        """Run until everything is done (False) or a signal arrives (True)."""
        while todo or self._outstanding:
            self._check_home()
            if self.signals.triggered.is_set():
                return True
            self._dispatch(todo, merge)
            self._collect(_POLL)
            self._maybe_flush()
        if not self.signals.triggered.is_set():
            return False
        self._flush()
        return self.store.pending_count() > 0

    def _dispatch(self, todo: _Lookahead, merge: bool) -> None:
        # Keep only a couple of jobs per worker queued: the order of the input is
        # kept, memory stays flat, and few products are in flight at an interrupt.
        started = 0
        limit = 2 * self.config.workers
        while todo and self._outstanding < limit and started < _STARTS_PER_TURN:
            self._start_product(todo.pop(), merge)
            started += 1

    def _next_download(self) -> tuple[_Job, str, Path, str] | None:
        if not self.jobs or self.stop_starting.is_set():
            return None
        job = self.jobs.popleft()
        return job, job.image.url, job.run.folder, job.image.stem

    def _start_product(self, product: Product, merge: bool) -> None:
        folder = product_dir(self.data_dir, product.id)
        _unlink_symlinked_folder(folder)
        entry = self.store.mapping_entry(product.id) if merge else None
        run = _ProductRun(product, folder, merge_into=entry or ({} if merge else None))
        existing = _existing_images(folder)
        known = self.store.saved_images(product.id)
        for image in product.images:
            slot = known.get((image.category, image.index))
            if slot is not None and slot.url != strip_userinfo(image.url):
                # The input changed this image's URL since the file was saved.
                existing.pop(image.stem, None)
            if image.stem in existing:
                # Saved by an earlier, interrupted run: files at final names are whole.
                run.saved[(image.category, image.index)] = image_relpath(
                    product.id, image.stem, existing[image.stem]
                )
                self.tally.per_category[image.category] += 1
                self.tally.images += 1
                # Its rename may never have been synced if that run was killed.
                self.saver.wrote_into(folder)
            elif image.problem:
                run.failures.append(
                    Failure(
                        image.category,
                        image.index,
                        strip_userinfo(image.url),
                        image.problem,
                        0,
                    )
                )
                self.tally.failed += 1
            elif not self._reuse_fetched(run, image):
                run.outstanding += 1
                self._outstanding += 1
                job = _Job(run, image)
                waiting = self._in_flight.get(image.url)
                if waiting is not None:
                    waiting.append(job)  # the same URL is being downloaded now
                else:
                    self._in_flight[image.url] = []
                    self.jobs.append(job)
        if run.outstanding == 0:
            self._finish_product(run)
        else:
            self._active[product.id] = run

    def _collect(self, timeout: float) -> None:
        for job, result in self.downloads.pump(timeout):
            assert isinstance(job, _Job)
            self._handle(job, _outcome(job, result))

    def _handle(self, job: _Job, outcome: Outcome) -> None:
        run, image = job.run, job.image
        run.outstanding -= 1
        self._outstanding -= 1
        waiters = self._in_flight.pop(image.url, None) or []
        if isinstance(outcome, SavedImage):
            relpath = image_relpath(run.product.id, image.stem, _ext(outcome.filename))
            self._remember_fetched(image.url, relpath, outcome)
            run.saved[(image.category, image.index)] = relpath
            # Without user and password, as in failure records: only the pending
            # input record holds the URL exactly as given.
            self.store.record_image(
                run.product.id,
                image.category,
                image.index,
                strip_userinfo(image.url),
                relpath,
            )
            self.tally.per_category[image.category] += 1
            self.tally.images += 1
            self.tally.bytes += outcome.size
            self.saver.wrote_into(run.folder)
        elif isinstance(outcome, Failure):
            log.warning(
                "product %s: %s image %d failed: %s",
                run.product.id,
                image.category,
                image.index,
                outcome.reason,
            )
            run.failures.append(outcome)
            self.tally.failed += 1
        elif isinstance(outcome, _Fatal):
            raise storage_error(outcome.error, run.folder)
        else:
            run.incomplete = True
        for waiter in waiters:
            self._handle(waiter, self._share(outcome, waiter))
        if run.outstanding == 0:
            self._active.pop(run.product.id, None)
            if not run.incomplete:
                self._finish_product(run)

    # -- the same URL in several places --------------------------------------------

    def _remember_fetched(self, url: str, relpath: str, saved: SavedImage) -> None:
        self._fetched[url] = (relpath, saved)
        self._fetched.move_to_end(url)
        if len(self._fetched) > _FETCHED_MEMORY:
            self._fetched.popitem(last=False)

    def _reuse_fetched(self, run: _ProductRun, image: ImageRef) -> bool:
        """Give `image` its own file from an earlier download of the same URL in
        this run (a hard link where the file system allows, else a copy)."""
        known = self._fetched.get(image.url)
        if known is None:
            return False
        source = self.data_dir / known[0]
        saved = _link_or_copy(source, run.folder, image.stem, known[1])
        if saved is None:
            return False  # the first file is gone: download again
        run.saved[(image.category, image.index)] = image_relpath(
            run.product.id, image.stem, _ext(saved.filename)
        )
        self.tally.per_category[image.category] += 1
        self.tally.images += 1
        self.saver.wrote_into(run.folder)
        return True

    def _share(self, outcome: Outcome, waiter: _Job) -> Outcome:
        """The outcome of a download for another place that wanted the same URL."""
        image = waiter.image
        if isinstance(outcome, Failure):
            return Failure(
                image.category,
                image.index,
                outcome.url,
                outcome.reason,
                outcome.attempts,
            )
        if isinstance(outcome, SavedImage):
            known = self._fetched.get(image.url)
            linked = known and _link_or_copy(
                self.data_dir / known[0], waiter.run.folder, image.stem, known[1]
            )
            return linked or SKIPPED  # SKIPPED: it stays pending, fetched next run
        return outcome

    def _finish_product(self, run: _ProductRun) -> None:
        entry = _build_entry(run, self.config.categories)
        failures = sorted(run.failures, key=lambda f: (f.category, f.index))
        self.saver.product_finished((run.product.id, entry, failures))
        self._done += 1
        self.tally.products += 1
        counts = {c: len(entry.get(c, [])) for c in self.config.categories}
        line = ProductLine(
            self._done, self._total, run.product.id, counts, len(failures)
        )
        self.view.product_finished(line)

    # -- saving ------------------------------------------------------------------

    def _maybe_flush(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= _HEARTBEAT:
            self.store.heartbeat()
            self._last_beat = now
        self.saver.maybe()

    def _flush(self) -> None:
        self.saver.now()

    def _check_home(self, *, now: bool = False) -> None:
        # A few stat calls: every _HOME_CHECK seconds is soon enough to stop
        # (writes into a deleted folder fail on their own anyway).
        clock = time.monotonic()
        if not now and clock - self._home_checked < _HOME_CHECK:
            return
        self._home_checked = clock
        if not self._home.moved():
            return
        if self._home.unchanged(self.data_dir):
            # The folder is still there, its lock file is not: an `rm -rf` that
            # could not remove the folder itself. State files we wrote while it
            # ran may name images it deleted; the next run starts over without.
            # A save in the background could write them again: it ends first.
            self.saver.wait()
            with contextlib.suppress(StorageError):
                remove_store_files(self.data_dir, self.store.name)
        raise _gone(self.data_dir)

    # -- shutdown ----------------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop starting work, give in-flight images the grace period, save."""
        self.view.end()
        self.say("blank")
        self.say("rule")
        self.say("interrupted")
        self.say("rule")
        self.say("waiting")
        self.stop_starting.set()
        self._drain_unstarted()
        deadline = time.monotonic() + self.config.grace_period
        while self._outstanding and time.monotonic() < deadline:
            if self.signals.count > 1:
                self.say("second_interrupt")
                break
            self._collect(0.05)
        self.fetcher.abort.set()
        for job, result in self.downloads.abort():
            assert isinstance(job, _Job)
            self._handle(job, _outcome(job, result))
        self.say("saving")
        self._flush()
        self._remove_partial_files()

    def _remove_partial_files(self) -> None:
        # Aborted downloads remove their own temporary files; this is for a file
        # left by anything else (a sink that could not unlink): their products
        # stay pending, and a half-written file must not outlive us.
        for run in self._active.values():
            try:
                names = os.listdir(run.folder)
            except OSError:
                continue
            for name in names:
                if is_temp_name(name):
                    with contextlib.suppress(OSError):
                        os.unlink(run.folder / name)

    def _drain_unstarted(self) -> None:
        while self.jobs:
            self._handle(self.jobs.popleft(), SKIPPED)

    def _stop_downloads(self) -> None:
        self.stop_starting.set()
        self.fetcher.abort.set()
        self.downloads.close()


def _outcome(job: _Job, result: Result) -> Outcome:
    """What the engine records for a download that ended with `result`."""
    if isinstance(result, SavedImage):
        return result
    image = job.image
    if isinstance(result, ImageFailed):
        # The record keeps no password: state files are often shared.
        return Failure(
            image.category,
            image.index,
            strip_userinfo(image.url),
            result.reason,
            result.attempts,
        )
    if isinstance(result, Aborted):
        return SKIPPED
    if isinstance(result, OSError):
        return _Fatal(result)
    # A bug must fail one image, not the run.
    log.error(
        "unexpected error downloading %s",
        redact_url(image.url),
        exc_info=(type(result), result, result.__traceback__),
    )
    return Failure(
        image.category,
        image.index,
        strip_userinfo(image.url),
        f"internal error: {type(result).__name__}",
    )


class _Lookahead:
    """An iterator that can say whether anything is left without consuming it."""

    def __init__(self, items: Iterator[Product]) -> None:
        self._items = items
        self._next: Product | None = None

    def __bool__(self) -> bool:
        if self._next is None:
            self._next = next(self._items, None)
        return self._next is not None

    def pop(self) -> Product:
        if not self:
            raise IndexError("no products left")
        item, self._next = self._next, None
        assert item is not None
        return item


def _existing_images(folder: Path) -> dict[str, str]:
    """Stems already saved in a product's folder, with their extensions."""
    # TODO(#5): json and markers keep no per-image URLs and reuse a file by its
    # name alone. Pending products resume from their stored records, so this only
    # matters when a product's state was lost but its files were not (state files
    # removed by hand, then the catalog edited): the old image is kept.
    try:
        with os.scandir(folder) as entries:
            # Only regular files: a symlink named main_1.jpg would map a file from
            # elsewhere on the machine as this product's image.
            names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {}
    for name in names:
        stem, dot, ext = name.rpartition(".")
        if dot and ext in _IMAGE_EXTENSIONS and not is_temp_name(name):
            if _looks_whole(folder / name):
                found[stem] = ext
    return found


def _link_or_copy(
    source: Path, folder: Path, stem: str, saved: SavedImage
) -> SavedImage | None:
    """`source` under the name of another slot, atomically; None when it is gone."""
    name = f"{stem}.{_ext(saved.filename)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with temp_file_beside(folder / name) as (handle, temp):
            handle.close()
            os.unlink(temp)
            try:
                os.link(source, temp)
            except OSError:  # no hard links here (FAT, some network shares)
                shutil.copyfile(source, temp)
            os.replace(temp, folder / name)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a full disk, a read-only folder
        raise storage_error(exc, folder) from exc
    return SavedImage(name, 0, saved.format)  # 0: no bytes were downloaded


def _looks_whole(path: Path) -> bool:
    """Whether a file at its final name still starts like an image.

    Images are synced in batches (fsutil.BATCH_SYNC): after a power loss, one
    renamed since the last sync can be empty. It is downloaded again.
    """
    try:
        with open(path, "rb") as handle:
            return sniff_format(handle.read(SNIFF_BYTES)) is not None
    except OSError:
        return False


def _unlink_symlinked_folder(folder: Path) -> None:
    """Remove a symlink standing where a product's folder belongs.

    imgfetch never makes one; one that was planted (an unpacked archive, another
    tool) would have images written and read wherever it points, outside the data
    directory. Only the link goes; what it points at is left alone, and the
    product's images are fetched into a real folder.
    """
    if not folder.is_symlink():
        return
    log.warning("%s is a symbolic link: replaced by a folder of its own", folder)
    try:
        folder.unlink()
    except OSError as exc:
        raise storage_error(exc, folder) from exc


def _build_entry(run: _ProductRun, categories: tuple[str, ...]) -> Entry:
    if run.merge_into is not None:
        entry = {c: list(paths) for c, paths in run.merge_into.items()}
    else:
        entry = {}
    for category in categories:
        entry.setdefault(category, [])
    for (category, _index), path in run.saved.items():
        paths = entry.setdefault(category, [])
        if path not in paths:
            paths.append(path)
    for paths in entry.values():
        paths.sort(key=_index_of)
    return entry


def _index_of(path: str) -> int:
    match = _INDEX_RE.search(path)
    return int(match.group(1)) if match else 0


def _ext(filename: str) -> str:
    return filename.rpartition(".")[2]


def _guard(data_dir: Path) -> PathGuard:
    # The lock file too: an `rm -rf` racing with our writes can fail to remove
    # the folder itself (a file appeared in it), but the lock file is gone.
    lock = data_dir / LOCK_FILE
    try:
        return PathGuard([data_dir, *([lock] if lock.exists() else [])])
    except OSError:
        raise _gone(data_dir) from None


def _gone(data_dir: Path) -> StorageError:
    return StorageError("data_dir_gone", hint="data_dir_gone", path=data_dir)
