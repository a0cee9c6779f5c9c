"""Where imgfetch spends its time in scenario 1, sampled with py-spy.

Two recordings of the same loopback run: every thread that is not idle (what the
threads are doing), and only the thread holding the GIL (`--gil`: what the one
interpreter lock is busy with, which caps a single process). Each is summarised
as the functions with the most samples, self (the frame at the top of the stack)
and inclusive (anywhere on the stack), as shares of all samples. GIL samples over
(sampling rate x run time) estimate how busy the GIL was.

py-spy is installed into the running venv with pip when missing. The raw stacks
stay in the temporary folder unless --profile-keep names a folder for them.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from speed_report import table
from speed_server import Nginx
from speed_tools import (
    IMAGES_PER_PRODUCT,
    VENV_BIN,
    ToolError,
    imgfetch_command,
    make_workload,
    saved_images,
)

RATE = 250  # samples per second
TOP = 12
# Frames on nearly every stack, which say nothing in an inclusive ranking.
_WRAPPERS = (
    "<module>",
    "Thread.",
    "_call_with_frames_removed",
    "_find_and_load_unlocked",
    "_load_unlocked",
    "_LoaderBasics",
    "_handle_fromlist",
    "entry (imgfetch/launch.py)",
    "main (imgfetch/launch.py)",
)


def ensure_py_spy() -> str:
    binary = VENV_BIN / "py-spy"
    if not binary.exists():
        print("installing py-spy into the venv ...", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True
        )
    return str(binary)


def _frame_name(frame: str) -> str:
    """`func (path/to/module.py)` -> `func (module.py)`, shortened for a table."""
    name, _, where = frame.rpartition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})" if name else frame


def summarise(raw: Path) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Total samples, top self frames, top inclusive frames."""
    own: collections.Counter[str] = collections.Counter()
    anywhere: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if not frame.startswith(_WRAPPERS):
                anywhere[frame] += count
    return total, own.most_common(TOP), anywhere.most_common(TOP + 8)


def record(py_spy: str, command: list[str], raw: Path, gil: bool, log: Path) -> float:
    flags = [
        "record",
        "--format",
        "raw",
        "--nolineno",
        "--rate",
        str(RATE),
        "--output",
        str(raw),
    ]
    if gil:
        flags.append("--gil")
    began = time.monotonic()
    with log.open("ab") as sink:
        subprocess.run(
            [py_spy, *flags, "--", *command], stdout=sink, stderr=sink, check=True
        )
    return time.monotonic() - began


def _share_table(total: int, rows: list[tuple[str, int]], label: str) -> str:
    return table(
        [label, "share of samples"],
        [[f"`{name}`", f"{count / total:.1%}"] for name, count in rows],
    )


def scenario(args: argparse.Namespace, root: Path) -> str:
    py_spy = ensure_py_spy()
    keep = getattr(args, "profile_keep", None)
    log = root / "profile.log"
    parts = []
    with Nginx(image_size=args.image_size, delay=0.1) as server:
        products = -(-args.images // IMAGES_PER_PRODUCT)
        work = make_workload(root / "prof", products, lambda n: server.url("i", n))
        for gil in (False, True):
            out = root / "prof-out"
            shutil.rmtree(out, ignore_errors=True)
            raw = root / f"profile-{'gil' if gil else 'threads'}.txt"
            wall = record(
                py_spy, imgfetch_command(work, out, args.workers), raw, gil, log
            )
            if saved_images("imgfetch", out) != work.images:
                raise ToolError(f"the profiled run did not save every image; {log}")
            total, own, anywhere = summarise(raw)
            what = "the thread holding the GIL" if gil else "every non-idle thread"
            busy = (
                f"; GIL held in about {total / (RATE * wall):.0%} of the run"
                if gil
                else ""
            )
            parts += [
                f"### {what.capitalize()} ({total:,} samples at {RATE} Hz, "
                f"{wall:.1f} s under py-spy{busy})",
                "",
                _share_table(total, own, "self (top of stack)"),
                "",
                _share_table(total, anywhere, "inclusive (anywhere on the stack)"),
                "",
            ]
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(raw, Path(keep) / raw.name)
    return "\n".join(
        [
            "## Profile of imgfetch, scenario 1",
            "",
            f"py-spy {RATE} Hz on `imgfetch download` of {work.images:,} loopback "
            f"images, {args.workers} workers (sampling slows the run; the shares "
            "matter, not the rate).",
            "",
            *parts,
        ]
    )
