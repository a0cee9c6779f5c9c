"""Markdown for the speed benchmark: the machine, tables, and RESULTS.md sections.

RESULTS.md is made of sections between `<!-- section:NAME -->` and
`<!-- /section:NAME -->` markers. A run replaces the sections it measured and
keeps the others, so scenarios can be run (and re-run) one at a time.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from speed_tools import Run


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> str:
    try:
        with open("/proc/meminfo") as info:
            kib = int(info.readline().split()[1])
        return f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def filesystem(folder: Path) -> str:
    done = subprocess.run(
        ["stat", "-f", "-c", "%T", str(folder)], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def source_state() -> str:
    """The commit measured, and whether the work tree had changes on top of it."""
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    if not head:
        return "not a git checkout"
    return f"commit {head}" + (f" with {len(changed)} changed files" if changed else "")


def machine_section(versions: dict[str, str], nginx: str, workdir: Path) -> str:
    lines = [
        "## Machine",
        "",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; memory {memory_gib()}",
        f"- OS: {platform.system()} {platform.release()}; Python "
        f"{platform.python_version()}",
        f"- files written to `{workdir}` ({filesystem(workdir)})",
        f"- nginx {nginx}",
    ]
    lines += [f"- {tool}: {text}" for tool, text in versions.items()]
    lines.append(f"- imgfetch source: {source_state()}")
    return "\n".join(lines)


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; the first column left-aligned, the others right."""
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(out)


def median_of(runs: Sequence[Run], attr: str) -> float:
    return statistics.median(getattr(run, attr) for run in runs)


def by_tool(runs: Sequence[Run]) -> dict[str, list[Run]]:
    grouped: dict[str, list[Run]] = {}
    for run in runs:
        grouped.setdefault(run.tool, []).append(run)
    return grouped


def ratio(mine: float, theirs: float) -> str:
    return f"{mine / theirs:.2f}" if theirs else "n/a"


def comparison(runs: Sequence[Run], ideal: float | None = None) -> str:
    """Medians per tool, then imgfetch's ratios to each other tool."""
    grouped = by_tool(runs)
    header = [
        "tool",
        "images/s (median)",
        "min..max",
        "CPU s / 1,000 images",
        "peak RSS (MB)",
        "runs",
    ]
    if ideal:
        header.insert(3, "share of ideal")
    rows = []
    for tool, mine in grouped.items():
        rates = [run.rate for run in mine]
        row: list[object] = [
            tool,
            f"{median_of(mine, 'rate'):,.0f}",
            f"{min(rates):,.0f}..{max(rates):,.0f}",
            f"{median_of(mine, 'cpu_per_1000'):.2f}",
            f"{median_of(mine, 'peak_mb'):.0f}",
            len(mine),
        ]
        if ideal:
            row.insert(3, f"{median_of(mine, 'rate') / ideal:.1%}")
        rows.append(row)
    text = table(header, rows)
    if "imgfetch" not in grouped:
        return text
    ours = grouped["imgfetch"]
    ratio_rows = []
    for tool, theirs in grouped.items():
        if tool == "imgfetch":
            continue
        ratio_rows.append(
            [
                f"imgfetch / {tool}",
                ratio(median_of(ours, "rate"), median_of(theirs, "rate")),
                ratio(
                    median_of(ours, "cpu_per_1000"), median_of(theirs, "cpu_per_1000")
                ),
                ratio(median_of(ours, "peak_mb"), median_of(theirs, "peak_mb")),
            ]
        )
    if ratio_rows:
        text += "\n\n" + table(
            ["ratio (medians)", "images/s", "CPU per image", "peak RSS"], ratio_rows
        )
    return text


def run_log(runs: Sequence[Run]) -> str:
    """Every run in the order it ran, for the record."""
    rows = [
        [
            number,
            run.tool,
            run.workers,
            run.saved,
            f"{run.wall:.2f}",
            f"{run.rate:,.0f}",
            f"{run.cpu:.2f}",
            f"{run.peak_mb:.0f}",
            run.exit_code,
        ]
        for number, run in enumerate(runs, start=1)
    ]
    return table(
        [
            "#",
            "tool",
            "workers",
            "images",
            "wall (s)",
            "images/s",
            "CPU (s)",
            "peak RSS (MB)",
            "exit",
        ],
        rows,
    )


def update_results(path: Path, title: str, sections: dict[str, str]) -> None:
    """Replace (or append) the named sections of RESULTS.md, keep the rest."""
    text = path.read_text() if path.exists() else f"{title}\n\n"
    for name, body in sections.items():
        opening, closing = f"<!-- section:{name} -->\n", f"<!-- /section:{name} -->\n"
        block = f"{opening}{body.rstrip()}\n{closing}"
        first = text.find(opening)
        last = text.find(closing, first)
        if first >= 0 and last >= 0:
            text = text[:first] + block + text[last + len(closing) :]
        else:
            text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
