"""Progress views: a rich live display for terminals, spec-format lines otherwise."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from .messages import Messages

if TYPE_CHECKING:
    # Imported where used: the live display's modules cost a few dozen ms of
    # start-up that plain and silent runs do not need.
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.progress import TaskID

RECENT_LINES = 5


@dataclass
class ProductLine:
    """What the spec's progress line says about one finished product."""

    done: int
    total: int
    product_id: str
    counts: dict[str, int]
    failed: int = 0

    def render(self, msg: Messages) -> str:
        parts = ", ".join(msg.category_count(c, n) for c, n in self.counts.items())
        line = msg(
            "progress",
            done=self.done,
            total=self.total,
            pid=self.product_id,
            parts=parts,
            images=sum(self.counts.values()),
        )
        if self.failed:
            line += msg("progress_failed", failed=self.failed)
        return line


@dataclass
class Tally:
    """Counters of one run, shared by the views and the final summary."""

    started: float = field(default_factory=time.monotonic)
    products: int = 0
    images: int = 0
    failed: int = 0
    bytes: int = 0
    per_category: Counter[str] = field(default_factory=Counter)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


class ProgressView:
    """Receives engine events on the main thread; the default shows nothing."""

    def __init__(self, msg: Messages, tally: Tally) -> None:
        self.msg = msg
        self.tally = tally

    def begin(self, total: int, done_before: int) -> None:
        """The run starts with `done_before` of `total` products already done."""

    def product_finished(self, line: ProductLine) -> None:
        """A product completed (all its images saved or failed)."""

    def end(self) -> None:
        """Stop drawing; safe to call more than once."""


class PlainView(ProgressView):
    """One spec-format line per product, no escape codes: logs, pipes, cron."""

    def __init__(self, msg: Messages, tally: Tally, out: Callable[[str], None]) -> None:
        super().__init__(msg, tally)
        self.out = out

    def product_finished(self, line: ProductLine) -> None:
        self.out(line.render(self.msg))


class RichView(ProgressView):
    """One overall bar, counts per category, and the latest products' lines.

    rich redraws from its own thread a few times a second; the engine only bumps
    counters here, so a burst of products costs nothing on screen.
    """

    def __init__(self, msg: Messages, tally: Tally, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        super().__init__(msg, tally)
        self.console = console
        self.recent: deque[str] = deque(maxlen=RECENT_LINES)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[images]} {task.fields[label_images]}"),
            TextColumn("{task.fields[size]}"),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,
        )
        self.task: TaskID | None = None
        self.live: Live | None = None

    def begin(self, total: int, done_before: int) -> None:
        from rich.live import Live

        self.task = self.progress.add_task(
            self.msg("label_products"),
            total=total,
            completed=done_before,
            images=0,
            label_images=self.msg("label_images"),
            size=format_bytes(0),
            rate="",
        )
        self.live = Live(
            _Dynamic(self._render),
            console=self.console,
            refresh_per_second=4,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.live.start()

    def product_finished(self, line: ProductLine) -> None:
        self.recent.append(line.render(self.msg))
        if self.task is not None:
            self.progress.update(
                self.task,
                completed=line.done,
                images=self.tally.images,
                size=format_bytes(self.tally.bytes),
                rate=f"{self.tally.images / max(self.tally.elapsed, 1e-6):.1f}/s",
            )

    def end(self) -> None:
        live, self.live = self.live, None
        if live is not None:
            # After SIGHUP the terminal is gone and the last redraw fails; the
            # shutdown that follows (saving state) must still run.
            with contextlib.suppress(OSError, ValueError):
                live.stop()

    def _render(self) -> RenderableType:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        counts = Table.grid(padding=(0, 2))
        row = [
            self.msg.category_count(c, n) for c, n in self.tally.per_category.items()
        ]
        row.append(f"{self.msg('label_failed')}: {self.tally.failed}")
        counts.add_row(*row)
        lines = [Text(line, overflow="ellipsis", no_wrap=True) for line in self.recent]
        return Group(self.progress, counts, *lines)


class _Dynamic:
    """A renderable that asks for fresh content at every refresh."""

    def __init__(self, make: Callable[[], RenderableType]) -> None:
        self.make = make

    def __rich__(self) -> RenderableType:
        return self.make()


def choose_view(
    mode: str,
    msg: Messages,
    tally: Tally,
    console: Callable[[], Console],
    out: Callable[[str], None],
) -> ProgressView:
    """`auto` is rich on a terminal and plain lines anywhere else.

    `console` makes the Console, called only for `auto` and `rich`: plain and
    silent runs then never import rich.
    """
    if mode == "plain":
        return PlainView(msg, tally, out)
    if mode not in ("auto", "rich"):
        return ProgressView(msg, tally)
    terminal = console()
    if mode == "rich" or (terminal.is_terminal and not terminal.is_dumb_terminal):
        return RichView(msg, tally, terminal)
    return PlainView(msg, tally, out)


def format_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # unreachable; keeps type checkers content


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def line_writer(stream: IO[str] | None = None) -> Callable[[str], None]:
    """A print function for report lines that survives a closed terminal.

    After a dropped SSH session or `| head`, writing raises EIO or EPIPE; the state
    is already saved by then, so the lines are dropped rather than crashing.
    """
    broken = False

    def write(line: str) -> None:
        nonlocal broken
        if broken:
            return
        try:
            target = stream if stream is not None else sys.stdout
            target.write(line + "\n")
            target.flush()
        except (OSError, ValueError):
            broken = True

    return write
