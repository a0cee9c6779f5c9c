"""Shared fixtures: a real image server on 127.0.0.1 and a real imgfetch process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from imgfetch.backends import open_store
from imgfetch.backends.identity import current_store
from imgfetch.catalog import product_id
from imgfetch.fetch import Fetcher, SavedImage
from imgfetch.multiplex import Multiplexer
from imgfetch.testserver import ImageServer

CATEGORY_FIELDS = {"main": "main_images", "sku": "sku_images", "qc": "qc_images"}
_INDEX = re.compile(r"^(?P<cat>[a-z0-9_]+)_(?P<n>\d+)\.[a-z0-9]+$")


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the environment: it would capture requests to 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """A product folder; after the test no temporary file may remain."""
    target = tmp_path / "images" / "p1"
    yield target
    temps = sorted(tmp_path.rglob(".imgfetch-*.tmp"))
    assert not temps, f"temporary files left: {temps}"


@pytest.fixture(params=["blocking", "multiplexer"])
def fetch_driver(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Runs a test of `Fetcher.fetch` twice: once as it is (the download on the
    calling thread), once through a Multiplexer, as the engine runs downloads.

    A fetcher gets one Multiplexer per thread that calls it, kept until the test
    ends, so its connections stay open from one fetch to the next as in a run.
    """
    if request.param == "blocking":
        yield "blocking"
        return
    made: dict[tuple[int, int], Multiplexer] = {}
    lock = threading.Lock()

    def fetch(self: Fetcher, url: str, folder: Path, stem: str) -> SavedImage:
        if type(self.abort) is not threading.Event:
            # A test's own event that records the waits (and skips them) is
            # only asked by the blocking driver: the multiplexer's are timers.
            pytest.skip("this test records its waits through the blocking driver")
        key = (id(self), threading.get_ident())
        with lock:
            downloads = made.get(key)
            if downloads is None:
                downloads = made[key] = Multiplexer(self, 1)
        return _fetch_through(downloads, self, url, folder, stem)

    monkeypatch.setattr(Fetcher, "fetch", fetch)
    try:
        yield "multiplexer"
    finally:
        for downloads in made.values():
            downloads.close()


def _fetch_through(
    downloads: Multiplexer, fetcher: Fetcher, url: str, folder: Path, stem: str
) -> SavedImage:
    downloads.add(0, url, folder, stem)
    while True:
        # The engine's way to stop: set the event, then abort the downloads.
        stopping = fetcher.abort.is_set()
        ended = downloads.abort() if stopping else downloads.pump(0.05)
        if ended:
            result = ended[0][1]
            if isinstance(result, BaseException):
                raise result
            assert isinstance(result, SavedImage)
            return result


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


# Variables the running test wants in every imgfetch child (see `child_env`).
_CHILD_EXTRA: dict[str, str] = {}


@pytest.fixture
def child_env() -> Iterator[dict[str, str]]:
    """Variables added to the environment of every imgfetch child this test starts,
    e.g. IMGFETCH_BACKEND to run the test against one store. The parent's own
    IMGFETCH_* variables never reach a child; only these do."""
    _CHILD_EXTRA.clear()
    yield _CHILD_EXTRA
    _CHILD_EXTRA.clear()


def imgfetch_env(lang: str = "en_US.UTF-8", **extra: str) -> dict[str, str]:
    """A clean environment for a child imgfetch: fixed locale, no colour, no TTY."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LC_", "IMGFETCH_")) and k not in ("LANG", "FORCE_COLOR")
    }
    env.update(LANG=lang, PYTHONUNBUFFERED="1", NO_COLOR="1", COLUMNS="200")
    env.update(_CHILD_EXTRA)
    env.update(extra)
    return env


def run_imgfetch(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    lang: str = "en_US.UTF-8",
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m imgfetch ARGS` to the end and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "imgfetch", *args],
        cwd=cwd,
        env=env or imgfetch_env(lang),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_imgfetch(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    lang: str = "en_US.UTF-8",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start `python -m imgfetch ARGS` in the background (stdout and stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "imgfetch", *args],
        cwd=cwd,
        env=env or imgfetch_env(lang),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def wait_for_progress(data_dir: Path, images: int, timeout: float = 30) -> None:
    """Block until at least `images` image files exist under the data directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        root = data_dir / "images"
        saved = [p for p in root.glob("*/*_*.*") if not p.name.startswith(".")]
        if len(saved) >= images:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {images} images appeared in {timeout}s")


