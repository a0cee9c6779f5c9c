"""The one rich Console for human output (stderr), shared by logging and the display."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

# A second Console, or a handler bound to another stream, would draw over the
# live display; everything human goes through this one.
console = Console(stderr=True)


def setup_logging(verbose: bool) -> None:
    """WARNING and up by default; DEBUG with --verbose. Idempotent."""
    root = logging.getLogger("imgfetch")
    root.handlers.clear()
    handler = RichHandler(
        console=console,
        show_time=verbose,
        show_path=False,
        markup=False,
        rich_tracebacks=verbose,
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.propagate = False
