"""Chaos: real imgfetch processes interrupted at random moments, many times over.

Each test is one series of rounds on one store, against a server that delays its
answers and fails a fifth of the first and second attempts at each URL. A round
starts `imgfetch download` (sometimes `resume`), waits for a random moment that
can be observed (time since the start, images on disk, requests at the server)
and interrupts the process: SIGKILL, SIGINT or SIGTERM, and also a SIGKILL or a
second Ctrl+C during the shutdown itself, once the "waiting" or the "saving" line
is out. After every round the state must be whole (`check_round`). When a
catalog is done, or the series is over, a last run must finish everything, and
the server must have seen no more requests than the faults and the interrupts
explain (`assert_requests_explained`).

The seed of a series decides its store, its catalogs, every option and every
moment; only the machine's timing varies. Every message names the seed and the
round, and `pytest tests/test_chaos.py --chaos-seed N -s` replays that series
alone, printing each round. `--rounds N` sets how many rounds run in all (series
of ROUNDS_PER_SERIES, spread over the stores); the default keeps CI within a few
minutes, `--rounds 500` is the long soak (see docs/chaos.md).
"""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CATEGORY_FIELDS,
    assert_consistent,
    assert_recoverable,
    imgfetch_env,
    injected_faults,
    read_state,
    start_imgfetch,
    urls_of,
    write_catalog,
)

from imgfetch.backends import backend_names
from imgfetch.messages import RULE, Messages
from imgfetch.testserver import ImageServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

DEFAULT_ROUNDS = 60
ROUNDS_PER_SERIES = 5
FIRST_SEED = 1
# Seconds to wait for something that must happen (a line, an exit, a moment).
# Only a stuck process reaches them; they prove nothing about speed.
PATIENCE = 90.0
FORMATS = ("jpeg", "png", "webp", "gif")
EN = Messages("en")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" not in metafunc.fixturenames:
        return
    config = metafunc.config
    chosen = config.getoption("chaos_seed")
    if chosen is not None:
        seeds = [chosen]
    else:
        rounds = config.getoption("rounds") or DEFAULT_ROUNDS
        count = math.ceil(rounds / ROUNDS_PER_SERIES)
        seeds = list(range(FIRST_SEED, FIRST_SEED + count))
    ids = [f"seed{seed}-{store_for(seed)}" for seed in seeds]
    metafunc.parametrize("seed", seeds, ids=ids)


def store_for(seed: int) -> str:
    names = backend_names()
    return names[seed % len(names)]


# ------------------------------------------------------------- interrupts


@dataclass(frozen=True)
class Plan:
    """A signal, and optionally a second one once a shutdown line is printed."""

    name: str
    first: signal.Signals
    then: signal.Signals | None = None
    when: str | None = None  # message key: "waiting" or "saving"


KILL, INT, TERM = signal.SIGKILL, signal.SIGINT, signal.SIGTERM
PLANS = [
    (Plan("SIGKILL", KILL), 4),
    (Plan("SIGINT", INT), 2),
    (Plan("SIGTERM", TERM), 2),
    (Plan("SIGINT, SIGKILL while waiting", INT, KILL, "waiting"), 2),
    (Plan("SIGINT, SIGKILL while saving", INT, KILL, "saving"), 2),
    (Plan("SIGTERM, SIGKILL while saving", TERM, KILL, "saving"), 1),
    (Plan("SIGINT, SIGINT while waiting", INT, INT, "waiting"), 2),
    (Plan("SIGINT, SIGINT while saving", INT, INT, "saving"), 1),
]


def allowed_codes(plan: Plan, sent: list[signal.Signals]) -> set[int]:
    """Exit codes that may follow these signals (0: the run finished first)."""
    codes = {0}
    for sig in sent:
        codes.add(-KILL if sig == KILL else 128 + plan.first)
    return codes


