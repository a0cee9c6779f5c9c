"""Reading a catalog file as a stream of JSON records, with exact positions."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .errors import CatalogError
from .messages import Text

JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class UnreadableLine:
    """A JSON Lines line that is not JSON: a bad record, not a bad file."""

    reason: Text


# A record over this size is refused: no product needs it, and it is read into
# memory whole, so the limit bounds the memory a hostile or broken file costs (#5).
MAX_RECORD_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024  # bytes read at a time; a line shorter is never measured
_BOM = codecs.BOM_UTF8


def iter_records(path: Path) -> Iterator[tuple[Text, Any]]:
    """Yield (location, record) from a JSON array or, for .jsonl, JSON Lines,
    reading the file as a stream.

    A JSON Lines line that cannot be decoded is yielded as an UnreadableLine, so
    the caller decides whether it stops the run; a broken JSON array always does.
    """
    with _Source(path) as source:
        if path.suffix.lower() in JSONL_SUFFIXES:
            yield from _iter_json_lines(source)
        else:
            yield from _iter_json_array(source)


class _Source:
    """The catalog's bytes, with the offset read so far; OS errors as CatalogError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        try:
            self._file = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise CatalogError(
                "input_not_found", hint="pass_catalog", path=str(path)
            ) from None
        except IsADirectoryError:
            raise CatalogError(
                "input_is_dir", hint="pass_file_inside", path=str(path)
            ) from None
        except OSError as exc:
            raise self._unreadable(exc) from None

    def __enter__(self) -> _Source:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def read(self, size: int) -> bytes:
        """`size` bytes, fewer only at the end of the file."""
        try:
            data = self._file.read(size)
        except OSError as exc:
            raise self._unreadable(exc) from None
        self.offset += len(data)
        return data

    def readline(self, limit: int) -> bytes:
        """One line with its b"\\n", or `limit` bytes of it, or the file's end."""
        try:
            data = self._file.readline(limit)
        except OSError as exc:
            raise self._unreadable(exc) from None
        self.offset += len(data)
        return data

    def _unreadable(self, exc: OSError) -> CatalogError:
        return CatalogError(
            "input_unreadable", path=str(self.path), detail=exc.strerror
        )


