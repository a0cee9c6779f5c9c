"""Saves: images synced before records, in the background while downloads go on."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgfetch import saving
from imgfetch.backends import open_store
from imgfetch.backends.base import StateStore
from imgfetch.catalog import product_id
from imgfetch.errors import StorageError
from imgfetch.saving import Saver


class Disk:
    """Stands in for the batch sync: counts calls, can hold one or fail."""

    def __init__(self) -> None:
        self.calls = 0
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.error: OSError | None = None

    def sync(self, folder: Path) -> None:
        self.calls += 1
        self.entered.set()
        assert self.hold.wait(20), "never released"
        if self.error is not None:
            raise self.error


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    fake = Disk()
    monkeypatch.setattr(saving, "BATCH_SYNC", True)
    monkeypatch.setattr(saving, "sync_filesystem", fake.sync)
    return fake


@pytest.fixture(params=["json", "markers", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    opened = open_store(request.param, tmp_path)
    opened.open(lambda record: product_id(record, None))
    yield opened
    opened.close()


def entry(pid: str) -> dict[str, list[str]]:
    return {"main": [f"images/{pid}/main_1.jpg"], "sku": [], "qc": []}


def make(store: StateStore, tmp_path: Path, moved: list[bool] | None = None) -> Saver:
    gone = moved if moved is not None else [False]

    def check_home() -> None:
        if gone[0]:
            raise StorageError("data_dir_gone", hint="data_dir_gone", path=tmp_path)

    # save_interval 0: a save is due whenever a product is waiting.
    return Saver(
        tmp_path,
        store,
        save_every=1,
        save_interval=0.0,
        check_home=check_home,
        home_moved=lambda: gone[0],
    )


def finish(saver: Saver, pid: str, tmp_path: Path) -> None:
    saver.wrote_into(tmp_path / "images" / pid)
    saver.product_finished((pid, entry(pid), []))


def wait_until_done(saver: Saver) -> None:
    deadline = time.monotonic() + 20
    while saver.busy:
        assert time.monotonic() < deadline, "the save never ended"
        time.sleep(0.01)


def reopened(store: StateStore, tmp_path: Path) -> set[str]:
    """The products completed on disk, as a new process would read them."""
    again = open_store(store.name, tmp_path)
    again.open(lambda record: product_id(record, None))
    try:
        return {pid for pid, _entry in again.iter_mapping()}
    finally:
        again.close()


def test_a_due_save_runs_while_the_caller_goes_on_and_records_after_the_sync(
    store: StateStore, tmp_path: Path, disk: Disk
) -> None:
    saver = make(store, tmp_path)
    disk.hold.clear()
    finish(saver, "a", tmp_path)

    saver.maybe()  # returns at once: the sync is held
    assert disk.entered.wait(20)
    finish(saver, "b", tmp_path)  # finished while the first save runs
    saver.maybe()  # no second save while one runs
    # Nothing recorded before its images are synced.
    assert reopened(store, tmp_path) == set()

    disk.hold.set()
    wait_until_done(saver)
    assert reopened(store, tmp_path) == {"a"}
    saver.maybe()  # takes the first one in, starts the next
    wait_until_done(saver)
    saver.now()
    assert reopened(store, tmp_path) == {"a", "b"}
    assert disk.calls == 2


def test_a_failed_sync_is_raised_and_its_products_go_into_the_next_save(
    store: StateStore, tmp_path: Path, disk: Disk
) -> None:
    saver = make(store, tmp_path)
    disk.error = OSError(errno.EIO, "Input/output error")
    finish(saver, "a", tmp_path)
    saver.maybe()
    wait_until_done(saver)

    with pytest.raises(StorageError, match="Input/output error"):
        saver.maybe()
    assert reopened(store, tmp_path) == set()

    disk.error = None  # the disk works again
    saver.now()
    assert reopened(store, tmp_path) == {"a"}


def test_nothing_is_written_into_a_data_directory_that_moved_during_the_sync(
    store: StateStore, tmp_path: Path, disk: Disk
) -> None:
    moved = [False]
    saver = make(store, tmp_path, moved)
    disk.hold.clear()
    finish(saver, "a", tmp_path)
    saver.maybe()
    assert disk.entered.wait(20)
    moved[0] = True  # deleted or replaced while the images were synced
    disk.hold.set()
    wait_until_done(saver)

    with pytest.raises(StorageError) as raised:
        saver.maybe()
    assert raised.value.args == ("data_dir_gone",)
    moved[0] = False
    assert reopened(store, tmp_path) == set()


def test_now_waits_for_a_save_in_the_background_then_saves_the_rest(
    store: StateStore, tmp_path: Path, disk: Disk
) -> None:
    saver = make(store, tmp_path)
    disk.hold.clear()
    finish(saver, "a", tmp_path)
    saver.maybe()
    assert disk.entered.wait(20)
    finish(saver, "b", tmp_path)
    threading.Timer(0.2, disk.hold.set).start()

    saver.now()

    assert reopened(store, tmp_path) == {"a", "b"}