def stopped_before_imgfetch(child: Child, sent: list[signal.Signals]) -> bool:
    """True when the first signal came before launch.py could catch it.

    In the first few tens of milliseconds the interpreter is still starting:
    SIGTERM kills it the default way, and SIGINT raises KeyboardInterrupt in
    whatever is being imported (Python reports it, exit 1 or -2). Nothing of
    imgfetch has run then, so nothing is printed; the state checks still apply.
    """
    if child.stdout or not sent:
        return False
    code, err = child.proc.returncode, "\n".join(child.stderr)
    if code == -sent[0]:
        return not err or err.rstrip().endswith("KeyboardInterrupt")
    return sent[0] == INT and code == 1 and "KeyboardInterrupt" in err


class Child:
    """A running imgfetch whose output is read line by line as it comes."""

    def __init__(self, args: list[str], store: str) -> None:
        self.proc = start_imgfetch(args, env=imgfetch_env(IMGFETCH_BACKEND=store))
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._pumps = [
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            for stream, sink in (
                (self.proc.stdout, self.stdout),
                (self.proc.stderr, self.stderr),
            )
        ]
        for pump in self._pumps:
            pump.start()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        with stream:
            for line in stream:
                sink.append(line.rstrip("\n"))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_line(self, line: str) -> bool:
        """True once stdout holds `line`; False if the process ended without it."""
        deadline = time.monotonic() + PATIENCE
        while line not in self.stdout:
            if not self.alive:
                self._drain()
                return line in self.stdout
            assert time.monotonic() < deadline, f"{line!r} not printed"
            time.sleep(0.005)
        return True

    def send(self, sig: signal.Signals) -> bool:
        """Send `sig` if the process still runs; True if it was sent."""
        if not self.alive:
            return False
        self.proc.send_signal(sig)
        return True

    def wait(self) -> int:
        try:
            code = self.proc.wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running {PATIENCE}s later (a hang)") from None
        self._drain()
        return code

    def _drain(self) -> None:
        for pump in self._pumps:
            pump.join(timeout=10)

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------ a lap


def build_catalog(
    server: ImageServer, rng: random.Random, prefix: str
) -> list[dict[str, Any]]:
    """10 to 20 products of 2 to 4 images; some images are slow to start (in
    flight at a signal), some drip their bytes (half written at a signal)."""
    products = []
    for number in range(rng.randint(10, 20)):
        pid = f"{prefix}{number:03d}"
        product: dict[str, Any] = {"id": pid, "title": f"chaos product {number}"}
        counts = {"main": rng.randint(1, 2), "sku": rng.randint(0, 1), "qc": 1}
        for category, count in counts.items():
            product[CATEGORY_FIELDS[category]] = [
                image_url(server, rng, f"{pid}-{category}-{k}")
                for k in range(1, count + 1)
            ]
        products.append(product)
    return products


def image_url(server: ImageServer, rng: random.Random, name: str) -> str:
    fmt = rng.choice(FORMATS)
    kind = rng.random()
    if kind < 0.15:
        return server.url(name, fmt, rng.randint(1200, 4000), delay=0.3)
    if kind < 0.22:
        return server.url(name, fmt, rng.randint(600, 900), drip=0.0005)
    return server.url(name, fmt, rng.randint(1200, 4000))


@dataclass
class Lap:
    """One catalog in one data directory, from the first round to its last run."""

    number: int
    catalog: list[dict[str, Any]]
    source: Path
    data: Path
    # Requests lost to interrupts can be at most one per worker of each process
    # that received a signal: a worker has one request open at a time.
    lost_at_most: int = 0
    interrupts: int = 0
    recorded: dict[str, Any] = field(default_factory=dict)
    leftovers: list[Path] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [u for p in self.catalog for c in CATEGORY_FIELDS for u in urls_of(p, c)]

    @property
    def ids(self) -> set[str]:
        return {p["id"] for p in self.catalog}


