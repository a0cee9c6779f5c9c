"""`imgfetch failures`: the images a download could not save, and why."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Literal

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text as RichText

from .backends.base import Failure
from .catalog import CatalogOptions
from .errors import ExitCode, StateError
from .messages import Messages
from .progress import line_writer
from .redact import redact_url
from .runner import open_state

Format = Literal["table", "json", "csv"]
COLUMNS = ("product", "category", "index", "url", "reason", "attempts")
TOP_REASONS = 5
# A detail after "reason: " longer than this is particular to one image (an
# exception text, a server message) and would give every image its own group.
DETAIL_MAX = 40
# Without a terminal, lines this wide read well in a file or a pager; COLUMNS wins.
PIPE_WIDTH = 120
UNBOUNDED = 1_000_000  # a width no table reaches, to measure its natural width
REASON_COLUMN = 4


@dataclass(frozen=True, slots=True)
class FailedImage:
    """One row of the report: a failure and the product it belongs to."""

    product: str
    category: str
    index: int
    url: str
    reason: str
    attempts: int


def reason_group(reason: str) -> str:
    """The part of a failure reason that images failing the same way share.

    Reasons carry particulars of one image: counts and sizes in parentheses
    ("truncated body (512 of 2048 bytes) (gave up after 4 attempts)") and causes
    after ": ". The group is the text before the first " (", and of that the part
    after the first ": " only while it is short and holds no URL: "HTTP 404" and
    "not an image: an HTML page" stay apart, an exception text makes no group of
    its own.
    """
    text = " ".join(reason.split())
    head = text.split(" (", 1)[0] or text
    name, sep, detail = head.partition(": ")
    if sep and (len(detail) > DETAIL_MAX or "://" in detail):
        return name
    return head or "-"


def top_reasons(
    failures: Mapping[str, Iterable[Failure]], limit: int = TOP_REASONS
) -> list[tuple[str, int]]:
    """The `limit` most common reason groups with their counts, most common first
    (ties in the order first seen)."""
    groups = Counter(
        reason_group(failure.reason) for items in failures.values() for failure in items
    )
    return groups.most_common(limit)


def reason_lines(reasons: list[tuple[str, int]], msg: Messages) -> list[str]:
    """The "most common reasons" lines, for this report and the end of a run."""
    if not reasons:
        return []
    lines = [msg("top_reasons")]
    lines.extend(msg("top_reason", reason=r, count=n) for r, n in reasons)
    return lines


def show_failures(
    data_dir: Path,
    backend: str | None,
    catalog: CatalogOptions,
    msg: Messages,
    *,
    output: Format,
) -> int:
    """Print the failed images of `data_dir`; reads only, takes no lock."""
    if not data_dir.is_dir():
        raise StateError("no_data_dir", hint="pass_data_dir", path=str(data_dir))
    store = open_state(data_dir, backend, catalog, locked=False)
    failures = store.failures()
    rows = [
        FailedImage(pid, f.category, f.index, f.url, f.reason, f.attempts)
        for pid, items in failures.items()
        for f in items
    ]
    write = line_writer()
    if output == "json":
        write(json.dumps([asdict(row) for row in rows], ensure_ascii=False, indent=2))
    elif output == "csv":
        write(_csv(rows))
    elif not rows:
        write(msg("failures_none", path=store.failures_label))
    else:
        _write_table(rows, msg, write)
        write("")
        write(
            msg(
                "failures_count",
                count=len(rows),
                products=len(failures),
                path=store.failures_label,
            )
        )
        for line in reason_lines(top_reasons(failures), msg):
            write(line)
    return ExitCode.OK


def _csv(rows: list[FailedImage]) -> str:
    buffer = io.StringIO()
    # "\n", not csv's "\r\n": a text stdout on Windows adds the "\r" itself.
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(astuple(row) for row in rows)
    return buffer.getvalue().removesuffix("\n")


def _write_table(
    rows: list[FailedImage], msg: Messages, write: Callable[[str], None]
) -> None:
    """Render to a string first: a Console on stdout would raise on `| head`,
    where `write` drops the rest quietly."""
    width = max(shutil.get_terminal_size((PIPE_WIDTH, 24)).columns, 40)
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        force_terminal=sys.stdout.isatty(),
        highlight=False,
        emoji=False,
    )
    table = _table(rows, msg, _fitting_box())
    unbounded = console.options.update_width(UNBOUNDED)
    if console.measure(table, options=unbounded).maximum > width:
        # Too wide: rich narrows every column that may wrap. Reasons wrap well at
        # spaces, so they are held to a quarter and the URLs get the rest.
        table.columns[REASON_COLUMN].max_width = max(width // 4, 12)
    console.print(table, crop=False)
    for line in buffer.getvalue().splitlines():
        write(line.rstrip())


def _table(rows: list[FailedImage], msg: Messages, style: box.Box) -> Table:
    table = Table(box=style, header_style="bold", show_edge=False, pad_edge=False)
    # "fold" breaks a URL too long for its column over several lines where
    # "ellipsis" would cut it off.
    table.add_column(msg("head_product"), overflow="fold")
    table.add_column(msg("head_category"), overflow="fold")
    table.add_column("#", justify="right", overflow="fold")
    table.add_column(msg("head_url"), overflow="fold")
    table.add_column(msg("head_reason"), overflow="fold")
    table.add_column(msg("head_attempts"), justify="right", overflow="fold")
    for row in rows:
        # Text cells: "[Errno 104]" in a reason is not rich markup.
        table.add_row(
            RichText(row.product),
            RichText(row.category),
            str(row.index),
            # The table is for eyes (and terminal logs): signed query values are
            # masked. --json and --csv give the URL as stored, for scripts.
            RichText(redact_url(row.url)),
            RichText(row.reason),
            str(row.attempts),
        )
    return table


def _fitting_box() -> box.Box:
    """Box lines, unless stdout cannot encode them (an ASCII or GBK locale)."""
    try:
        "─".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return box.ASCII2
    return box.SIMPLE