def interrupt(
    proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 15
) -> tuple[int, str, str]:
    """Send `sig`, wait for the process to end; return (code, stdout, stderr)."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def make_catalog(
    server: ImageServer,
    count: int,
    *,
    main: int = 2,
    sku: int = 1,
    qc: int = 1,
    prefix: str = "p",
    **params: Any,
) -> list[dict[str, Any]]:
    """`count` products whose images the server serves; params go into every URL."""
    products = []
    for i in range(count):
        pid = f"{prefix}{i:04d}"
        product: dict[str, Any] = {"id": pid, "title": f"product {i}"}
        for category, n in (("main", main), ("sku", sku), ("qc", qc)):
            product[CATEGORY_FIELDS[category]] = [
                server.url(f"{pid}-{category}-{k}", size=1500 + 37 * k, **params)
                for k in range(1, n + 1)
            ]
        products.append(product)
    return products


def write_catalog(path: Path, products: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(products, ensure_ascii=False), encoding="utf-8")
    return path


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def urls_of(product: dict[str, Any], category: str) -> list[str]:
    """The URL strings of one category of a catalog product (test catalogs only)."""
    value = product.get(CATEGORY_FIELDS[category]) or []
    if isinstance(value, str):
        value = [value]
    return [v["url"] if isinstance(v, dict) else v for v in value]


@dataclass(frozen=True)
class StoredState:
    """What a data directory holds, read through the API of the store that owns it."""

    store: str | None  # None: no store has written anything yet
    mapping: dict[str, dict[str, list[str]]]
    pending: list[tuple[str, dict[str, Any]]]
    has_pending: bool
    failures: dict[str, list[dict[str, Any]]]

    @property
    def pending_ids(self) -> list[str]:
        return [pid for pid, _raw in self.pending]

    @property
    def pending_records(self) -> list[dict[str, Any]]:
        return [raw for _pid, raw in self.pending]


def read_state(data_dir: Path) -> StoredState:
    """Open the store that owns `data_dir` (read-only, as every store's `open` is)
    and read everything; a folder no store has written to reads as empty."""
    name = current_store(data_dir) if data_dir.is_dir() else None
    if name is None:
        return StoredState(None, {}, [], False, {})
    store = open_store(name, data_dir)
    store.open(lambda record: product_id(record, None))
    try:
        return StoredState(
            store=name,
            mapping=dict(store.iter_mapping()),
            pending=store.pending(),
            has_pending=store.has_pending(),
            failures={
                pid: [f.to_json() for f in items]
                for pid, items in store.failures().items()
            },
        )
    finally:
        store.close()


def assert_export_matches(data_dir: Path, state: StoredState) -> None:
    """`imgfetch export` (the real CLI) writes what the store API reads."""
    assert state.store is not None, "nothing to export"
    with tempfile.TemporaryDirectory(prefix="imgfetch-export-") as folder:
        target = Path(folder)
        args = ["export", "--to", str(target), "--data-dir", str(data_dir)]
        result = run_imgfetch([*args, "--backend", state.store])
        assert result.returncode == 0, f"export: {result.stdout}\n{result.stderr}"
        mapping = load_json(target / "image_mapping.json")
        pending_file = target / "pending_tasks.json"
        pending = load_json(pending_file) if pending_file.exists() else []
        failed_file = target / "failed_images.json"
        failures = load_json(failed_file) if failed_file.exists() else {}
    assert list(mapping.items()) == list(state.mapping.items()), (
        f"{state.store}: the exported mapping differs from the store's"
    )
    assert pending == state.pending_records, (
        f"{state.store}: the exported pending list differs from the store's"
    )
    assert failures == state.failures, (
        f"{state.store}: the exported failures differ from the store's"
    )


def assert_consistent(
    data_dir: Path,
    catalog: list[dict[str, Any]],
    server: ImageServer,
    *,
    finished: bool,
    store: str | None = None,
    export: bool = False,
) -> dict[str, Any]:
    """Check the invariants every run must leave behind, interrupted or not.

    The state is read through the API of the store that owns the folder, so the
    same checks hold for every store:

    - completed (mapping) and pending are disjoint and together are the catalog,
      and pending products are stored exactly as the input has them;
    - every mapped file exists inside the data directory and holds exactly the
      bytes the server serves for that URL;
    - no temporary file is left;
    - when `finished`, no pending work is stored and everything is mapped;
    - when `store` is given, the folder belongs to that store (or to none yet);
    - when `export` is set, `imgfetch export` writes the same state (a subprocess,
      so only some calls ask for it).
    Returns the mapping.
    """
    by_id = {str(p["id"]): p for p in catalog}
    state = read_state(data_dir)
    mapping, pending_ids = state.mapping, state.pending_ids
    if store is not None:
        assert state.store in (store, None), f"{data_dir} belongs to {state.store}"

    assert not set(mapping) & set(pending_ids), "a product is completed and pending"
    assert len(pending_ids) == len(set(pending_ids)), "a product is pending twice"
    assert set(mapping) | set(pending_ids) == set(by_id), "products were lost"
    for pid, raw in state.pending:
        assert pid == str(raw["id"]), f"pending {pid} is stored as {raw['id']}"
        assert raw == by_id[pid], "pending dict differs from the input"
    if finished:
        assert not state.has_pending, f"{state.store}: pending work is still stored"
        assert set(mapping) == set(by_id)

    root = data_dir.resolve()
    for pid, entry in mapping.items():
        assert set(entry) >= {"main", "sku", "qc"}
        for category, paths in entry.items():
            urls = urls_of(by_id[pid], category)
            for rel in paths:
                path = (data_dir / rel).resolve()
                assert path.is_relative_to(root), rel
                match = _INDEX.match(path.name)
                assert match and match["cat"] == category, rel
                url = urls[int(match["n"]) - 1]
                assert path.read_bytes() == server.expected_bytes(url), rel
    temps = list(data_dir.rglob(".imgfetch-*.tmp"))
    assert not temps, f"temporary files left: {temps}"
    if export and state.store is not None:
        assert_export_matches(data_dir, state)
    return mapping


# ------------------------------------------------------------- added for #5


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "random interrupt rounds (tests/test_chaos.py)")
    group.addoption(
        "--rounds",
        type=int,
        default=None,
        help="chaos: interrupt rounds in all, spread over the stores (default 60)",
    )
    group.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        help="chaos: run only the series of this seed (replays a failure)",
    )


def injected_faults(server: ImageServer, url: str) -> int:
    """How many requests for `url` the server answered with an injected fault.

    The server fails only the first and the second attempt at a URL, each with
    `fault_rate`, decided per attempt number; this asks it about the attempts
    that have happened.
    """
    made = server.requests_for(url)
    target = urlsplit(url)._replace(scheme="", netloc="").geturl()
    return sum(server._fault_for(target, n) is not None for n in (1, 2) if n <= made)


def assert_recoverable(
    data_dir: Path,
    catalog: list[dict[str, Any]],
    server: ImageServer,
    *,
    store: str | None = None,
    export: bool = False,
) -> tuple[dict[str, Any], list[Path]]:
    """The invariants a process killed at any instant (kill -9) must leave.

    The same as `assert_consistent` with `finished=False`, except that temporary
    files may be left (the next start removes them; they are returned so the
    caller can check that it does) and that a run stopped before it stored any
    work may leave no state at all. Once work is stored, completed and pending
    together are the whole catalog. Returns the mapping and the temporary files.
    """
    by_id = {str(p["id"]): p for p in catalog}
    state = read_state(data_dir)
    mapping, pending_ids = state.mapping, state.pending_ids
    if store is not None:
        assert state.store in (store, None), f"{data_dir} belongs to {state.store}"
    assert not set(mapping) & set(pending_ids), "a product is completed and pending"
    assert len(pending_ids) == len(set(pending_ids)), "a product is pending twice"
    if mapping or state.has_pending:
        assert set(mapping) | set(pending_ids) == set(by_id), "products were lost"
    for pid, raw in state.pending:
        assert raw == by_id[pid], f"pending {pid} differs from the input"
    assert_mapped_files(data_dir, by_id, mapping, server)
    if export and state.store is not None:
        assert_export_matches(data_dir, state)
    return mapping, sorted(data_dir.rglob(".imgfetch-*.tmp"))


def assert_mapped_files(
    data_dir: Path,
    by_id: dict[str, dict[str, Any]],
    mapping: dict[str, Any],
    server: ImageServer,
) -> None:
    """Every mapped file is inside `data_dir`, named for its category and place,
    and holds exactly the bytes the server serves for that place's URL."""
    root = data_dir.resolve()
    for pid, entry in mapping.items():
        assert pid in by_id, f"{pid} is mapped but not in the catalog"
        assert set(entry) >= set(CATEGORY_FIELDS), f"{pid}: {entry}"
        for category, paths in entry.items():
            urls = urls_of(by_id[pid], category)
            for rel in paths:
                path = (data_dir / rel).resolve()
                assert path.is_relative_to(root), rel
                match = _INDEX.match(path.name)
                assert match and match["cat"] == category, rel
                url = urls[int(match["n"]) - 1]
                assert path.read_bytes() == server.expected_bytes(url), (
                    f"{rel} does not hold the bytes served for {url}"
                )