def images_on_disk(data: Path) -> int:
    root = data / "images"
    if not root.is_dir():
        return 0
    return sum(1 for p in root.glob("*/*_*.*") if not p.name.startswith("."))


# --------------------------------------------------------------- a series


class Series:
    """The rounds of one seed; see the module docstring."""

    def __init__(self, seed: int, server: ImageServer, tmp_path: Path) -> None:
        self.seed = seed
        self.store = store_for(seed)
        self.server = server
        self.tmp_path = tmp_path
        self.rounds = 0
        self.interrupts = 0  # rounds in which a signal reached a running process
        self.laps = 0
        self.lap = self._new_lap()

    def context(self, what: str = "") -> str:
        where = f"round {self.rounds}" if self.rounds else "start"
        return (
            f"chaos seed={self.seed} store={self.store} lap {self.lap.number} "
            f"{where}{': ' + what if what else ''} (replay: pytest "
            f"tests/test_chaos.py --chaos-seed {self.seed} -s)"
        )

    def say(self, text: str) -> None:
        print(f"[chaos seed={self.seed} {self.store}] {text}", flush=True)

    def _new_lap(self) -> Lap:
        self.laps += 1
        rng = random.Random(f"{self.seed}:lap:{self.laps}")
        prefix = f"s{self.seed}l{self.laps}-"
        catalog = build_catalog(self.server, rng, prefix)
        folder = self.tmp_path / f"lap{self.laps}"
        source = write_catalog(folder / "products.json", catalog)
        return Lap(self.laps, catalog, source, folder / "data")

    # -- one round

    def play_round(self) -> None:
        self.rounds += 1
        rng = random.Random(f"{self.seed}:round:{self.rounds}")
        lap = self.lap
        # Every choice is drawn, used or not, so that later draws do not depend
        # on what earlier rounds happened to leave.
        resume = rng.random() < 0.3 and read_state(lap.data).has_pending
        workers = rng.randint(2, 4)
        args = ["resume"] if resume else ["download", str(lap.source)]
        args += ["--data-dir", str(lap.data), "--workers", str(workers)]
        args += ["--grace-period", str(rng.choice([0.2, 0.5, 1.0]))]
        args += ["--save-every", str(rng.choice([1, 5, 100]))]
        args += ["--progress", rng.choice(["plain", "none"])]
        plans, weights = zip(*PLANS, strict=True)
        plan = rng.choices(plans, weights)[0]
        moment_kind, fraction, jitter = rng.random(), rng.random(), rng.random()
        second_jitter = rng.random()

        child = Child(args, self.store)
        try:
            moment = self._wait_for_moment(child, lap, moment_kind, fraction)
            time.sleep(0.05 * jitter)
            sent = self._interrupt(child, plan, second_jitter)
            code = child.wait()
        finally:
            child.kill()
        if sent:
            self.interrupts += 1
            lap.interrupts += 1
            lap.lost_at_most += workers
        what = f"{args[0]} -w{workers}, {plan.name} {moment} -> exit {code}"
        self.say(f"lap {lap.number} round {self.rounds}: {what}")
        self.check_round(child, plan, sent, code, what)

    def _wait_for_moment(
        self, child: Child, lap: Lap, kind: float, fraction: float
    ) -> str:
        """Block until the moment this round chose; describe it."""
        total = len(lap.urls)
        on_disk = images_on_disk(lap.data)
        remaining = total - on_disk
        if kind < 0.2 or remaining < 2:
            # Any moment means any: start-up, reading the catalog, planning.
            delay = 1.5 * fraction
            deadline = time.monotonic() + delay
            while child.alive and time.monotonic() < deadline:
                time.sleep(0.005)
            return f"{delay:.2f}s after the start"
        if kind < 0.6:
            target = on_disk + 1 + int(fraction * (remaining // 2))

            def reached() -> bool:
                return images_on_disk(lap.data) >= target

            described = f"at {target}/{total} images on disk"
        else:
            before = sum(map(self.server.requests_for, lap.urls))
            target = before + 1 + int(fraction * remaining)

            def reached() -> bool:
                return sum(map(self.server.requests_for, lap.urls)) >= target

            described = f"at request {target - before} of the run"
        deadline = time.monotonic() + PATIENCE
        while child.alive and not reached():
            assert time.monotonic() < deadline, self.context(f"{described}: never")
            time.sleep(0.005)
        return described

    def _interrupt(
        self, child: Child, plan: Plan, jitter: float
    ) -> list[signal.Signals]:
        sent = [plan.first] if child.send(plan.first) else []
        if not sent or plan.then is None or plan.when is None:
            return sent
        if child.wait_for_line(EN(plan.when)):
            # Saving takes milliseconds: land inside it, or just after it.
            time.sleep((0.02 if plan.when == "saving" else 0.3) * jitter)
            if child.send(plan.then):
                sent.append(plan.then)
        return sent

    # -- the invariants after a round

    def check_round(
        self,
        child: Child,
        plan: Plan,
        sent: list[signal.Signals],
        code: int,
        what: str,
    ) -> None:
        lap = self.lap
        context = self.context(what)
        err = "\n".join(child.stderr)
        out = "\n".join(child.stdout)
        if not stopped_before_imgfetch(child, sent):
            assert code in allowed_codes(plan, sent), (
                f"{context}\nstdout:\n{out}\nstderr:\n{err}"
            )
            assert "Traceback" not in err, f"{context}\nstderr:\n{err}"
        try:
            mapping, temps = assert_recoverable(
                lap.data, lap.catalog, self.server, store=self.store, export=True
            )
        except AssertionError as exc:
            raise AssertionError(f"{context}: {exc}") from exc
        state = read_state(lap.data)

        # The start removes the temporary files of earlier kills before the
        # banner; a run that exits by itself leaves none of its own either.
        if RULE in child.stdout:
            survived = [p for p in lap.leftovers if p.exists()]
            assert not survived, f"{context}: temporary files survived: {survived}"
            lap.leftovers = []
        if code in (0, 130, 143):
            left = sorted(set(temps) - set(lap.leftovers))
            assert not left, f"{context}: an orderly exit left {left}"
        if code == 0:
            assert set(mapping) == lap.ids and not state.has_pending, context
        if EN("waiting") in child.stdout and code in (130, 143):
            self._check_report(child, mapping, len(state.pending), context)
        assert not state.failures, f"{context}: failures {state.failures}"
        for pid, entry in mapping.items():
            product = next(p for p in lap.catalog if p["id"] == pid)
            for category in CATEGORY_FIELDS:
                assert len(entry[category]) == len(urls_of(product, category)), (
                    f"{context}: {pid} is recorded without all its images: {entry}"
                )
        changed = [p for p in lap.recorded if mapping.get(p) != lap.recorded[p]]
        assert not changed, f"{context}: recorded products lost or changed: {changed}"
        lap.recorded = mapping
        lap.leftovers = sorted(set(lap.leftovers) | set(temps))

    @staticmethod
    def _check_report(
        child: Child, mapping: dict[str, Any], pending: int, context: str
    ) -> None:
        """The closing lines of an interrupted run count what the store holds."""
        lines = child.stdout
        shown = "\n".join(lines)
        assert lines[-2:] == [EN("saved_exit"), RULE], f"{context}:\n{shown}"
        saved = EN("mapping_saved_count", count=len(mapping))
        assert saved in lines, f"{context}: expected {saved!r} in:\n{shown}"
        if pending:
            line = EN("pending_saved", count=pending)
            assert line in lines, f"{context}: expected {line!r} in:\n{shown}"

    # -- the end of a lap

    def finish_lap(self) -> None:
        """A last, uninterrupted run finishes everything; every request the
        server saw is explained."""
        lap = self.lap
        args = ["download", str(lap.source), "--data-dir", str(lap.data)]
        child = Child([*args, "--workers", "4", "--progress", "none"], self.store)
        try:
            code = child.wait()
        finally:
            child.kill()
        context = self.context(f"last run of lap {lap.number}")
        out, err = "\n".join(child.stdout), "\n".join(child.stderr)
        assert code == 0, f"{context}: exit {code}\nstdout:\n{out}\nstderr:\n{err}"
        try:
            mapping = assert_consistent(
                lap.data,
                lap.catalog,
                self.server,
                finished=True,
                store=self.store,
                export=True,
            )
        except AssertionError as exc:
            raise AssertionError(f"{context}: {exc}") from exc
        survived = [p for p in lap.leftovers if p.exists()]
        assert not survived, f"{context}: temporary files survived: {survived}"
        changed = [p for p in lap.recorded if mapping.get(p) != lap.recorded[p]]
        assert not changed, f"{context}: recorded products changed: {changed}"
        self.assert_requests_explained(lap, context)

    def assert_requests_explained(self, lap: Lap, context: str) -> None:
        """Each image is fetched once; beyond that, every request is a fault the
        server injected, or one that was open when a process was interrupted."""
        urls = lap.urls
        seen = sum(map(self.server.requests_for, urls))
        faults = sum(injected_faults(self.server, url) for url in urls)
        bound = len(urls) + faults + lap.lost_at_most
        self.say(
            f"lap {lap.number} done: {len(urls)} images, {lap.interrupts} "
            f"interrupts, {faults} faults, {seen} requests (at most {bound})"
        )
        assert len(urls) <= seen <= bound, (
            f"{context}: {seen} requests for {len(urls)} images; at most "
            f"{bound} are explained ({faults} injected faults, up to "
            f"{lap.lost_at_most} open at {lap.interrupts} interrupts)"
        )

    def next_lap_if_done(self) -> None:
        """Start a new catalog once this one is complete."""
        if self.lap.recorded.keys() == self.lap.ids:
            self.finish_lap()
            self.lap = self._new_lap()


# ------------------------------------------------------------------ the test


def test_random_interrupts_keep_every_invariant(seed: int, tmp_path: Path) -> None:
    rng = random.Random(f"{seed}:server")
    server = ImageServer(delay=rng.uniform(0.01, 0.05), fault_rate=0.2, seed=seed)
    with server:
        series = Series(seed, server, tmp_path)
        series.say(
            f"{ROUNDS_PER_SERIES} rounds, server delay {server.delay:.3f}s, "
            f"fault rate {server.fault_rate}"
        )
        # A round whose process finished before its moment interrupts nothing:
        # rounds go on until ROUNDS_PER_SERIES interrupts have landed.
        while series.interrupts < ROUNDS_PER_SERIES:
            assert series.rounds < 4 * ROUNDS_PER_SERIES, series.context(
                f"only {series.interrupts} of {series.rounds} rounds interrupted"
            )
            series.play_round()
            if series.interrupts < ROUNDS_PER_SERIES:
                series.next_lap_if_done()
        series.finish_lap()


def test_a_finished_command_ignores_further_signals() -> None:
    """What the rounds above caught at random, made certain: once the command is
    over, its exit code is decided. The interpreter's exit puts the default
    action back for signals with a Python handler, so a Ctrl+C landing then
    killed a finished process by SIGINT; ignored signals are left ignored."""
    script = (
        "import signal, sys\n"
        "from imgfetch.launch import entry\n"
        "from imgfetch.signals import WATCHED\n"
        "sys.argv = ['imgfetch', 'version']\n"
        "try:\n"
        "    entry()\n"
        "finally:\n"
        "    ignored = [signal.getsignal(s) == signal.SIG_IGN for s in WATCHED]\n"
        "    print('ignored' if all(ignored) else f'handled: {ignored}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=imgfetch_env(),
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "ignored", result.stdout
