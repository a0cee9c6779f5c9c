"""A hostile environment: a full disk, a read-only or vanishing data directory,
and a catalog that changed between runs. Every test drives the real CLI, for
every store, and checks what README's "When things go wrong" promises.

The disk tests mount small tmpfs file systems, which needs root (the CI runs as
root); they are skipped, with the reason, where mounting is not allowed. Every
mount is undone when the test ends, whatever happened.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    assert_consistent,
    assert_recoverable,
    make_catalog,
    read_state,
    run_imgfetch,
    start_imgfetch,
    wait_for_progress,
    write_catalog,
)

from imgfetch.backends import backend_names
from imgfetch.messages import Messages
from imgfetch.testserver import ImageServer

EN = Messages("en")
PATIENCE = 60.0  # seconds; only a hung process reaches it


@pytest.fixture(params=backend_names(), autouse=True)
def store(request: pytest.FixtureRequest, child_env: dict[str, str]) -> str:
    """Every test runs once per store; each imgfetch child is told which."""
    name: str = request.param
    child_env["IMGFETCH_BACKEND"] = name
    return name


class Mounts:
    """tmpfs mounts made by one test, all undone at its end."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, where: Path, size: str, *extra: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        options = ",".join([f"size={size}", *extra])
        result = _mount(["-t", "tmpfs", "-o", options, "tmpfs", str(where)])
        if result.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs (needs root and CAP_SYS_ADMIN): "
                f"{result.stderr.strip() or result.returncode}"
            )
        self.points.append(where)
        return where

    def remount(self, where: Path, options: str) -> None:
        result = _mount(["-o", f"remount,{options}", str(where)])
        assert result.returncode == 0, f"remount {options}: {result.stderr}"

    def undo(self) -> None:
        for where in reversed(self.points):
            # Lazily if something still holds it open: the test is over either way.
            if subprocess.run(["umount", str(where)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _mount(args: list[str]) -> subprocess.CompletedProcess[str]:
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("tmpfs mounts need Linux and mount(8)")
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    made = Mounts()
    try:
        yield made
    finally:
        made.undo()


def dl(source: Path, data: Path, *extra: str) -> list[str]:
    base = ["download", str(source), "--data-dir", str(data), "--progress", "none"]
    return [*base, *extra]


def one_error_line(result: subprocess.CompletedProcess[str], *parts: str) -> str:
    """stderr is exactly one `imgfetch: error: ...` line holding every part."""
    lines = result.stderr.strip().splitlines()
    shown = (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert len(lines) == 1 and lines[0].startswith("imgfetch: error: "), shown
    for part in parts:
        assert part in lines[0], f"{part!r} missing:\n{shown}"
    return lines[0]


def assert_disk_full(line: str) -> None:
    """The error names the full disk, in the words of the OS or of SQLite (whose
    readers need room for the database's -shm file too)."""
    reasons = ("No space left on device", "disk is full", "disk I/O error (imgfetch")
    assert any(reason in line for reason in reasons), line


def files_in(folder: Path, *skip: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (SQLite's -shm is scratch memory
    that any reader may rewrite; it holds no state)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path not in skip and not path.name.endswith("-shm")
    }


def assert_unchanged(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Every file is as it was, and nothing was added but the empty log file
    SQLite creates when it opens a database in WAL mode."""
    changed = sorted(name for name in before if after.get(name) != before[name])
    assert not changed, f"changed or removed: {changed}"
    added = {name: after[name] for name in set(after) - set(before)}
    assert all(name.endswith("-wal") and not data for name, data in added.items()), (
        f"added: {sorted(added)}"
    )


def fill_up(folder: Path) -> Path:
    """Write a file until the file system holding `folder` has no space left."""
    filler = folder / "filler.bin"
    block = b"\0" * 4096
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def images_on_disk(data: Path) -> int:
    root = data / "images"
    return sum(1 for p in root.glob("*/*_*.*") if not p.name.startswith("."))


def big_catalog(server: ImageServer, count: int) -> list[dict[str, Any]]:
    """Products of two 20 kB main images and one small sku image each."""
    catalog = make_catalog(server, count, main=0, sku=1, qc=0)
    for product in catalog:
        pid = product["id"]
        product["main_images"] = [
            server.url(f"{pid}-main-{k}", size=20_000) for k in (1, 2)
        ]
    return catalog


# -------------------------------------------------------------- a full disk


def test_a_disk_that_fills_up_mid_run_stops_cleanly_and_resumes(
    server: ImageServer, tmp_path: Path, mounts: Mounts, store: str
) -> None:
    # 30 products of about 41 kB: about 1.2 MB of images on a 400 kB disk. The
    # state (the pending records) fits; the images run out of room part-way.
    catalog = big_catalog(server, 30)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = mounts.tmpfs(tmp_path / "data", "400k")

    full = run_imgfetch(dl(source, data, "--workers", "4"), timeout=PATIENCE)
    assert full.returncode == 4, f"{full.stdout}\n{full.stderr}"
    # Whichever write found the disk full first, an image's or the store's.
    assert_disk_full(one_error_line(full, "free disk space", "then run again"))
    assert images_on_disk(data) > 0, "the disk was full before the first image"
    # Whole and readable (nothing half-written), consistent, no temporary file.
    assert_consistent(data, catalog, server, finished=False, store=store, export=True)
    assert read_state(data).has_pending

    mounts.remount(data, "size=10m")
    again = run_imgfetch(dl(source, data), timeout=PATIENCE)
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert_consistent(data, catalog, server, finished=True, store=store, export=True)


def test_a_full_disk_never_leaves_a_half_written_state_file(
    server: ImageServer, tmp_path: Path, mounts: Mounts, store: str
) -> None:
    # The first write of the second run is the store's: it queues the new
    # products before any download. The disk has not a byte left for it.
    catalog = make_catalog(server, 10)
    source = write_catalog(tmp_path / "products.json", catalog[:5])
    data = mounts.tmpfs(tmp_path / "data", "400k")
    first = run_imgfetch(dl(source, data), timeout=PATIENCE)
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    filler = fill_up(data)
    before = files_in(data, filler)
    requests = server.total_requests

    write_catalog(source, catalog)
    full = run_imgfetch(dl(source, data), timeout=PATIENCE)
    assert full.returncode == 4, f"{full.stdout}\n{full.stderr}"
    assert_disk_full(one_error_line(full, "free disk space", "then run again"))
    assert_unchanged(before, files_in(data, filler))
    assert server.total_requests == requests

    filler.unlink()
    again = run_imgfetch(dl(source, data), timeout=PATIENCE)
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert_consistent(data, catalog, server, finished=True, store=store, export=True)


# ------------------------------------------------- a read-only data directory


def test_a_read_only_data_directory_changes_nothing(
    server: ImageServer, tmp_path: Path, mounts: Mounts, store: str
) -> None:
    # chmod does not stop root: the file system itself is made read-only.
    catalog = make_catalog(server, 8)
    source = write_catalog(tmp_path / "products.json", catalog[:4])
    data = mounts.tmpfs(tmp_path / "data", "10m")
    first = run_imgfetch(dl(source, data), timeout=PATIENCE)
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    write_catalog(source, catalog)
    mounts.remount(data, "ro")
    before = files_in(data)
    requests = server.total_requests

    for args in (dl(source, data), ["resume", "--data-dir", str(data)]):
        result = run_imgfetch(args, timeout=PATIENCE)
        assert result.returncode == 4, f"{args[0]}: {result.stdout}\n{result.stderr}"
        one_error_line(result, str(data), "Read-only file system", "writable")
    assert_unchanged(before, files_in(data))
    assert server.total_requests == requests

    # What only reads still works on it: a snapshot or a backup can be examined.
    exported = tmp_path / "exported"
    for args in (
        ["inspect-pending"],
        ["failures"],
        ["export", "--to", str(exported)],
    ):
        result = run_imgfetch([*args, "--data-dir", str(data)], timeout=PATIENCE)
        assert result.returncode == 0, f"{args[0]}: {result.stdout}\n{result.stderr}"
    assert (exported / "image_mapping.json").is_file()
    assert_unchanged(before, files_in(data))

    mounts.remount(data, "rw")
    again = run_imgfetch(dl(source, data), timeout=PATIENCE)
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert_consistent(data, catalog, server, finished=True, store=store, export=True)


def test_a_fresh_read_only_data_directory_is_refused(
    server: ImageServer, tmp_path: Path, mounts: Mounts, store: str
) -> None:
    source = write_catalog(tmp_path / "products.json", make_catalog(server, 2))
    data = mounts.tmpfs(tmp_path / "data", "1m", "ro")
    result = run_imgfetch(dl(source, data), timeout=PATIENCE)
    assert result.returncode == 4, f"{result.stdout}\n{result.stderr}"
    one_error_line(result, "Read-only file system")
    inside = run_imgfetch(dl(source, data / "inner"), timeout=PATIENCE)
    assert inside.returncode == 4, f"{inside.stdout}\n{inside.stderr}"
    one_error_line(inside, "cannot create data directory", "Read-only file system")
    assert not any(data.iterdir())
    assert server.total_requests == 0


# ------------------------------------------- a data directory that vanishes


@pytest.mark.parametrize("how", ["deleted", "moved away"])
def test_a_data_directory_removed_mid_run_stops_the_run(
    server: ImageServer, tmp_path: Path, store: str, how: str
) -> None:
    """What the user would call correct: the run stops at once with a clear
    error, writes nothing into a folder that took the old one's place (its
    state would name images that went with the old one), and the next run
    starts over and finishes. A folder moved away keeps a consistent state."""
    catalog = make_catalog(server, 40)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"
    server.delay = 0.05

    child = start_imgfetch(dl(source, data, "--workers", "4", "--save-every", "3"))
    try:
        wait_for_progress(data, 12, timeout=PATIENCE)
        moved = tmp_path / "moved"
        if how == "deleted":
            shutil.rmtree(data, ignore_errors=True)
        else:
            os.rename(data, moved)
        out, err = child.communicate(timeout=PATIENCE)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    result = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    assert result.returncode == 4, f"{out}\n{err}"
    one_error_line(result, str(data), "was deleted or replaced", "start over")
    if data.exists():
        # Workers may have finished an image after the removal: whole files,
        # but no state that claims what is not there.
        assert_recoverable(data, catalog, server, store=store)
        left = read_state(data)
        assert not left.mapping and not left.has_pending, "state survived"
    server.delay = 0.0
    if how == "moved away":
        # Left as a kill would leave it (a state write may have been cut off):
        # moved back, it resumes.
        assert_recoverable(moved, catalog, server, store=store)
        shutil.rmtree(data, ignore_errors=True)
        os.rename(moved, data)
    again = run_imgfetch(dl(source, data), timeout=PATIENCE)
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert_consistent(data, catalog, server, finished=True, store=store, export=True)


# -------------------------------------------- a catalog that changed between runs


def test_products_added_to_the_catalog_are_downloaded(
    server: ImageServer, tmp_path: Path, store: str
) -> None:
    catalog = make_catalog(server, 10)
    source = write_catalog(tmp_path / "products.json", catalog[:6])
    data = tmp_path / "data"
    assert run_imgfetch(dl(source, data)).returncode == 0
    mapping = read_state(data).mapping
    requests = {u: server.requests_for(u) for u in all_urls(catalog[:6])}

    write_catalog(source, catalog)
    again = run_imgfetch(dl(source, data))
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    final = assert_consistent(data, catalog, server, finished=True, store=store)
    assert {pid: final[pid] for pid in mapping} == mapping
    assert {u: server.requests_for(u) for u in requests} == requests
    assert all(server.requests_for(u) for u in all_urls(catalog[6:]))


def test_pending_products_removed_from_the_catalog_are_still_finished(
    server: ImageServer, tmp_path: Path, store: str
) -> None:
    """Pending tasks are resumed as they were stored (the original program's
    contract): a product that left the catalog while it was pending is finished
    first all the same, from its stored record."""
    catalog = make_catalog(server, 12)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"
    pending = interrupt_part_way(source, data, server, catalog)
    assert len(pending) >= 2, f"too little left pending: {pending}"
    removed = set(sorted(pending)[::2])

    write_catalog(source, [p for p in catalog if p["id"] not in removed])
    again = run_imgfetch(dl(source, data))
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert EN("found_pending", count=len(pending)) in again.stdout.splitlines()
    mapping = assert_consistent(data, catalog, server, finished=True, store=store)
    assert removed <= set(mapping)


def test_a_changed_url_of_a_completed_product_is_not_fetched(
    server: ImageServer, tmp_path: Path, store: str
) -> None:
    """Completed products are not compared with the catalog again (that keeps
    a rerun of a huge catalog cheap); README says how to refetch them."""
    catalog = make_catalog(server, 4)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"
    assert run_imgfetch(dl(source, data)).returncode == 0
    mapping = read_state(data).mapping

    changed = [dict(p) for p in catalog]
    new_url = server.url("p0001-main-1-new", size=2500)
    changed[1]["main_images"] = [new_url, *catalog[1]["main_images"][1:]]
    write_catalog(source, changed)
    again = run_imgfetch(dl(source, data))
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert server.requests_for(new_url) == 0
    # Still the old product: its files hold what the old URLs served.
    assert_consistent(data, catalog, server, finished=True, store=store)
    assert read_state(data).mapping == mapping


def test_a_pending_product_is_finished_from_its_stored_record(
    server: ImageServer, tmp_path: Path, store: str
) -> None:
    """A product interrupted part-way, whose image URL then changed in the
    catalog: every store finishes it from the record stored when it was queued,
    so the image already saved is kept and the new URL is not requested."""
    # The second image fails once and asks for a long wait (Retry-After), so
    # the product stays unfinished with its first image saved.
    product = {
        "id": "x",
        "main_images": [
            server.url("x-main-1", size=1900),
            server.url("x-main-2", size=2100, fail="503:1", retry_after=30),
        ],
    }
    source = write_catalog(tmp_path / "products.json", [product])
    data = tmp_path / "data"
    child = start_imgfetch(dl(source, data, "--grace-period", "0.2"))
    try:
        deadline = time.monotonic() + PATIENCE
        while not (
            images_on_disk(data) and server.requests_for(product["main_images"][1])
        ):
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.01)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=PATIENCE)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130, f"{out}\n{err}"
    assert read_state(data).pending_ids == ["x"]

    changed = dict(product)
    new_url = server.url("x-main-1-new", size=2300)
    changed["main_images"] = [new_url, product["main_images"][1]]
    write_catalog(source, [changed])
    again = run_imgfetch(dl(source, data))
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
    assert server.requests_for(new_url) == 0
    assert server.requests_for(product["main_images"][0]) == 1
    assert_consistent(data, [product], server, finished=True, store=store)


# ------------------------------------------------------------------ helpers


def all_urls(products: list[dict[str, Any]]) -> list[str]:
    fields = ("main_images", "sku_images", "qc_images")
    return [u for p in products for f in fields for u in p.get(f) or []]


def interrupt_part_way(
    source: Path, data: Path, server: ImageServer, catalog: list[dict[str, Any]]
) -> list[str]:
    """Run a download, interrupt it once some images are saved; the pending ids."""
    server.delay = 0.1
    child = start_imgfetch(dl(source, data, "--workers", "2"))
    try:
        wait_for_progress(data, 6, timeout=PATIENCE)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=PATIENCE)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    server.delay = 0.0
    assert child.returncode == 130, f"{out}\n{err}"
    assert_consistent(data, catalog, server, finished=False)
    return read_state(data).pending_ids
