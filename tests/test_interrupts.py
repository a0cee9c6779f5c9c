"""Interrupting a real `imgfetch download` process: SIGINT, SIGTERM, SIGKILL.

Every test runs the CLI as a subprocess against a real ImageServer on 127.0.0.1.
Downloads are slowed down with the server's delays so that there is always work
in flight to interrupt; the tests wait on what can be observed (image files
appearing, requests reaching the server, lines on stdout), never on the machine
being fast. Random moments come from `random.Random(seed)`, and the seed is in
every assertion message that depends on it, so a failure can be replayed.

Every test runs against every registered store (the `store_name` fixture) unless
it says why not, and reads the state through the store's API, never through one
store's files.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    assert_consistent,
    make_catalog,
    read_state,
    run_imgfetch,
    start_imgfetch,
    urls_of,
    wait_for_progress,
    write_catalog,
)

from imgfetch.backends import backend_names, open_store, store_class
from imgfetch.catalog import product_id
from imgfetch.engine import Engine, EngineConfig
from imgfetch.errors import StateError
from imgfetch.fetch import SPILL_BYTES, FetchConfig, Fetcher
from imgfetch.messages import Messages
from imgfetch.progress import ProgressView, Tally
from imgfetch.signals import SignalWatcher
from imgfetch.testserver import ImageServer

pytestmark = pytest.mark.signals

# Seconds a loaded CI machine may need beyond the ideal to save state and exit.
# The tests use it only to tell "did not wait" from "waited" (stalls of minutes,
# grace periods of 30 s); the exit time itself is benchmarks/speed.py's job.
SLACK = 5.0

EN = "en_US.UTF-8"
ZH = "zh_CN.UTF-8"

# The spec's lines, byte for byte (Chinese), and their English counterparts.
TEXT = {
    "zh": {
        "interrupted": "收到中断信号，正在安全退出...",
        "waiting": "等待当前任务完成...",
        "saving": "保存当前进度...",
        "mapping_saved": "✓ 映射文件已保存: {n} 个商品",
        "pending_saved": "✓ 未完成任务已保存: {m} 个商品",
        "pending_location": "  文件位置: {path}",
        "pending_next_run": "  下次运行时会自动恢复这些任务",
        "saved_exit": "✓ 数据已安全保存，程序退出",
        "found_pending": "发现未完成任务: {m} 个商品",
        "pending_first": "  将优先处理这些任务",
        "starting": "开始下载图片...",
        "all_done_deleted": "✓ 所有任务已完成，已删除待办文件",
        "all_done": "✓ 所有任务已完成",
    },
    "en": {
        "interrupted": "Interrupt received, shutting down safely...",
        "waiting": "Waiting for current tasks to finish...",
        "saving": "Saving progress...",
        "mapping_saved": "✓ Mapping file saved: {n} products",
        "pending_saved": "✓ Unfinished tasks saved: {m} products",
        "pending_location": "  File location: {path}",
        "pending_next_run": "  They will be resumed automatically on the next run",
        "saved_exit": "✓ Data saved safely, exiting",
        "found_pending": "Found unfinished tasks: {m} products",
        "pending_first": "  they will be processed first",
        "starting": "Downloading images...",
        "all_done_deleted": "✓ All tasks completed, pending file deleted",
        "all_done": "✓ All tasks completed",
        "second_interrupt": "Second interrupt: skipping the wait",
        "nothing_to_resume": "No unfinished tasks in {path}: nothing to resume",
    },
}
LANGS = {"zh": ZH, "en": EN}
RULE = "=" * 60
IMAGE_NAME = re.compile(r"^(?P<cat>[a-z]+)_(?P<n>\d+)\.[a-z0-9]+$")


# ------------------------------------------------------------------ stores


@pytest.fixture(params=backend_names(), autouse=True)
def store_name(request: pytest.FixtureRequest, child_env: dict[str, str]) -> str:
    """Every test here runs once per registered store (issue #3): each imgfetch
    child gets IMGFETCH_BACKEND, and the checks read the state through the store
    that owns the folder, which `assert_consistent(store=...)` checks is this one.

    Tests of process mechanics that no store takes part in narrow this down with
    `@pytest.mark.parametrize("store_name", ["json"], indirect=True)`, saying why.
    """
    name: str = request.param
    child_env["IMGFETCH_BACKEND"] = name
    return name


# ------------------------------------------------------------------ helpers


class Child:
    """A running `imgfetch` whose stdout and stderr are read while it runs."""

    def __init__(self, args: list[str], *, cwd: Path, lang: str = EN) -> None:
        self.args = args
        self.proc = start_imgfetch(args, cwd=cwd, lang=lang)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._pumps = [
            threading.Thread(
                target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True
            ),
            threading.Thread(
                target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True
            ),
        ]
        for pump in self._pumps:
            pump.start()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        with stream:
            for line in stream:
                sink.append(line.rstrip("\n"))

    def wait_for_line(self, line: str, timeout: float = 30) -> None:
        """Block until stdout has printed exactly `line`."""
        deadline = time.monotonic() + timeout
        while line not in self.stdout:
            if self.proc.poll() is not None:
                for pump in self._pumps:
                    pump.join(timeout=10)
                if line in self.stdout:
                    return
                raise AssertionError(
                    f"exited ({self.proc.returncode}) without printing {line!r}; "
                    f"stdout:\n{self.out}\nstderr:\n{self.err}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{line!r} not printed within {timeout}s; stdout:\n{self.out}"
                )
            time.sleep(0.01)

    def send(self, sig: int) -> float:
        """Send `sig`; return the monotonic time just before it left."""
        now = time.monotonic()
        self.proc.send_signal(sig)
        return now

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        for pump in self._pumps:
            pump.join(timeout=10)
        return code

    @property
    def out(self) -> str:
        return "\n".join(self.stdout)

    @property
    def err(self) -> str:
        return "\n".join(self.stderr)

    def kill_if_running(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children started by a test; any still running at the end are killed."""
    started: list[Child] = []
    yield started
    for child in started:
        child.kill_if_running()


def spawn(children: list[Child], args: list[str], cwd: Path, lang: str = EN) -> Child:
    child = Child(args, cwd=cwd, lang=lang)
    children.append(child)
    return child


def dl(catalog: Path, data: Path, *extra: str) -> list[str]:
    """`imgfetch download CATALOG --data-dir DATA --progress plain EXTRA...`"""
    base = ["download", str(catalog), "--data-dir", str(data), "--progress", "plain"]
    return [*base, *extra]


def resume_args(data: Path, *extra: str) -> list[str]:
    return ["resume", "--data-dir", str(data), "--progress", "plain", *extra]


def state(data: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The mapping and the pending records, through the store that owns `data`."""
    stored = read_state(data)
    return stored.mapping, stored.pending_records


def pending_label(data: Path) -> str:
    """Where the store that owns `data` keeps pending work, as messages name it."""
    owner = read_state(data).store
    assert owner is not None, f"no store has written to {data}"
    return open_store(owner, data).pending_label


def store_files(data: Path, name: str) -> dict[Path, bytes]:
    """The bytes of every file the store `name` owns in `data` (folders walked)."""
    found: dict[Path, bytes] = {}
    for owned in store_class(name).owned_paths(data):
        paths = sorted(owned.rglob("*")) if owned.is_dir() else [owned]
        found.update((p, p.read_bytes()) for p in paths if p.is_file())
    return found


def all_done(lang: str, store_name: str) -> str:
    """The last line of a run that finished the pending work. The spec's line says
    the pending file was deleted; stores that keep no such file do not say it."""
    key = "all_done_deleted" if store_class(store_name).pending_is_file else "all_done"
    return TEXT[lang][key]


def saved_images(data: Path) -> list[Path]:
    root = data / "images"
    return sorted(p for p in root.glob("*/*") if IMAGE_NAME.match(p.name))


def temp_files(data: Path) -> list[Path]:
    return sorted(p for p in data.rglob(".imgfetch-*.tmp"))


def url_of_file(path: Path, by_id: dict[str, dict[str, Any]]) -> str:
    """The catalog URL an image file was saved from (test ids are folder names)."""
    match = IMAGE_NAME.match(path.name)
    assert match, path
    product = by_id[path.parent.name]
    return urls_of(product, match["cat"])[int(match["n"]) - 1]


def all_urls(product: dict[str, Any]) -> list[str]:
    return [u for c in ("main", "sku", "qc") for u in urls_of(product, c)]


def assert_in_order(lines: list[str], expected: list[str], context: str) -> None:
    """Every expected line is printed, as a whole line, in this order."""
    position = 0
    for line in expected:
        try:
            position = lines.index(line, position) + 1
        except ValueError:
            raise AssertionError(
                f"{context}: line {line!r} missing or out of order in:\n"
                + "\n".join(lines)
            ) from None


def assert_interrupt_report(
    lines: list[str], lang: str, data: Path, context: str
) -> tuple[int, int]:
    """The spec's shutdown lines, with counts equal to the files; returns (N, M)."""
    text = TEXT[lang]
    mapping, pending = state(data)
    n, m = len(mapping), len(pending)
    context = f"{context} (files: N={n}, M={m})"
    # The spec's block: a blank line, the message between two rules, "waiting";
    # then (after the lines of products that finish in the grace period) the
    # rest, which ends the output.
    head = ["", RULE, text["interrupted"], RULE, text["waiting"]]
    tail = [text["saving"], text["mapping_saved"].format(n=n)]
    if m:
        tail += [
            text["pending_saved"].format(m=m),
            text["pending_location"].format(path=pending_label(data)),
            text["pending_next_run"],
        ]
    tail += ["", text["saved_exit"], RULE]
    shown = "\n".join(lines)
    assert lines.count(text["interrupted"]) == 1, f"{context}:\n{shown}"
    start = lines.index(text["interrupted"]) - 2
    assert start >= 0 and lines[start : start + len(head)] == head, (
        f"{context}: the interrupt block differs from the spec's:\n{shown}"
    )
    assert lines[-len(tail) :] == tail, (
        f"{context}: the closing lines differ from the spec's (expected {tail}):\n"
        f"{shown}"
    )
    return n, m


def assert_no_traceback(child_err: str, context: str) -> None:
    assert "Traceback" not in child_err, f"{context}: stderr:\n{child_err}"


def check_mapped_files(
    data: Path, catalog: list[dict[str, Any]], server: ImageServer, context: str
) -> dict[str, Any]:
    """What may be checked after kill -9: the store opens, mapped files are whole.

    Opening validates everything the store keeps (damage raises StateError). The
    JSON store may leave a product both mapped and pending (it writes the mapping
    first); its open resolves that for the mapping, as the next run does, so the
    store's view is disjoint for every store. Temp files may be left.
    """
    by_id = {p["id"]: p for p in catalog}
    try:
        stored = read_state(data)
    except StateError as exc:
        raise AssertionError(f"{context}: the state is damaged: {exc}") from None
    mapping = stored.mapping
    both = set(mapping) & set(stored.pending_ids)
    assert not both, f"{context}: completed and pending: {sorted(both)}"
    for pid, raw in stored.pending:
        assert raw == by_id.get(pid), f"{context}: pending {pid} differs from input"
    for pid, entry in mapping.items():
        assert pid in by_id, f"{context}: unknown product {pid} in the mapping"
        assert set(entry) >= {"main", "sku", "qc"}, f"{context}: {pid}: {entry}"
        for category, paths in entry.items():
            urls = urls_of(by_id[pid], category)
            assert len(paths) == len(urls), f"{context}: {pid} {category}: {paths}"
            for rel in paths:
                path = data / rel
                match = IMAGE_NAME.match(path.name)
                assert match and match["cat"] == category, f"{context}: {rel}"
                url = urls[int(match["n"]) - 1]
                assert path.read_bytes() == server.expected_bytes(url), (
                    f"{context}: {rel} does not hold the bytes served for {url}"
                )
    # The runner stores the whole catalog as pending before the first download, so
    # that `resume` after an early kill knows the whole job: once pending work is
    # stored, no product may be missing.
    if stored.has_pending:
        ids = set(mapping) | set(stored.pending_ids)
        assert ids == set(by_id), f"{context}: products lost: {set(by_id) - ids}"
    return mapping


def slow_catalog(
    server: ImageServer,
    count: int,
    *,
    main: int = 1,
    slow: dict[str, Any] | None = None,
    slow_every: int = 1,
    prefix: str = "p",
) -> list[dict[str, Any]]:
    """Products with `main` quick main images and one qc image carrying `slow`
    query parameters (a delay or a stall) on every `slow_every`-th product."""
    catalog = make_catalog(server, count, main=main, sku=0, qc=0, prefix=prefix)
    for index, product in enumerate(catalog):
        if slow is not None and index % slow_every == slow_every - 1:
            product["qc_images"] = [
                server.url(f"{product['id']}-qc-1", **{"size": 1800, **slow})
            ]
    return catalog


def wait_for_requests(
    server: ImageServer, urls: list[str], count: int, timeout: float = 30
) -> None:
    """Block until the server has received at least `count` requests for `urls`."""
    deadline = time.monotonic() + timeout
    while sum(server.requests_for(u) for u in urls) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} requests in {timeout}s")
        time.sleep(0.01)


def image_count(data: Path) -> int:
    return len(saved_images(data))


# -------------------------------------------------------------------- tests


MID_RUN_CASES = [
    pytest.param(signal.SIGINT, "zh", 130, "plain", 1101, id="sigint-zh-plain"),
    # The live display (on stderr) must stop cleanly for the report lines.
    pytest.param(signal.SIGTERM, "en", 143, "rich", 1102, id="sigterm-en-rich"),
    # A dropped SSH session.
    pytest.param(signal.SIGHUP, "zh", 129, "none", 1103, id="sighup-zh-none"),
]


def mid_run_cases() -> list[Any]:
    """Every case with the JSON store; one case each, in turn, with the others.

    The signal, the language and the display are the engine's business: a store
    sees the same calls whichever signal stopped the run, so one case per store
    tests the store, and the suite stays quick (the other tests run every store).
    """
    cases = []
    for number, name in enumerate(backend_names()):
        chosen = MID_RUN_CASES if name == "json" else [MID_RUN_CASES[number % 3]]
        cases += [
            pytest.param(name, *case.values, id=f"{name}-{case.id}") for case in chosen
        ]
    return cases


@pytest.mark.parametrize(
    ("store_name", "sig", "lang", "code", "progress", "seed"),
    mid_run_cases(),
    indirect=["store_name"],
)
def test_signal_mid_run_saves_state_and_resume_finishes(
    server: ImageServer,
    tmp_path: Path,
    children: list[Child],
    sig: int,
    lang: str,
    code: int,
    progress: str,
    seed: int,
    store_name: str,
) -> None:
    rng = random.Random(seed)
    text = TEXT[lang]
    catalog = make_catalog(server, 40)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"
    server.delay = 0.15

    args = dl(source, data, "--workers", "4", "--progress", progress)
    child = spawn(children, args, tmp_path, LANGS[lang])
    wait_for_progress(data, rng.randint(3, 20))
    time.sleep(rng.uniform(0, 0.3))
    child.send(sig)
    exit_code = child.wait()
    context = f"seed={seed} {signal.Signals(sig).name} {store_name}"

    assert exit_code == code, f"{context}: stdout:\n{child.out}\nstderr:\n{child.err}"
    assert_no_traceback(child.err, context)
    n, m = assert_interrupt_report(child.stdout, lang, data, context)
    assert m > 0, f"{context}: the interrupt came after everything was done"
    assert_consistent(
        data, catalog, server, finished=False, store=store_name, export=True
    )

    server.delay = 0.0
    again = run_imgfetch(dl(source, data), cwd=tmp_path, lang=LANGS[lang])
    lines = again.stdout.splitlines()
    assert again.returncode == 0, f"{context}: {again.stdout}\n{again.stderr}"
    assert_in_order(
        lines,
        [
            text["found_pending"].format(m=m),
            text["pending_first"],
            text["starting"],
            all_done(lang, store_name),
        ],
        f"{context} resume",
    )
    mapping = assert_consistent(data, catalog, server, finished=True, store=store_name)
    assert len(mapping) == n + m


def test_images_saved_before_interrupt_are_not_downloaded_again(
    server: ImageServer, tmp_path: Path, children: list[Child], store_name: str
) -> None:
    seed = 2201
    rng = random.Random(seed)
    # Two quick main images and one slow qc image per product: at the interrupt
    # several products are pending with their main images already on disk.
    catalog = slow_catalog(server, 16, main=2, slow={"delay": 1.5})
    by_id = {p["id"]: p for p in catalog}
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"

    args = dl(source, data, "--workers", "4", "--grace-period", "0.2")
    child = spawn(children, args, tmp_path)
    wait_for_progress(data, rng.randint(4, 12))
    child.send(signal.SIGINT)
    assert child.wait() == 130, f"seed={seed}: {child.out}\n{child.err}"
    assert_consistent(data, catalog, server, finished=False, store=store_name)

    files = saved_images(data)
    _mapping, pending = state(data)
    pending_ids = {p["id"] for p in pending}
    partial = {f.parent.name for f in files} & pending_ids
    assert partial, f"seed={seed}: no pending product had an image saved"
    saved_urls = {url_of_file(f, by_id) for f in files}
    before = {u: server.requests_for(u) for p in catalog for u in all_urls(p)}

    again = run_imgfetch(
        dl(source, data, "--workers", "16"), cwd=tmp_path, lang=EN, timeout=60
    )
    assert again.returncode == 0, f"seed={seed}: {again.stdout}\n{again.stderr}"
    assert_consistent(data, catalog, server, finished=True, store=store_name)
    fetched_again = sorted(u for u in saved_urls if server.requests_for(u) != before[u])
    assert not fetched_again, (
        f"seed={seed}: images saved before the interrupt were downloaded again: "
        f"{fetched_again}"
    )
    new_requests = sum(server.requests_for(u) - before[u] for u in before)
    assert new_requests >= len(pending_ids), f"seed={seed}: the resume fetched nothing"


def test_stalled_server_exits_within_grace_period_plus_one_second(
    server: ImageServer, tmp_path: Path, children: list[Child], store_name: str
) -> None:
    grace = 1.0
    # Every other product has a qc image on a server that never answers; with 8
    # workers, each allowed a connection to the host, all of them end up blocked
    # in a socket read.
    catalog = slow_catalog(server, 24, slow={"stall": 1}, slow_every=2)
    stalled = [u for p in catalog for u in p["qc_images"]]
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"

    args = dl(source, data, "--workers", "8", "--per-host", "8")
    args += ["--grace-period", str(grace)]
    child = spawn(children, args, tmp_path)
    wait_for_requests(server, stalled, 8)
    sent = child.send(signal.SIGINT)
    exit_code = child.wait()
    elapsed = time.monotonic() - sent

    assert exit_code == 130, f"{child.out}\n{child.err}"
    # The stalled reads never end: exiting at all proves they were not waited
    # for. The margin is wide so a loaded machine cannot fail the test; how close
    # the exit comes to the grace period is measured by benchmarks/speed.py.
    assert elapsed <= grace + SLACK, (
        f"the process took {elapsed:.2f}s to exit after SIGINT with "
        f"--grace-period {grace} (allowed: grace + {SLACK}s)"
    )
    assert_no_traceback(child.err, "stall")
    assert_interrupt_report(child.stdout, "en", data, "stall")
    assert_consistent(data, catalog, server, finished=False, store=store_name)
    assert not temp_files(data)
    _mapping, pending = state(data)
    blocked = {
        p["id"] for p in catalog if any(map(server.requests_for, p["qc_images"]))
    }
    assert blocked <= {p["id"] for p in pending}, "a product without its image is done"


def test_interrupt_while_images_are_half_written_leaves_no_temp_files(
    server: ImageServer, tmp_path: Path, children: list[Child], store_name: str
) -> None:
    # The qc image of every product arrives fast up to past SPILL_BYTES (so it
    # streams into its temporary file), then drips a byte every 10 ms (18 s in
    # all): the temporary file sits half written when the signal comes.
    slow = {"size": SPILL_BYTES + 1800, "fast": SPILL_BYTES + 1, "drip": 0.01}
    catalog = slow_catalog(server, 8, slow=slow)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"

    args = dl(source, data, "--workers", "4", "--grace-period", "0.3")
    child = spawn(children, args, tmp_path)
    deadline = time.monotonic() + 30
    while len(temp_files(data)) < 2:
        assert time.monotonic() < deadline, "no image was being written"
        assert child.proc.poll() is None, f"exited: {child.out}\n{child.err}"
        time.sleep(0.01)
    half_written = {p.parent.name for p in temp_files(data)}
    sent = child.send(signal.SIGINT)
    exit_code = child.wait()
    elapsed = time.monotonic() - sent

    assert exit_code == 130, f"{child.out}\n{child.err}"
    # Each dripping image would take 18 s more.
    assert elapsed <= 0.3 + SLACK, f"{elapsed:.2f}s to exit with --grace-period 0.3"
    assert not temp_files(data), f"temporary files left: {temp_files(data)}"
    assert_no_traceback(child.err, "half written")
    assert_interrupt_report(child.stdout, "en", data, "half written")
    assert_consistent(data, catalog, server, finished=False, store=store_name)
    _mapping, pending = state(data)
    assert half_written <= {p["id"] for p in pending}
    for pid in half_written:
        assert not list((data / "images" / pid).glob("qc_1.*")), pid


def test_second_sigint_skips_the_grace_wait(
    server: ImageServer, tmp_path: Path, children: list[Child], store_name: str
) -> None:
    seed = 3301
    rng = random.Random(seed)
    catalog = slow_catalog(server, 24, slow={"stall": 1}, slow_every=2)
    stalled = [u for p in catalog for u in p["qc_images"]]
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"

    args = dl(source, data, "--workers", "8", "--per-host", "8", "--grace-period", "30")
    child = spawn(children, args, tmp_path)
    wait_for_requests(server, stalled, 8)
    first = child.send(signal.SIGINT)
    child.wait_for_line(TEXT["en"]["waiting"])
    time.sleep(rng.uniform(0, 0.5))
    assert child.proc.poll() is None, "exited before the second SIGINT"
    second = child.send(signal.SIGINT)
    exit_code = child.wait(timeout=30)
    after_second = time.monotonic() - second
    after_first = time.monotonic() - first
    context = f"seed={seed}"

    assert exit_code == 130, f"{context}: {child.out}\n{child.err}"
    # The 30 s wait is skipped: what is left is saving and exiting.
    assert after_second <= SLACK, (
        f"{context}: {after_second:.2f}s from the second SIGINT to the exit"
    )
    assert after_first < 0.5 + SLACK, f"{context}: {after_first:.2f}s after the first"
    assert TEXT["en"]["second_interrupt"] in child.stdout, child.out
    assert_no_traceback(child.err, context)
    assert_interrupt_report(child.stdout, "en", data, context)
    assert_consistent(data, catalog, server, finished=False, store=store_name)


def test_ctrl_c_held_down_still_exits_130_with_consistent_state(
    server: ImageServer, tmp_path: Path, children: list[Child], store_name: str
) -> None:
    """A user who keeps hitting Ctrl+C until the program is gone.

    Signals every 2 ms land everywhere: inside the handler itself, in the grace
    wait, while saving, and on the way out after the handlers are uninstalled.
    Each trial is short, so a few of them make the rare moments likely.
    """
    server.delay = 0.05
    for trial in range(3):
        catalog = slow_catalog(
            server, 24, slow={"stall": 1}, slow_every=2, prefix=f"t{trial}-"
        )
        stalled = [u for p in catalog for u in p["qc_images"]]
        source = write_catalog(tmp_path / f"products{trial}.json", catalog)
        data = tmp_path / f"data{trial}"

        child = spawn(children, dl(source, data, "--grace-period", "30"), tmp_path)
        wait_for_requests(server, stalled, 4)
        first = time.monotonic()
        presses = 0
        while child.proc.poll() is None and time.monotonic() - first < 10:
            child.send(signal.SIGINT)  # a no-op once the child has exited
            presses += 1
            time.sleep(0.002)
        exit_code = child.wait()
        elapsed = time.monotonic() - first
        context = f"trial {trial}, {presses} presses"

        assert exit_code == 130, f"{context}: {child.out}\n{child.err}"
        assert elapsed < SLACK, f"{context}: {elapsed:.2f}s to exit (grace: 30 s)"
        assert_no_traceback(child.err, context)
        assert_interrupt_report(child.stdout, "en", data, context)
        assert_consistent(data, catalog, server, finished=False, store=store_name)


def test_repeated_kill_9_never_corrupts_state_and_a_final_run_finishes(
    server: ImageServer, tmp_path: Path, children: list[Child], store_name: str
) -> None:
    seed = 4401
    rng = random.Random(seed)
    catalog = make_catalog(server, 40)
    total_images = sum(len(all_urls(p)) for p in catalog)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"
    server.delay = 0.05
    args = dl(source, data, "--workers", "4", "--save-every", "1")

    by_id = {p["id"]: p for p in catalog}
    recorded: dict[str, Any] = {}
    frozen: dict[str, int] = {}  # URL of an image on disk -> its requests then
    leftovers: list[Path] = []
    kills = 0
    for round_number in range(5):
        context = f"seed={seed} {store_name} kill {round_number + 1}"
        before = image_count(data) if data.exists() else 0
        child = spawn(children, args, tmp_path)
        if leftovers:
            # Temp files of the killed run are removed at the next start, before
            # any download: once a new image exists, they must be gone.
            wait_for_progress(data, before + 1)
            still = [p for p in leftovers if p.exists()]
            assert not still, f"{context}: temp files survived a start: {still}"
        if round_number == 0:
            # Any moment means any: this one may land during startup or planning.
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            target = min(before + rng.randint(1, 15), total_images - 1)
            wait_for_progress(data, target)
            time.sleep(rng.uniform(0.0, 0.1))
        if child.proc.poll() is not None:
            break  # finished before the kill; the final run below checks the end
        child.proc.kill()
        assert child.wait() == -signal.SIGKILL, context
        kills += 1

        mapping = check_mapped_files(data, catalog, server, context)
        lost = {pid for pid in recorded if mapping.get(pid) != recorded[pid]}
        assert not lost, f"{context}: recorded products lost or changed: {lost}"
        recorded = mapping

        # Whole images on disk are reused by every later run, never fetched again.
        refetched = [u for u, n in frozen.items() if server.requests_for(u) != n]
        assert not refetched, f"{context}: saved images fetched again: {refetched}"
        for path in saved_images(data):
            url = url_of_file(path, by_id)
            frozen.setdefault(url, server.requests_for(url))

        # A kill -9 in the middle of an atomic write leaves a temp file; make sure
        # there are some either way: beside the store's files, in each folder the
        # store owns and one folder inside it, and in a product folder. The next
        # start must remove them all.
        owned = store_class(store_name).owned_paths(data)
        planted = [data / f".imgfetch-{owned[0].name}.k9x.tmp"]
        for folder in (path for path in owned if path.is_dir()):
            nested = sorted(p for p in folder.rglob("*") if p.is_dir())
            for where in [folder, *nested[-1:]]:
                planted.append(where / ".imgfetch-state.k9x.tmp")
        folders = sorted(p for p in (data / "images").glob("*") if p.is_dir())
        if folders:
            planted.append(rng.choice(folders) / ".imgfetch-main_1.jpg.k9x.tmp")
        for path in planted:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8half an image")
        leftovers = temp_files(data)

    assert kills >= 3, f"seed={seed}: only {kills} kills landed before the end"
    server.delay = 0.0
    final = run_imgfetch(args, cwd=tmp_path, lang=EN, timeout=60)
    assert final.returncode == 0, f"seed={seed}: {final.stdout}\n{final.stderr}"
    assert all_done("en", store_name) in final.stdout.splitlines()
    assert not [p for p in leftovers if p.exists()], f"seed={seed}: temp files left"
    mapping = assert_consistent(
        data, catalog, server, finished=True, store=store_name, export=True
    )
    lost = {pid for pid in recorded if mapping.get(pid) != recorded[pid]}
    assert not lost, f"seed={seed}: recorded products changed at the end: {lost}"
    refetched = [u for u, n in frozen.items() if server.requests_for(u) != n]
    assert not refetched, f"seed={seed}: saved images fetched again: {refetched}"
    assert frozen, f"seed={seed}: no kill found an image on disk"


def test_resume_does_only_the_pending_tasks(
    server: ImageServer, tmp_path: Path, children: list[Child], store_name: str
) -> None:
    seed = 5501
    rng = random.Random(seed)
    catalog = make_catalog(server, 24)
    by_id = {p["id"]: p for p in catalog}
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"  # no products.json here: resume needs none
    elsewhere.mkdir()
    server.delay = 0.15

    child = spawn(children, dl(source, data, "--workers", "4"), tmp_path)
    wait_for_progress(data, rng.randint(2, 20))
    child.send(signal.SIGINT)
    assert child.wait() == 130, f"seed={seed}: {child.out}\n{child.err}"
    assert_consistent(
        data, catalog, server, finished=False, store=store_name, export=True
    )
    mapping, pending = state(data)
    assert pending, f"seed={seed}: nothing was pending"
    before = {u: server.requests_for(u) for p in catalog for u in all_urls(p)}

    server.delay = 0.0
    resumed = run_imgfetch(resume_args(data), cwd=elsewhere, lang=EN)
    assert resumed.returncode == 0, f"seed={seed}: {resumed.stdout}\n{resumed.stderr}"
    assert_in_order(
        resumed.stdout.splitlines(),
        [
            TEXT["en"]["found_pending"].format(m=len(pending)),
            all_done("en", store_name),
        ],
        f"seed={seed} resume",
    )
    assert_consistent(data, catalog, server, finished=True, store=store_name)
    touched = {
        pid
        for pid, product in by_id.items()
        if any(server.requests_for(u) != before[u] for u in all_urls(product))
    }
    assert touched <= {p["id"] for p in pending}, (
        f"seed={seed}: resume downloaded completed products: "
        f"{sorted(touched - {p['id'] for p in pending})}"
    )
    assert touched, f"seed={seed}: resume downloaded nothing"
    final_mapping, _ = state(data)
    for pid, entry in mapping.items():
        assert final_mapping[pid] == entry, f"seed={seed}: {pid} changed on resume"

    # Nothing left: resume says so, succeeds and changes nothing (not a byte of
    # what the store keeps).
    files = store_files(data, store_name)
    assert files, f"{store_name} owns no file in {data}"
    requests = server.total_requests
    idle = run_imgfetch(resume_args(data), cwd=elsewhere, lang=EN)
    assert idle.returncode == 0, f"{idle.stdout}\n{idle.stderr}"
    # The English line is the same whether or not the store keeps a pending file.
    label = open_store(store_name, data).pending_label
    expected = TEXT["en"]["nothing_to_resume"].format(path=label)
    assert expected in idle.stdout.splitlines(), idle.stdout
    assert server.total_requests == requests
    assert store_files(data, store_name) == files, f"{store_name}: idle resume wrote"
    assert not read_state(data).has_pending


def test_resume_on_a_fresh_data_dir_has_nothing_to_do(
    tmp_path: Path, store_name: str
) -> None:
    data = tmp_path / "data"
    result = run_imgfetch(resume_args(data), cwd=tmp_path, lang=ZH)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    label = open_store(store_name, data).pending_label
    said = [line for line in result.stdout.splitlines() if "没有未完成任务" in line]
    assert said and label in said[0], result.stdout
    # A first run may write an empty state, but only in the store it was asked for.
    stored = read_state(data)
    assert stored.store in (store_name, None), stored.store
    assert stored.mapping == {} and stored.pending == [] and not stored.has_pending


def test_several_interrupts_in_a_row_keep_the_invariants(
    server: ImageServer, tmp_path: Path, children: list[Child], store_name: str
) -> None:
    seed = 6601
    rng = random.Random(seed)
    catalog = make_catalog(server, 30)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"
    server.delay = 0.1

    previous: dict[str, Any] = {}
    last_pending = 0
    for round_number in range(4):
        context = f"seed={seed} {store_name} interrupt {round_number + 1}"
        if round_number == 0:
            args = dl(source, data, "--workers", "4")
        elif round_number % 2:
            args = resume_args(data, "--workers", "4")
        else:
            args = dl(source, data, "--workers", "4")
        lang = rng.choice(["en", "zh"])
        before = image_count(data) if data.exists() else 0
        child = spawn(children, args, tmp_path, LANGS[lang])
        wait_for_progress(data, before + rng.randint(1, 8))
        time.sleep(rng.uniform(0, 0.2))
        child.send(signal.SIGINT)
        exit_code = child.wait()
        assert exit_code == 130, f"{context}: {child.out}\n{child.err}"
        assert_no_traceback(child.err, context)
        if round_number:
            assert_in_order(
                child.stdout,
                [TEXT[lang]["found_pending"].format(m=last_pending)],
                context,
            )
        _n, last_pending = assert_interrupt_report(child.stdout, lang, data, context)
        mapping = assert_consistent(
            data, catalog, server, finished=False, store=store_name
        )
        changed = {pid for pid in previous if mapping.get(pid) != previous[pid]}
        assert not changed, f"{context}: completed products changed: {changed}"
        previous = mapping

    server.delay = 0.0
    final = run_imgfetch(resume_args(data), cwd=tmp_path, lang=EN)
    assert final.returncode == 0, f"seed={seed}: {final.stdout}\n{final.stderr}"
    assert TEXT["en"]["found_pending"].format(m=last_pending) in final.stdout
    assert all_done("en", store_name) in final.stdout.splitlines()
    assert_consistent(
        data, catalog, server, finished=True, store=store_name, export=True
    )


def test_products_finishing_during_the_grace_period_are_recorded(
    server: ImageServer, tmp_path: Path, children: list[Child], store_name: str
) -> None:
    grace = 15.0  # long, so that "ended early" holds on a loaded machine too
    catalog = make_catalog(server, 12, main=2, sku=0, qc=0)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"
    server.delay = 1.0

    args = dl(source, data, "--workers", "4", "--grace-period", str(grace))
    child = spawn(children, args, tmp_path)
    urls = [u for p in catalog for u in all_urls(p)]
    wait_for_requests(server, urls, 4)  # every worker is inside a download
    in_flight = {
        p["id"] for p in catalog if all(server.requests_for(u) for u in all_urls(p))
    }
    sent = child.send(signal.SIGINT)
    exit_code = child.wait()
    elapsed = time.monotonic() - sent

    assert in_flight, "no product had all its images in flight at the signal"
    assert exit_code == 130, f"{child.out}\n{child.err}"
    assert_interrupt_report(child.stdout, "en", data, "grace")
    mapping = assert_consistent(data, catalog, server, finished=False, store=store_name)
    _mapping, pending = state(data)
    assert in_flight <= set(mapping), (
        f"products in flight at the signal were not recorded: "
        f"{sorted(in_flight - set(mapping))}; pending: {[p['id'] for p in pending]}"
    )
    for pid in in_flight:
        assert any(f"product {pid}:" in line for line in child.stdout), (
            f"no progress line for {pid}"
        )
    # Nothing is left in flight once they are in: the wait ends early.
    assert elapsed < grace, f"{elapsed:.2f}s: the whole grace period was waited"


def open_fifo_writer(fifo: Path, child: Child, timeout: float = 30) -> int:
    """Open the writing end of `fifo` once `child` has opened it for reading."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        if child.proc.poll() is not None:
            raise AssertionError(f"exited early: {child.out}\n{child.err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the catalog was not opened within {timeout}s")
        time.sleep(0.01)


# The store is opened only after the catalog is read: these tests of signal
# handling during start-up touch no store, so one store is enough.
@pytest.mark.parametrize("store_name", ["json"], indirect=True)
@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
    ids=["sigint", "sigterm"],
)
def test_signal_while_the_catalog_is_read_exits_with_its_code(
    server: ImageServer,
    tmp_path: Path,
    children: list[Child],
    sig: int,
    code: int,
    store_name: str,
) -> None:
    """A big catalog takes a while to read; an interrupt then still gives the
    signal's exit code, and nothing is written or downloaded.

    The catalog is a FIFO, so the moment is exact: imgfetch has opened it and is
    waiting for the rest of the file when the signal arrives.
    """
    fifo = tmp_path / "products.json"
    os.mkfifo(fifo)
    data = tmp_path / "data"
    payload = json.dumps(make_catalog(server, 3)).encode()
    child = spawn(children, dl(fifo, data), tmp_path)
    fd = open_fifo_writer(fifo, child)
    try:
        os.write(fd, payload[:10])
        # imgfetch is blocked reading: the signal wakes it at once (EINTR), so
        # the handler has run before the rest of the file can be read.
        child.send(sig)
        os.set_blocking(fd, True)
        os.write(fd, payload[10:])
    finally:
        os.close(fd)
    exit_code = child.wait()
    name = signal.Signals(sig).name
    assert exit_code == code, (
        f"{name} while reading the catalog: exit {exit_code}, expected {code}; "
        f"stdout:\n{child.out}\nstderr:\n{child.err}"
    )
    assert_no_traceback(child.err, name)
    assert not data.exists(), "the data directory was created"
    assert server.total_requests == 0


def test_a_signal_after_the_last_product_does_not_make_the_run_interrupted(
    tmp_path: Path, store_name: str
) -> None:
    """In process, to choose the moment exactly: the signal is already recorded
    when the engine finds nothing left to do. The run is complete (nothing is
    pending, no pending work is stored), so it must end as complete, not report
    an interruption and exit 130 with half of the shutdown lines."""
    data = tmp_path / "data"
    data.mkdir()
    store = open_store(store_name, data)
    store.open(lambda record: product_id(record, None))
    signals = SignalWatcher()  # not installed: the test plays the handler
    signals._handle(signal.SIGINT, None)
    tally = Tally()
    said: list[str] = []
    engine = Engine(
        data_dir=data,
        store=store,
        fetcher=Fetcher(FetchConfig(), threading.Event()),
        config=EngineConfig(workers=1),
        view=ProgressView(Messages("en"), tally),
        tally=tally,
        signals=signals,
        say=lambda key, **values: said.append(key),
    )
    try:
        result = engine.run([], 0, 0, merge=False)
        assert not store.has_pending(), f"{store_name}: pending work is stored"
    finally:
        store.close()
    assert result.pending == 0
    assert result.signal is None, "a complete run was reported as interrupted"
    assert "interrupted" not in said


# The store is opened only after the catalog is read: these tests of signal
# handling during start-up touch no store, so one store is enough.
@pytest.mark.parametrize("store_name", ["json"], indirect=True)
def test_signal_while_the_catalog_read_is_blocked_exits_promptly(
    tmp_path: Path, children: list[Child], store_name: str
) -> None:
    """A catalog read that does not end (a FIFO or a pipe whose writer pauses, a
    hung network mount) must not make imgfetch deaf to Ctrl+C: nothing has been
    written yet, so it can exit at once, with 130."""
    fifo = tmp_path / "products.json"
    os.mkfifo(fifo)
    data = tmp_path / "data"
    child = spawn(children, dl(fifo, data), tmp_path)
    fd = open_fifo_writer(fifo, child)
    try:
        os.write(fd, b'[{"id": "a", "main_images": []},\n')
        sent = child.send(signal.SIGINT)
        try:
            child.proc.wait(timeout=SLACK)
        except subprocess.TimeoutExpired:
            pass
        elapsed = time.monotonic() - sent
    finally:
        os.close(fd)  # lets a still-blocked read end (with a truncated catalog)
    exit_code = child.wait()
    assert elapsed < SLACK, (
        f"still reading the catalog {elapsed:.1f}s after SIGINT; once the file "
        f"ended it exited {exit_code}: {child.err}"
    )
    assert exit_code == 130, f"exit {exit_code}: {child.err}"
    assert not data.exists(), "the data directory was created"
