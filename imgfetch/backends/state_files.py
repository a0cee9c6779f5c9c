"""Reading the JSON files stores keep: damaged ones become one-line StateErrors."""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from ..catalog import InvalidRecord, is_category_name
from ..errors import StateError
from ..messages import Text
from ..records import undecodable
from .base import Failure


def load_state_json(path: Path, kind: type, shape: Text) -> Any:
    """Parse a state file, or None when it does not exist; StateError when damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError("state_unreadable", path=path, detail=exc.strerror) from None
    return parse_state_json(path, data, kind, shape)


def parse_state_json(path: Path, data: bytes, kind: type, shape: Text) -> Any:
    """Parse the bytes of the state file `path`; StateError when damaged."""
    if not data.strip():
        raise StateError("state_empty", hint="damaged", path=path, shape=shape)
    try:
        # utf-8-sig: a file repaired in an editor that adds a BOM is still fine.
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise StateError(
            "not_utf8", hint="damaged", path=path, offset=exc.start
        ) from None
    except json.JSONDecodeError as exc:
        raise StateError(
            "invalid_json",
            hint="damaged",
            path=path,
            line=exc.lineno,
            column=exc.colno,
            detail=exc.msg,
        ) from None
    # RecursionError: nested too deeply; ValueError: an integer beyond Python's
    # int-from-text digit limit.
    except (RecursionError, ValueError) as exc:
        raise StateError(
            "file_reason", hint="damaged", path=path, reason=undecodable(exc)
        ) from None
    if not isinstance(value, kind):
        raise StateError(
            "state_top_level",
            hint="damaged",
            path=path,
            kind=type(value).__name__,
            shape=shape,
        )
    return value


def checked_failure(failure: Failure) -> Failure:
    """Reject failures that would name a file outside the product's folder.

    The category and index become the file name (`<category>_<index>.<ext>`) when
    `--retry-failed` fetches the image again, so a hand-edited category such as
    "../../x" must never get that far.
    """
    if not is_category_name(failure.category):
        raise InvalidRecord("bad_category", category=failure.category)
    if isinstance(failure.index, bool) or failure.index < 1:
        raise InvalidRecord("bad_index", index=failure.index)
    return failure


def is_valid_entry(entry: Any) -> bool:
    """A mapping entry: category names to lists of relative paths that stay inside
    the data directory (a hand-edited "../../x" is damage, not a path to follow)."""
    return isinstance(entry, dict) and all(
        is_category_name(category)
        and isinstance(paths, list)
        and all(_is_inside(path) for path in paths)
        for category, paths in entry.items()
    )


def _is_inside(path: Any) -> bool:
    if not isinstance(path, str) or not path or "\x00" in path:
        return False
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return not path.startswith(("/", "\\")) and ".." not in parts and ":" not in path


# -- reading a big JSON array a piece at a time ----------------------------------------

_READ = 1 << 20  # bytes read at a time
_BLANKS = re.compile(r"[ \t\n\r]*")  # what json skips between values
_DECODER = json.JSONDecoder()
# json reports a value cut off by the end of the text near that end (`tru`, `\\u12`),
# or as an unterminated string; a number cut off there decodes, but may go on.
_CUT_MARGIN = 16
_BOM_CHECK = len(codecs.BOM_UTF8)


class _Malformed(Exception):
    """The file is not a JSON array the scan can read; parsing it whole says why."""


def scan_state_array(
    fd: int, path: Path, shape: Text
) -> Iterator[tuple[int, int, Any]]:
    """Each element of the JSON array in the state file open at `fd` (`path`), as
    (offset, length, value): its text is the `length` bytes from `offset`, the
    blanks in front of it (after the `[` or the comma) included.

    The file is read a megabyte at a time, so a million records never sit in memory
    as objects (2.9 GB) nor as one string. Damage raises the StateError that
    load_state_json gives for it: the scan then parses the file whole to say
    where, which only a damaged file costs.
    """
    try:
        yield from _ArrayScan(fd).elements()
        return
    except _Malformed:
        pass
    data = _read_whole(fd, path)
    parse_state_json(path, data, list, shape)
    # Parsed whole, the bytes are a valid array after all: only the scan's own
    # limits can get here (none are known).
    raise StateError("file_reason", hint="damaged", path=path, reason="unreadable")


def _read_whole(fd: int, path: Path) -> bytes:
    chunks, offset = [], 0
    try:
        while chunk := os.pread(fd, _READ, offset):
            chunks.append(chunk)
            offset += len(chunk)
    except OSError as exc:
        raise StateError("state_unreadable", path=path, detail=exc.strerror) from None
    return b"".join(chunks)


class _ArrayScan:
    """The file decoded a piece at a time, with the byte offset of each character
    that an element starts or ends at.

    `text[pos:]` is not consumed yet; `cursor` is a position in `text` whose byte
    offset in the file is `cursor_byte`. Offsets are only ever asked for in order,
    so each character's UTF-8 length is counted once.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""
        self.pos = 0
        self.cursor = 0
        self.cursor_byte = 0
        self.read_at = 0
        self.eof = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def elements(self) -> Iterator[tuple[int, int, Any]]:
        self.skip_blanks()
        if self.peek() != "[":
            raise _Malformed
        self.pos += 1
        start = self.byte_at(self.pos)
        self.skip_blanks()
        if self.peek() == "]":
            self.expect_end()
            return
        while True:
            value, end = self.value()
            yield start, self.byte_at(end) - start, value
            self.pos = end
            self.skip_blanks()
            separator = self.peek()
            if separator == "]":
                self.expect_end()
                return
            if separator != ",":
                raise _Malformed
            self.pos += 1
            start = self.byte_at(self.pos)
            self.skip_blanks()

    def expect_end(self) -> None:
        self.pos += 1
        self.skip_blanks()
        if self.peek():
            raise _Malformed

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def byte_at(self, index: int) -> int:
        """The file offset of `text[index]`, for an index at or after the cursor."""
        self.cursor_byte += len(self.text[self.cursor : index].encode())
        self.cursor = index
        return self.cursor_byte

    def skip_blanks(self) -> None:
        while True:
            match = _BLANKS.match(self.text, self.pos)
            assert match is not None  # the pattern matches the empty string
            self.pos = match.end()
            if self.pos < len(self.text) or not self.more(_READ):
                return

    def value(self) -> tuple[Any, int]:
        """The JSON value at `pos` and the index where it ends, reading on while
        the text read so far may have cut it off."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.msg.startswith("Unterminated string") or (
                    exc.pos >= len(self.text) - _CUT_MARGIN
                )
                if not (cut and self.more(len(self.text) - self.pos)):
                    raise _Malformed from None
                continue
            except (RecursionError, ValueError):
                raise _Malformed from None
            # An object ends at its brace; a number near the end may go on.
            if isinstance(value, dict) or end < len(self.text) - _CUT_MARGIN:
                return value, end
            if not self.more(len(self.text) - self.pos):
                return value, end

    def more(self, size: int) -> bool:
        """Decode at least `size` more bytes onto the text (dropping what was
        consumed); False at the end of the file."""
        if self.eof:
            return False
        try:
            # At least a BOM's length: the first read must see whether one is there.
            data = os.pread(self.fd, max(size, _READ, _BOM_CHECK), self.read_at)
        except OSError:
            raise _Malformed from None  # parsing it whole reports the error
        self.eof = not data
        if self.read_at == 0 and data.startswith(codecs.BOM_UTF8):
            # utf-8-sig, as load_state_json reads it (an editor may add one).
            self.cursor_byte = _BOM_CHECK
            data = data[_BOM_CHECK:]
            self.read_at = _BOM_CHECK
        self.read_at += len(data)
        try:
            decoded = self._decoder.decode(data, final=self.eof)
        except UnicodeDecodeError:
            raise _Malformed from None
        if not decoded:  # the end, or a character cut in two by the read
            return not self.eof
        self.byte_at(self.pos)
        self.text = self.text[self.pos :] + decoded
        self.pos = self.cursor = 0
        return True
