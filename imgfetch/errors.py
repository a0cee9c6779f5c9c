"""The exception tree and the exit codes that the CLI boundary maps it to."""

from __future__ import annotations

from enum import IntEnum

from .messages import Messages, Text


class ExitCode(IntEnum):
    """Process exit codes; the README and `imgfetch --help` show the same table."""

    OK = 0
    FAILURES = 1  # every product done, but some images could not be saved
    BAD_INPUT = 2  # bad usage, bad catalog, damaged state file
    BUSY = 3  # another imgfetch holds the data directory
    IO_ERROR = 4  # the data directory cannot be written (disk full, permissions)
    INTERNAL = 70  # a bug (EX_SOFTWARE)
    SIGHUP = 129  # the terminal went away (dropped SSH session), state saved
    SIGINT = 130  # interrupted by Ctrl+C, state saved
    SIGTERM = 143  # terminated, state saved


EXIT_CODE_TABLE: tuple[tuple[int, str], ...] = (
    (ExitCode.OK, "all products done, every image saved"),
    (ExitCode.FAILURES, "all done, some images failed (see failed_images.json)"),
    (ExitCode.BAD_INPUT, "bad usage, bad catalog or damaged state; nothing changed"),
    (ExitCode.BUSY, "the data directory is in use by another imgfetch"),
    (ExitCode.IO_ERROR, "the data directory cannot be written (disk full, rights)"),
    (ExitCode.INTERNAL, "internal error: a bug, rerun with --verbose and report it"),
    (ExitCode.SIGHUP, "hung up (SIGHUP, a dropped SSH session), progress saved"),
    (ExitCode.SIGINT, "interrupted by Ctrl+C (SIGINT), progress saved"),
    (ExitCode.SIGTERM, "terminated by SIGTERM, progress saved"),
)


class ImgfetchError(Exception):
    """Root of every error imgfetch reports to a user.

    Built from message catalog keys and values, rendered in the user's language at
    the CLI boundary: `CatalogError("input_not_found", hint="pass_catalog",
    path=...)` renders `err_input_not_found`, then `hint_pass_catalog` (which says
    what to do) with the same values. The message names the bad value. `str()` is
    the English rendering, for logs.
    """

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, key: str, /, hint: str | None = None, **values: object) -> None:
        super().__init__(key)
        self.text = Text(f"err_{key}", **values)
        self.hint_text = Text(f"hint_{hint}", **values) if hint else None

    def render(self, msg: Messages) -> str:
        """One line in msg's language: the message, then `; ` and the hint."""
        message = self.text.render(msg)
        if self.hint_text is None:
            return message
        return f"{message}; {self.hint_text.render(msg)}"

    @property
    def message(self) -> str:
        return str(self.text)

    @property
    def hint(self) -> str | None:
        return None if self.hint_text is None else str(self.hint_text)

    def __str__(self) -> str:
        return self.render(Messages("en"))


class UsageError(ImgfetchError):
    """An option or argument has a value imgfetch cannot use."""


class CatalogError(ImgfetchError):
    """The input catalog cannot be read: broken JSON, wrong shape, bad record."""


class StateError(ImgfetchError):
    """A state file in the data directory is damaged or was written by another store."""


class DataDirBusyError(ImgfetchError):
    """Another imgfetch process holds the lock of the data directory."""

    exit_code = ExitCode.BUSY


class StorageError(ImgfetchError):
    """Writing to the data directory failed (disk full, permission denied)."""

    exit_code = ExitCode.IO_ERROR
