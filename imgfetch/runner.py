"""One command from start to end: lock, open state, plan the work, run, report."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from .backends import open_store
from .backends.base import StateStore
from .backends.identity import choose_store, claim_directory, finish_migration
from .catalog import (
    Catalog,
    CatalogOptions,
    ImageRef,
    InvalidRecord,
    Product,
    normalize_url,
    parse_product,
    product_id,
    read_catalog,
)
from .console import get_console
from .engine import Engine, EngineConfig, RunResult
from .errors import (
    DataDirBusyError,
    ExitCode,
    StateError,
    StorageError,
    UsageError,
)
from .fetch import FetchConfig, Fetcher
from .fsutil import remove_stale_temp_files
from .messages import RULE, Messages
from .paths import IMAGES_DIR, LOCK_FILE, is_temp_name
from .progress import Tally, choose_view, format_bytes, format_duration
from .signals import SignalWatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """Everything a download or resume needs, already validated by the CLI."""

    data_dir: Path
    backend: str | None  # None: the data directory's own store
    catalog: CatalogOptions
    engine: EngineConfig
    fetch: FetchConfig
    progress: str


class Reporter:
    """Prints the spec's report lines (stdout) in the chosen language."""

    def __init__(self, msg: Messages, write: Callable[[str], None]) -> None:
        self.msg = msg
        self.write = write

    def __call__(self, key: str, **values: Any) -> None:
        if key == "blank":
            self.write("")
        elif key == "rule":
            self.write(RULE)
        else:
            self.write(self.msg(key, **values))

    def banner(self) -> None:
        self("rule")
        self("banner")
        self("rule")


def product_key(options: CatalogOptions) -> Callable[[dict[str, Any]], str]:
    return lambda record: product_id(record, options.id_field)


