"""The one rich Console for human output (stderr), shared by logging and the display."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


# Made at first use: importing rich costs about 30 ms of start-up (#6), and a run
# without the live display and without a log record never needs it.
@functools.cache
def get_console() -> Console:
    """The Console. A second one, or a handler bound to another stream, would draw
    over the live display; everything human goes through this one."""
    from rich.console import Console

    return Console(stderr=True)


class _RichOnFirstRecord(logging.Handler):
    """Logs through a RichHandler on the console, made when the first record
    comes (most runs log nothing at the default level)."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose
        self.rich: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Called under this handler's lock: the RichHandler is made once.
        if self.rich is None:
            self.rich = _rich_handler(self.verbose)
        self.rich.emit(record)


def _rich_handler(verbose: bool) -> logging.Handler:
    from rich.logging import RichHandler

    handler = RichHandler(
        console=get_console(),
        show_time=verbose,
        show_path=False,
        markup=False,
        rich_tracebacks=verbose,
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def setup_logging(verbose: bool) -> None:
    """WARNING and up by default; DEBUG with --verbose. Idempotent."""
    root = logging.getLogger("imgfetch")
    root.handlers.clear()
    root.addHandler(_RichOnFirstRecord(verbose))
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False