def _too_long() -> Text:
    return Text("reason_too_long", size=MAX_RECORD_BYTES // (1024 * 1024))


def _utf8(path: Path, data: bytes | bytearray, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(
            "not_utf8", hint="save_utf8", path=path, offset=offset + exc.start
        ) from None


# ------------------------------------------------------------------- JSON Lines


def _iter_json_lines(source: _Source) -> Iterator[tuple[Text, Any]]:
    found = False
    for lineno, (offset, data) in enumerate(_lines(source), start=1):
        if data is None:
            found = True
            yield Text("at_line", line=lineno), UnreadableLine(_too_long())
            continue
        line = _utf8(source.path, data, offset)
        if not line.strip():
            continue
        found = True
        yield _json_line(line, lineno)
    if not found:
        raise CatalogError("file_empty", hint="expect_json_lines", path=source.path)


def _lines(source: _Source) -> Iterator[tuple[int, bytes | bytearray | None]]:
    """(offset, line without its b"\\n") for each line; None for a line over
    MAX_RECORD_BYTES. Split on b"\\n" only: str.splitlines() would also split on
    U+2028, U+0085, \\x1c..., which JSON strings may hold raw."""
    while piece := source.readline(_CHUNK):
        offset = source.offset - len(piece)
        ended = len(piece) < _CHUNK or piece.endswith(b"\n")
        if offset == 0 and piece.startswith(_BOM):
            piece, offset = piece[len(_BOM) :], len(_BOM)
        if ended:
            yield offset, piece.removesuffix(b"\n")
        else:
            yield offset, _long_line(source, piece)


def _long_line(source: _Source, start: bytes) -> bytearray | None:
    """The rest of a line longer than a chunk. One over the limit is skipped to
    its end a chunk at a time, never held whole; the result is None then."""
    line = bytearray(start)
    while True:
        piece = source.readline(_CHUNK)
        ended = len(piece) < _CHUNK or piece.endswith(b"\n")
        line += piece.removesuffix(b"\n")
        if len(line) > MAX_RECORD_BYTES:
            del line
            while not ended:
                piece = source.readline(_CHUNK)
                ended = len(piece) < _CHUNK or piece.endswith(b"\n")
            return None
        if ended:
            return line


def _json_line(line: str, lineno: int) -> tuple[Text, Any]:
    try:
        return Text("at_line", line=lineno), json.loads(line)
    except json.JSONDecodeError as exc:
        where = Text("at_line_column", line=lineno, column=exc.colno)
        return where, UnreadableLine(Text("reason_invalid_json", detail=exc.msg))
    except (RecursionError, ValueError) as exc:
        return Text("at_line", line=lineno), UnreadableLine(undecodable(exc))


# ------------------------------------------------------------------- JSON array

_WS = re.compile(r"\s*")
_JSON_WS = re.compile(r"[ \t\n\r]*")  # what json.loads skips around a value
_DECODER = json.JSONDecoder()
# json reports a value cut off by the end of the text within this many characters
# of the end (`tru`, `\u12`), or as an unterminated string starting anywhere;
# a number cut off there decodes, but may be the start of a longer one.
_CUT_MARGIN = 16


class _TooLong(Exception):
    """A JSON value longer than MAX_RECORD_BYTES (counted in characters)."""


class _Text:
    """The catalog decoded a chunk at a time, with line and column of a position.

    `buf[pos:]` is not consumed yet; `line` is the line at `pos` and `line_start`
    the index in `buf` where that line begins (negative when it began in text
    already dropped). Newlines are counted once, as text is consumed: recounting
    from the start would be quadratic.
    """

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.path = source.path
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.line_start = 0
        self.eof = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def peek(self) -> str:
        """The next character, or "" at the end of the file."""
        return self.buf[self.pos : self.pos + 1]

    def consume(self, end: int) -> None:
        newlines = self.buf.count("\n", self.pos, end)
        if newlines:
            self.line += newlines
            self.line_start = self.buf.rfind("\n", self.pos, end) + 1
        self.pos = end

    def skip_ws(self, blanks: re.Pattern[str] = _WS) -> None:
        while True:
            match = blanks.match(self.buf, self.pos)
            assert match is not None  # the pattern matches the empty string
            self.consume(match.end())
            if self.pos < len(self.buf) or self.eof:
                return
            self.fill(_CHUNK)

    def where(self, index: int) -> tuple[int, int]:
        """Line and column (both from 1) of `index`, at or after `pos`."""
        newlines = self.buf.count("\n", self.pos, index)
        if not newlines:
            return self.line, index - self.line_start + 1
        return self.line + newlines, index - self.buf.rfind("\n", self.pos, index)

    def decode(self) -> tuple[Any, int]:
        """The JSON value at `pos` and the index where it ends, reading on while the
        text may have cut it off; json's errors propagate."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.msg.startswith("Unterminated string") or (
                    exc.pos >= len(self.buf) - _CUT_MARGIN
                )
                if self.eof or not cut:
                    raise
                end = len(self.buf)  # it goes on at least that far
            else:
                # A value that ends near the end of the text may not be whole: a
                # number (`-3.` of `-3.5e2`) goes on in the next chunk.
                if end < len(self.buf) - _CUT_MARGIN or self.eof:
                    if end - self.pos > MAX_RECORD_BYTES:
                        raise _TooLong
                    return value, end
            self._grow(end - self.pos)

    def _grow(self, length: int) -> None:
        """Read on for a value at least `length` long: as much again (each retry
        decodes it from its start; doubling keeps that linear), but not far past
        the limit."""
        if length > MAX_RECORD_BYTES:
            raise _TooLong
        self.fill(max(_CHUNK, min(length, MAX_RECORD_BYTES + 1 - length)))

    def fill(self, size: int) -> None:
        """Decode `size` more bytes onto the text, dropping what was consumed."""
        if self.eof:
            return
        start = self.source.offset - len(self._decoder.getstate()[0])
        raw = data = self.source.read(max(size, len(_BOM)))
        if start == 0 and data.startswith(_BOM):
            data, start = data[len(_BOM) :], len(_BOM)
        try:
            text = self._decoder.decode(data, final=not raw)
        except UnicodeDecodeError as exc:
            # exc.start counts from the bytes the decoder held back, then `data`.
            raise CatalogError(
                "not_utf8", hint="save_utf8", path=self.path, offset=start + exc.start
            ) from None
        self.eof = not raw
        if self.pos:
            self.buf, self.line_start = self.buf[self.pos :], self.line_start - self.pos
            self.pos = 0
        # Appending to a string nothing else refers to resizes it in place.
        buf, self.buf = self.buf, ""
        buf += text
        self.buf = buf


def _iter_json_array(source: _Source) -> Iterator[tuple[Text, Any]]:
    """Decode the array one element at a time so each error has a line number."""
    text = _Text(source)
    text.skip_ws()
    if not text.peek():
        raise CatalogError("file_empty", hint="expect_array", path=source.path)
    if text.peek() != "[":
        _raise_not_array(text)
    text.consume(text.pos + 1)
    text.skip_ws()
    number = 0
    if text.peek() == "]":
        _expect_end(text)
        return
    while True:
        number += 1
        record, end = _element(text)
        yield Text("at_record", number=number, line=text.line), record
        text.consume(end)
        text.skip_ws()
        if text.peek() == ",":
            text.consume(text.pos + 1)
            text.skip_ws()
            continue
        if text.peek() == "]":
            _expect_end(text)
            return
        _raise_json(text, "Expecting ',' delimiter or ']'", text.pos)


def _element(text: _Text) -> tuple[Any, int]:
    try:
        return text.decode()
    except json.JSONDecodeError as exc:
        _raise_json(text, exc.msg, exc.pos)
    except _TooLong:
        _raise_undecodable(text.path, text.line, _too_long())
    except (RecursionError, ValueError) as exc:
        _raise_undecodable(text.path, text.line, undecodable(exc))


# What a top-level value too long to decode is, from its first character.
_KIND_OF_START = {"{": "dict", '"': "str"}


def _raise_not_array(text: _Text) -> NoReturn:
    kind = _KIND_OF_START.get(text.peek())
    try:
        value, end = text.decode()
    except json.JSONDecodeError as exc:
        _raise_json(text, exc.msg, exc.pos)
    except _TooLong:
        if kind is None:
            _raise_undecodable(text.path, text.line, _too_long())
    except (RecursionError, ValueError) as exc:
        _raise_undecodable(text.path, text.line, undecodable(exc))
    else:
        _reject_json_lines(text, value, end)
        kind = type(value).__name__
    raise CatalogError("top_level", hint="write_array", path=text.path, kind=kind)


def _reject_json_lines(text: _Text, first: Any, end: int) -> None:
    """An object, a line break and another object: JSON Lines in a file not named
    so. Anything else after the first value is json's "Extra data"."""
    text.consume(end)
    line = text.line
    text.skip_ws(_JSON_WS)
    if not text.peek():
        return
    extra_at = text.where(text.pos)
    text.skip_ws()
    if isinstance(first, dict) and text.line > line and text.peek() == "{":
        raise CatalogError(
            "looks_like_jsonl", hint="rename_jsonl", path=text.path, line=text.line
        )
    _raise_json_at(text.path, "Extra data", *extra_at)


def _expect_end(text: _Text) -> None:
    """After the closing bracket: blanks only."""
    text.consume(text.pos + 1)
    text.skip_ws()
    if text.peek():
        _raise_json(text, "Extra data", text.pos)


def _raise_json(text: _Text, detail: str, index: int) -> NoReturn:
    _raise_json_at(text.path, detail, *text.where(index))


def _raise_json_at(path: Path, detail: str, line: int, column: int) -> NoReturn:
    raise CatalogError(
        "invalid_json",
        hint="fix_json",
        path=path,
        line=line,
        column=column,
        detail=detail,
    ) from None


def undecodable(exc: BaseException) -> Text:
    """Why valid-looking JSON could not be decoded (json raises these, not
    JSONDecodeError, for hostile input)."""
    if isinstance(exc, RecursionError):
        return Text("reason_too_deep")
    return Text("reason_too_many_digits")


def _raise_undecodable(path: Path, line: int, reason: Text) -> NoReturn:
    raise CatalogError(
        "undecodable", hint="not_a_catalog", path=path, line=line, reason=reason
    ) from None