@contextlib.contextmanager
def locked_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's lock, or refuse at once if another process has it."""
    _make_data_dir(data_dir)
    lock = filelock.FileLock(str(data_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise DataDirBusyError("busy", hint="busy", path=data_dir) from None
    except OSError as exc:
        raise StorageError(
            "lock_failed",
            hint="local_disk",
            path=data_dir,
            detail=exc.strerror or exc,
        ) from None
    try:
        yield
    finally:
        lock.release()


def _make_data_dir(data_dir: Path) -> None:
    if data_dir.exists() and not data_dir.is_dir():
        raise UsageError("data_dir_is_file", hint="pass_dir", path=str(data_dir))
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(
            "data_dir_create",
            hint="writable_data_dir",
            path=str(data_dir),
            detail=exc.strerror or exc,
        ) from None


def open_state(
    data_dir: Path, backend: str | None, catalog: CatalogOptions, *, locked: bool
) -> StateStore:
    """Open the data directory's store; `locked` commands may finish a migration
    that a kill interrupted, the others only read."""
    if locked:
        finish_migration(data_dir)
    store = open_store(choose_store(data_dir, backend), data_dir)
    store.open(product_key(catalog))
    return store


def run_download(
    options: RunOptions,
    report: Reporter,
    input_path: Path | None,
    *,
    skip_invalid: bool = False,
    retry_failed: bool = False,
) -> int:
    """`imgfetch download` (input given) and `imgfetch resume` (input None)."""
    with SignalWatcher() as signals:
        catalog = None
        if input_path is not None and not retry_failed:
            catalog = _read_catalog_interruptibly(
                input_path, options.catalog, skip_invalid, signals
            )
            if catalog is None:
                return signals.exit_code
            _warn_dropped(catalog, report.msg)
        if signals.triggered.is_set():
            # Interrupted while reading the catalog: nothing was written yet.
            return signals.exit_code
        return _run_locked(options, report, catalog, signals, retry_failed)


def _read_catalog_interruptibly(
    path: Path, options: CatalogOptions, skip_invalid: bool, signals: SignalWatcher
) -> Catalog | None:
    """read_catalog on a helper thread, so that a signal is acted on even while a
    read blocks (a FIFO, a hung network mount); None when a signal came first
    (nothing has been written yet, so the caller can exit at once)."""
    outcome: list[Any] = []

    def read() -> None:
        try:
            outcome.append(read_catalog(path, options, skip_invalid=skip_invalid))
        except BaseException as exc:  # handed to the main thread below
            outcome.append(exc)

    reader = threading.Thread(target=read, name="imgfetch-catalog", daemon=True)
    reader.start()
    while reader.is_alive():
        if signals.triggered.is_set():
            return None
        reader.join(0.05)
    if signals.triggered.is_set():
        return None  # a signal wins over the error of a catalog cut short by it
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _run_locked(
    options: RunOptions,
    report: Reporter,
    catalog: Catalog | None,
    signals: SignalWatcher,
    retry_failed: bool,
) -> int:
    with locked_data_dir(options.data_dir):
        store = open_state(
            options.data_dir, options.backend, options.catalog, locked=True
        )
        try:
            # Every stored record is validated before anything is printed or
            # cleaned, so damaged state changes nothing.
            if not retry_failed:
                _check_pending(options, store)
            _check_failures(store, retry_failed)
            _clean_temp_files(options.data_dir, store, report)
            report.banner()
            if retry_failed:
                return _retry_failed(options, report, store, signals)
            had_pending = store.has_pending()
            if catalog is None and not had_pending:
                key = "nothing_to_resume" if store.pending_is_file else "resume_none"
                report(key, path=store.pending_label)
                return ExitCode.OK
            claim_directory(options.data_dir, store.name)
            done_before, total = _plan(report, store, catalog, signals)
            report("starting")
            result = _engine(options, report, store, signals).run(
                _claimed(store, options.catalog), total, done_before, merge=False
            )
            return _finish(report, store, result, had_pending or total > done_before)
        finally:
            store.close()


def _plan(
    report: Reporter,
    store: StateStore,
    catalog: Catalog | None,
    signals: SignalWatcher,
) -> tuple[int, int]:
    """Queue the input's new products after the pending ones (the spec's order);
    return how many of the job were done before, and the job's size."""
    pending = store.pending_count()
    if pending:
        report("found_pending", count=pending)
        report("pending_first")
    if catalog is None:
        done_before = store.completed_count()
    else:
        done_before = _queue_new(store, catalog, signals)
        _warn_changed(catalog, report.msg)
    return done_before, done_before + store.pending_count()


# Products handed to the store at once while planning: the catalog is read again
# product by product, and only this many wait in memory for the store.
_PENDING_BATCH = 10_000


def _queue_new(store: StateStore, catalog: Catalog, signals: SignalWatcher) -> int:
    """Add the catalog's products that are not completed to the pending ones;
    return how many are completed already.

    Queueing a million products takes a while; a signal stops it between two
    batches (what was queued is saved, and the engine then stops at once). The
    next `download` of the same catalog queues the rest.
    """
    done_before = 0
    batch: list[tuple[str, dict[str, Any]]] = []
    added = False
    for product in catalog.products:
        if store.is_completed(product.id):
            done_before += 1
            continue
        batch.append((product.id, product.raw))
        if len(batch) == _PENDING_BATCH:
            store.add_pending(batch)
            batch, added = [], True
            if signals.triggered.is_set():
                break
    # Recorded as pending before any download starts, so `resume` finds the
    # whole of the work even after a kill -9 in the first second. The store
    # skips products that are pending already.
    if batch:
        store.add_pending(batch)
        added = True
    if added:
        store.flush()
    return done_before


# Products asked of the store at a time: enough to keep the workers busy, few
# enough that a shared store's leases cover only work about to start.
_CLAIM_BATCH = 64


def _claimed(store: StateStore, options: CatalogOptions) -> Iterator[Product]:
    """The store's pending products, as the engine asks for them."""
    while batch := store.claim(_CLAIM_BATCH):
        for _pid, raw in batch:
            yield parse_product(raw, options)


def _check_failures(store: StateStore, retry_failed: bool) -> None:
    """Read the failures (few, and every run rewrites them) and, to retry them,
    their products' entries, so that stores that check rows as they read them
    report damage before anything is printed or changed."""
    failures = store.failures()
    if retry_failed:
        for product_id in failures:
            store.mapping_entry(product_id)


def _check_pending(options: RunOptions, store: StateStore) -> None:
    """Parse every pending record once, so a damaged one stops the run before it
    starts (and changes nothing)."""
    for number, (_pid, raw) in enumerate(store.iter_pending(), start=1):
        try:
            parse_product(raw, options.catalog)
        except InvalidRecord as exc:
            raise StateError(
                "state_record",
                hint="pending_fields",
                path=store.pending_label,
                number=number,
                reason=exc.text,
            ) from None


def _retry_failed(
    options: RunOptions, report: Reporter, store: StateStore, signals: SignalWatcher
) -> int:
    failures = store.failures()
    if not failures:
        report("retry_failed_none", path=store.mapping_label)
        return ExitCode.OK
    products = []
    for pid, items in failures.items():
        images = []
        for f in items:
            url, problem = normalize_url(
                f.url, options.catalog.default_scheme, original=options.catalog.original
            )
            images.append(ImageRef(f.category, f.index, url, problem))
        products.append(Product(pid, {}, tuple(images)))
    count = sum(len(p.images) for p in products)
    report("retrying_failed", count=count, products=len(products))
    claim_directory(options.data_dir, store.name)
    result = _engine(options, report, store, signals).run(
        products, len(products), 0, merge=True
    )
    return _finish(report, store, result, store.has_pending())


def _engine(
    options: RunOptions, report: Reporter, store: StateStore, signals: SignalWatcher
) -> Engine:
    tally = Tally()
    view = choose_view(options.progress, report.msg, tally, get_console, report.write)
    fetcher = Fetcher(options.fetch, threading.Event())
    return Engine(
        data_dir=options.data_dir,
        store=store,
        fetcher=fetcher,
        config=options.engine,
        view=view,
        tally=tally,
        signals=signals,
        say=report,
    )


def _finish(
    report: Reporter, store: StateStore, result: RunResult, pending_existed: bool
) -> int:
    if result.signal is not None:
        report("mapping_saved_count", count=result.completed)
        if result.pending:
            report("pending_saved", count=result.pending)
            report("pending_location", path=store.pending_label)
            report("pending_next_run")
        report("blank")
        report("saved_exit")
        report("rule")
        return 128 + result.signal
    _summary(report, result, store)
    report("mapping_saved_final", name=store.mapping_label, count=result.completed)
    if result.pending:
        report("pending_saved", count=result.pending)
        report("pending_location", path=store.pending_label)
    elif pending_existed:
        report("all_done_deleted" if store.pending_is_file else "all_done")
    else:
        report("all_done")
    return ExitCode.FAILURES if result.failures else ExitCode.OK


def _summary(report: Reporter, result: RunResult, store: StateStore) -> None:
    tally = result.tally
    elapsed = tally.elapsed
    report(
        "summary",
        products=tally.products,
        images=tally.images,
        size=format_bytes(tally.bytes),
        failed=tally.failed,
        elapsed=format_duration(elapsed),
        rate=f"{tally.images / max(elapsed, 1e-6):.1f}",
    )
    if result.failures:
        report("failures_written", count=result.failures, path=store.failures_label)
        # Imported here: failures_report imports this module.
        from .failures_report import reason_lines, top_reasons

        for line in reason_lines(top_reasons(store.failures()), report.msg):
            report.write(line)


def _warn_dropped(catalog: Catalog, msg: Messages) -> None:
    if catalog.duplicates:
        log.warning(
            msg(
                "duplicates",
                count=catalog.duplicates,
                example=catalog.duplicate_example,
            )
        )
    if catalog.invalid:
        log.warning(
            msg("skipped_invalid", count=catalog.invalid, first=catalog.invalid_example)
        )


def _warn_changed(catalog: Catalog, msg: Messages) -> None:
    """The file changed between the check and the second reading (see catalog)."""
    if catalog.changed:
        log.warning(
            msg(
                "catalog_changed",
                path=catalog.path,
                count=catalog.changed,
                first=catalog.changed_example,
            )
        )


def _clean_temp_files(data_dir: Path, store: StateStore, report: Reporter) -> None:
    folders = [data_dir / IMAGES_DIR]
    # A store that keeps its files in folders (markers) writes its temp files there.
    folders += [p for p in store.owned_paths(data_dir) if p.is_dir()]
    removed = sum(remove_stale_temp_files(f) for f in folders if f.is_dir())
    removed += _remove_top_level_temp_files(data_dir)
    if removed:
        log.info(report.msg("stale_temp_removed", count=removed))


def _remove_top_level_temp_files(data_dir: Path) -> int:
    """Temporary state files sit directly in the data directory."""
    removed = 0
    for path in data_dir.iterdir():
        if path.is_file() and is_temp_name(path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def pending_age(store: StateStore) -> float | None:
    modified = store.pending_modified()
    return None if modified is None else max(0.0, time.time() - modified)
