"""imgfetch's speed beside wget2, aria2c and img2dataset, on the same work (#6).

    .venv/bin/python benchmarks/speed.py --all          # every scenario (~25 min)
    .venv/bin/python benchmarks/speed.py --loopback --delay --shutdown
    .venv/bin/python benchmarks/speed.py --catalog --catalog-products 100000
    .venv/bin/python benchmarks/speed.py --profile      # py-spy on scenario 1
    .venv/bin/python benchmarks/speed.py --quick --loopback   # a smoke run

Scenarios (see benchmarks/README.md for what each measures and why):

1. --loopback: nginx on 127.0.0.1, no delay, ~20 KB images;
2. --delay: every response delayed (100 ms), 32 and 64 workers: share of the ideal
   rate workers / delay;
3. --catalog: a 1M-product JSON Lines catalog through each store: start-up,
   persistence share of the run, peak memory;
4. --shutdown: seconds from SIGINT to exit with 64 downloads in flight.

Tools run alternately (the order rotates every pair) on the same URLs at the same
concurrency. The results replace their sections of benchmarks/RESULTS.md, with
the machine they ran on. nginx, wget2 and aria2 are installed with apt-get when
missing (as root; --no-install refuses instead); img2dataset goes into its own
venv under ~/.cache when pip installs it within ten minutes, else it is left out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import speed_catalog
import speed_profile
from speed_report import (
    comparison,
    machine_section,
    run_log,
    table,
    update_results,
)
from speed_server import Nginx, client_connections, nginx_version
from speed_tools import (
    APT_PACKAGES,
    IMAGES_PER_PRODUCT,
    TOOLS,
    Run,
    ToolError,
    Workload,
    aria2c_command,
    ensure_apt,
    ensure_img2dataset,
    imgfetch_command,
    make_workload,
    run_tool,
    start,
    versions,
    wait_measured,
    wait_until,
    wget2_command,
)

HERE = Path(__file__).resolve().parent
MEMORY_DIR = Path("/dev/shm")
RESULTS = HERE / "RESULTS.md"
TITLE = (
    "# Speed benchmark results\n\n"
    "Written by `benchmarks/speed.py` (see benchmarks/README.md); each section is\n"
    "replaced when its scenario runs again. Numbers are medians over alternating\n"
    "runs unless a column says otherwise."
)


def load() -> str:
    one, five, _fifteen = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


def alternate(
    tools: list[str], work: Workload, workers: int, pairs: int, root: Path, log: Path
) -> list[Run]:
    """`pairs` rounds of every tool; the order rotates so no tool always goes first."""
    runs = []
    for round_number in range(pairs):
        shift = round_number % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            run = run_tool(tool, work, root / f"out-{tool}", workers, log)
            print(
                f"  {tool:<12} {workers:>3} workers  {run.rate:8,.0f} images/s  "
                f"{run.cpu_per_1000:6.2f} CPU s/1000  {run.peak_mb:5.0f} MB",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run)
        shutil.rmtree(root / "out-imgfetch", ignore_errors=True)
    return runs


def fixed_cost(tools: list[str], server: Nginx, root: Path, log: Path) -> str:
    """Wall time of each tool for one product (6 images): start-up and exit."""
    work = make_workload(root / "one", 1, lambda name: server.url("i", name), "one")
    rows = []
    for tool in tools:
        times = [
            run_tool(tool, work, root / f"one-{tool}", 6, log).wall for _ in range(3)
        ]
        rows.append([tool, f"{statistics.median(times):.2f}"])
    return table(["tool", "wall time for 6 images (s), median of 3"], rows)


def output_places(root: Path) -> list[tuple[str, Path]]:
    """Where scenario 1 saves images: in memory (tmpfs) when there is one, and on
    the disk `root` is on."""
    places = []
    if MEMORY_DIR.is_dir():
        places.append(("in memory (tmpfs)", Path(tempfile.mkdtemp(dir=MEMORY_DIR))))
    places.append(("on the disk", root))
    return places


def scenario_loopback(args: argparse.Namespace, tools: list[str], root: Path) -> str:
    print(f"scenario 1: loopback, {args.images} images", file=sys.stderr)
    before = load()
    log = root / "loopback.log"
    parts = []
    all_runs: list[Run] = []
    with Nginx(image_size=args.image_size, delay=args.delay_ms / 1000) as server:
        products = -(-args.images // IMAGES_PER_PRODUCT)
        work = make_workload(root / "loop", products, lambda n: server.url("i", n))
        for label, place in output_places(root):
            print(f" saving {label}", file=sys.stderr)
            try:
                runs = alternate(tools, work, args.workers, args.pairs, place, log)
            finally:
                if place != root:
                    shutil.rmtree(place, ignore_errors=True)
            all_runs += runs
            parts += [f"### Images saved {label}", "", comparison(runs), ""]
        fixed = fixed_cost(tools, server, root, log)
    return "\n".join(
        [
            "## 1. Loopback, no delay",
            "",
            f"{work.images:,} images of {args.image_size:,} bytes from nginx on "
            f"127.0.0.1, {args.workers} workers (imgfetch: `--workers "
            f"{args.workers} --per-host {args.workers}`, json store), {args.pairs} "
            f"alternating runs per tool, once saving to a file system in memory "
            f"(the tools' own CPU cost per image, which is what this scenario "
            f"measures) and once to the disk. On the disk imgfetch also pays for "
            f"its crash guarantee: it has the kernel write every image out "
            f"(syncfs) before its state names it, where wget2 and aria2c leave "
            f"their files to be written back after they exit. images/s counts the "
            f"whole process, start-up and exit included. Before: {before}; after: "
            f"{load()}.",
            "",
            *parts,
            "Fixed cost per run (start-up, exit), which the rates above include:",
            "",
            fixed,
            "",
            "<details><summary>every run</summary>",
            "",
            run_log(all_runs),
            "",
            "</details>",
        ]
    )


def scenario_delay(args: argparse.Namespace, tools: list[str], root: Path) -> str:
    delay = args.delay_ms / 1000
    parts = [
        f"## 2. Every response delayed {args.delay_ms:g} ms",
        "",
        f"nginx's echo module holds each response {args.delay_ms:g} ms "
        "(`echo_sleep`, then the static file), so a worker can finish at most "
        f"1 / {delay:g} s images a second: the ideal rate is workers / delay. "
        f"Each run does {args.delay_rounds} rounds of that (workers x rounds "
        "images); the rate counts the whole process, start-up included.",
    ]
    for workers in args.delay_workers:
        images = workers * args.delay_rounds
        print(
            f"scenario 2: {delay:g} s delay, {workers} workers, {images} images",
            file=sys.stderr,
        )
        before = load()
        log = root / f"delay-{workers}.log"
        with Nginx(image_size=args.image_size, delay=delay) as server:
            products = -(-images // IMAGES_PER_PRODUCT)
            work = make_workload(
                root / f"delay-{workers}", products, server.url_maker("d")
            )
            runs = alternate(tools, work, workers, args.pairs, root, log)
        ideal = workers / delay
        parts += [
            "",
            f"### {workers} workers: ideal {ideal:,.0f} images/s, {work.images:,} "
            "images",
            "",
            f"Before: {before}; after: {load()}.",
            "",
            comparison(runs, ideal=ideal),
            "",
            "<details><summary>every run</summary>",
            "",
            run_log(runs),
            "",
            "</details>",
        ]
    return "\n".join(parts)


# -- scenario 4: shutdown ------------------------------------------------------


def _interrupt_once(
    command: list[str],
    server: Nginx,
    in_flight: int,
    settle: float,
    log: Path,
    cap: float,
) -> tuple[float, int, int]:
    """Seconds from SIGINT to exit, connections open at SIGINT, exit code."""
    process, began = start(command, log)
    try:
        wait_until(process, lambda: client_connections(server.port) >= in_flight, 60)
        # For a server that answers, let the run reach its steady state first.
        time.sleep(settle)
        open_at_signal = client_connections(server.port)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + cap
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if process.poll() is None:
            process.kill()
            wait_measured(process, began)
            return float("inf"), open_at_signal, -9
        return time.monotonic() - sent, open_at_signal, process.returncode
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def scenario_shutdown(args: argparse.Namespace, tools: list[str], root: Path) -> str:
    workers = args.shutdown_workers
    print(f"scenario 4: shutdown with {workers} downloads in flight", file=sys.stderr)
    before = load()
    log = root / "shutdown.log"
    rows = []
    cap = 30.0
    with Nginx(image_size=args.image_size, delay=args.delay_ms / 1000) as server:
        products = max(workers * 2, 2_000)
        stuck = make_workload(root / "stuck", products, lambda n: server.url("s", n))
        slow = make_workload(root / "slow", products, lambda n: server.url("d", n))
        cases: list[tuple[str, str, Workload, float | None, float]] = [
            ("imgfetch", "never answers", stuck, 0.5, 0.0),
            ("imgfetch", "never answers", stuck, 2.0, 0.0),
            ("imgfetch", "never answers", stuck, 5.0, 0.0),
            ("imgfetch", f"{args.delay_ms:g} ms delay", slow, 2.0, 1.0),
        ]
        cases += [
            (tool, "never answers", stuck, None, 0.0)
            for tool in tools
            if tool in ("wget2", "aria2c")
        ]
        for tool, kind, work, grace, settle in cases:
            times, codes, opened = [], [], []
            for repeat in range(args.shutdown_repeats):
                out = root / f"shutdown-{tool}-{repeat}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                if tool == "imgfetch":
                    command = imgfetch_command(work, out, workers, grace=grace)
                elif tool == "wget2":
                    command = wget2_command(work, out, workers)
                else:
                    command = aria2c_command(work, out, workers)
                took, open_at_signal, code = _interrupt_once(
                    command, server, workers, settle, log, cap
                )
                times.append(took)
                codes.append(code)
                opened.append(open_at_signal)
                shutil.rmtree(out, ignore_errors=True)
                print(
                    f"  {tool} {kind} grace={grace}: {took:.2f} s, exit {code}, "
                    f"{open_at_signal} connections",
                    file=sys.stderr,
                    flush=True,
                )
            limit = f"{grace + 0.5:g}" if grace is not None else "-"
            worst = max(times)
            rows.append(
                [
                    tool,
                    kind,
                    f"{grace:g}" if grace is not None else "-",
                    f"{statistics.median(times):.2f}",
                    "killed after 30 s" if worst == float("inf") else f"{worst:.2f}",
                    limit,
                    f"{min(opened)}..{max(opened)}",
                    ", ".join(sorted({str(c) for c in codes})),
                ]
            )
    return "\n".join(
        [
            "## 4. Shutdown under load",
            "",
            f"{workers} workers; SIGINT is sent once {workers} connections to nginx "
            "are open (for the delayed server, one second later), and the time is "
            f"taken until the process has exited. {args.shutdown_repeats} runs per "
            'row. "never answers" is a server that holds every response for an '
            "hour, so no download in flight can finish; the target is the grace "
            "period plus half a second. wget2 and aria2c (no grace option) are "
            f"there for reference. Before: {before}; after: {load()}.",
            "",
            table(
                [
                    "tool",
                    "server",
                    "--grace-period",
                    "SIGINT to exit, median (s)",
                    "worst (s)",
                    "target (s)",
                    "connections at SIGINT",
                    "exit codes",
                ],
                rows,
            ),
        ]
    )


# -- main ----------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    scenarios = parser.add_argument_group("scenarios (default: --all)")
    scenarios.add_argument("--all", action="store_true")
    scenarios.add_argument("--loopback", action="store_true", help="scenario 1")
    scenarios.add_argument("--delay", action="store_true", help="scenario 2")
    scenarios.add_argument("--catalog", action="store_true", help="scenario 3")
    scenarios.add_argument("--shutdown", action="store_true", help="scenario 4")
    scenarios.add_argument(
        "--profile",
        action="store_true",
        help="py-spy profile of imgfetch in scenario 1 (not part of --all)",
    )
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--images", type=int, default=6_000)
    parser.add_argument("--image-size", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--delay-workers", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--delay-rounds", type=int, default=150)
    parser.add_argument("--shutdown-workers", type=int, default=64)
    parser.add_argument("--shutdown-repeats", type=int, default=3)
    speed_catalog.add_arguments(parser)
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where downloads go (default: the system temp folder, a real disk "
        "here; imgfetch fsyncs every image, so the file system matters)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--profile-keep",
        type=Path,
        default=None,
        help="keep py-spy's raw stacks in this folder (keep them out of git)",
    )
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, one pair: checks that the harness works, measures nothing",
    )
    args = parser.parse_args()
    if not (
        args.loopback or args.delay or args.catalog or args.shutdown or args.profile
    ):
        args.all = True
    if args.all:
        args.loopback = args.delay = args.catalog = args.shutdown = True
    if args.quick:
        args.images, args.pairs, args.delay_rounds = 120, 1, 5
        args.shutdown_repeats, args.catalog_products = 1, [2_000]
        args.catalog_json_products, args.empty_products = 1_000, 1_000
        args.catalog_run_seconds = 2.0
    return args


def prepare_tools(args: argparse.Namespace) -> tuple[list[str], str]:
    """The tools that can run, and a note on any left out."""
    install = not args.no_install
    ensure_apt(["nginx"], ["nginx", "libnginx-mod-http-echo"], install)
    wanted = [t for t in args.tools if t in APT_PACKAGES]
    ensure_apt(wanted, [APT_PACKAGES[t] for t in wanted], install)
    tools = [t for t in args.tools if t != "img2dataset"]
    note = ""
    if "img2dataset" in args.tools and (args.loopback or args.delay):
        why = ensure_img2dataset(install)
        if why is None:
            tools.append("img2dataset")
        else:
            note = f"img2dataset left out: {why}."
    return tools, note


def main() -> int:
    args = parse_args()
    tools, note = prepare_tools(args)
    root = Path(tempfile.mkdtemp(prefix="imgfetch-speed-", dir=args.dir))
    sections: dict[str, str] = {}
    try:
        if args.loopback:
            sections["loopback"] = scenario_loopback(args, tools, root)
        if args.delay:
            sections["delay"] = scenario_delay(args, tools, root)
        if args.catalog:
            sections["catalog"] = speed_catalog.scenario(args, root)
        if args.shutdown:
            sections["shutdown"] = scenario_shutdown(args, tools, root)
        if args.profile:
            sections["profile"] = speed_profile.scenario(args, root)
    except (ToolError, subprocess.CalledProcessError) as exc:
        print(f"speed.py: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine = machine_section(versions(), nginx_version(), root.parent)
    if note:
        machine += f"\n- {note}"
    if args.quick:
        print("\n\n".join(sections.values()))
        return 0
    update_results(args.results, TITLE, {"machine": machine, **sections})
    print(f"results written to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
