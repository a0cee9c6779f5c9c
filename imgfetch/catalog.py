"""Reading a product catalog (JSON array or JSON Lines) into products and image refs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .cdn import original_url
from .errors import CatalogError, UsageError
from .messages import Text

ID_FALLBACKS = ("id", "item_id", "product_id", "num_iid", "goods_id")
DEFAULT_FIELDS = {"main": "main_images", "sku": "sku_images", "qc": "qc_images"}
URL_KEYS = ("url", "image", "src")
FETCHABLE_SCHEMES = ("http", "https")
_CATEGORY_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image of a product: where it comes from and which slot it fills."""

    category: str
    index: int  # 1-based position within the category, in input order
    url: str
    problem: str | None = None  # set when the URL can never be fetched

    @property
    def stem(self) -> str:
        return f"{self.category}_{self.index}"


@dataclass(slots=True)
class Product:
    """A catalog record: its id, its images, and the dict exactly as read."""

    id: str
    raw: dict[str, Any]
    images: tuple[ImageRef, ...]


@dataclass(frozen=True)
class CatalogOptions:
    """How records are interpreted: id field, image fields, URL scheme, and whether
    CDN thumbnail suffixes are stripped (`--original`)."""

    id_field: str | None = None
    fields: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_FIELDS))
    default_scheme: str = "https"
    original: bool = False

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.fields)


@dataclass
class Catalog:
    """The products of one input, deduplicated, with what was dropped on the way."""

    products: list[Product]
    duplicates: int = 0
    duplicate_example: str = ""
    invalid: int = 0
    invalid_example: Text | None = None  # where the first invalid record is, and why

    @property
    def first_invalid(self) -> str:
        """The first invalid record, in English (logs, tests)."""
        return "" if self.invalid_example is None else str(self.invalid_example)


class InvalidRecord(ValueError):
    """A record that cannot become a product; the caller adds where it is.

    `InvalidRecord("no_id", names=...)` carries the catalog entry `reason_no_id`,
    which the caller composes into its error message; `str()` is English.
    """

    def __init__(self, key: str, /, **values: object) -> None:
        self.text = Text(f"reason_{key}", **values)
        super().__init__(str(self.text))


def reason_of(exc: ValueError) -> Text | str:
    """Why a record was rejected, as a message value (plain text if not ours)."""
    return exc.text if isinstance(exc, InvalidRecord) else str(exc)


def parse_field_overrides(specs: list[str]) -> dict[str, str]:
    """Turn repeated `CATEGORY=FIELD` options into the category-to-field map."""
    fields = dict(DEFAULT_FIELDS)
    for spec in specs:
        category, sep, name = spec.partition("=")
        category, name = category.strip(), name.strip()
        if not sep or not name:
            raise UsageError("field_not_pair", hint="field_example", spec=spec)
        if not is_category_name(category):
            raise UsageError("field_category", hint="category_chars", category=category)
        fields[category] = name
    return fields


def is_category_name(name: object) -> bool:
    """True for names fit to start an image's file name (`<category>_<n>.<ext>`)."""
    return isinstance(name, str) and _CATEGORY_RE.fullmatch(name) is not None


def normalize_url(
    value: str, default_scheme: str, *, original: bool = False
) -> tuple[str, str | None]:
    """Trim and complete a URL, and with `original` strip a CDN thumbnail suffix;
    the second value says why it cannot be fetched."""
    url = value.strip()
    if url.startswith("//"):
        url = f"{default_scheme}:{url}"
    if original:
        url = original_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return url, f"malformed URL ({exc})"
    scheme = parts.scheme.lower()
    if scheme not in FETCHABLE_SCHEMES:
        return url, f"unsupported URL scheme {scheme or '(none)'!r}"
    if not parts.hostname:
        return url, "URL has no host"
    return url, None


def product_id(record: Mapping[str, Any], id_field: str | None) -> str:
    """The record's id as a string, from --id-field or the first fallback present."""
    names = (id_field,) if id_field else ID_FALLBACKS
    for name in names:
        if name in record and record[name] is not None:
            return _id_text(record[name], name)
    raise InvalidRecord("no_id", names=", ".join(names))


def _id_text(value: Any, name: str) -> str:
    # bool is an int subclass; an id of true is a data error, not the id "True".
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidRecord("id_type", name=name, kind=type(value).__name__)
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidRecord("id_value", name=name, value=value)
        value = int(value)
    text = str(value)
    if not text.strip():
        raise InvalidRecord("id_empty", name=name)
    return text


def _field_urls(value: Any, name: str) -> list[str]:
    """The URL strings a field holds, in order; blank and null entries are none."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if not isinstance(value, list):
        raise InvalidRecord("field_type", name=name, kind=type(value).__name__)
    urls = []
    for position, item in enumerate(value):
        url = _item_url(item, f"{name}[{position}]")
        if url is not None and url.strip():
            urls.append(url)
    return urls


def _item_url(item: Any, where: str) -> str | None:
    if item is None or isinstance(item, str):
        return item
    if isinstance(item, dict):
        present = False
        for key in URL_KEYS:
            if key not in item:
                continue
            present = True
            found = item[key]
            # {"url": null, "src": "..."}: the URL is under src; null means none.
            if found is None:
                continue
            if isinstance(found, str):
                return found
            raise InvalidRecord(
                "url_type", where=where, key=key, kind=type(found).__name__
            )
        if present:
            return None
        raise InvalidRecord("no_url_key", where=where, keys="/".join(URL_KEYS))
    raise InvalidRecord("item_type", where=where, kind=type(item).__name__)


def parse_product(record: Any, options: CatalogOptions) -> Product:
    """Build a Product from one record, or raise InvalidRecord saying why not."""
    if not isinstance(record, dict):
        raise InvalidRecord("not_object", kind=type(record).__name__)
    pid = product_id(record, options.id_field)
    images = []
    for category, name in options.fields.items():
        urls = _field_urls(record.get(name), name)
        for index, raw_url in enumerate(urls, start=1):
            url, problem = normalize_url(
                raw_url, options.default_scheme, original=options.original
            )
            images.append(ImageRef(category, index, url, problem))
    return Product(pid, record, tuple(images))


def read_catalog(
    path: Path, options: CatalogOptions, *, skip_invalid: bool = False
) -> Catalog:
    """Read and validate a whole catalog; raise CatalogError on the first problem."""
    # TODO(#6): the whole file and every product stay in memory; a 1M-product
    # JSON Lines catalog wants streaming (validation first, then a second pass).
    catalog = Catalog(products=[])
    seen: set[str] = set()
    for where, record in iter_records(path):
        if isinstance(record, UnreadableLine):
            if not skip_invalid:
                raise CatalogError(
                    "catalog_record",
                    hint="fix_line",
                    path=path,
                    where=where,
                    reason=record.reason,
                )
            catalog.invalid += 1
            catalog.invalid_example = catalog.invalid_example or Text(
                "at_where", where=where, reason=record.reason
            )
            continue
        try:
            product = parse_product(record, options)
        except InvalidRecord as exc:
            if not skip_invalid:
                raise CatalogError(
                    "catalog_record",
                    hint="fix_record",
                    path=path,
                    where=where,
                    reason=exc.text,
                ) from None
            catalog.invalid += 1
            catalog.invalid_example = catalog.invalid_example or Text(
                "at_where", where=where, reason=exc.text
            )
            continue
        if product.id in seen:
            catalog.duplicates += 1
            catalog.duplicate_example = catalog.duplicate_example or product.id
            continue
        seen.add(product.id)
        catalog.products.append(product)
    return catalog


@dataclass(frozen=True)
class UnreadableLine:
    """A JSON Lines line that is not JSON: a bad record, not a bad file."""

    reason: Text


def iter_records(path: Path) -> Iterator[tuple[Text, Any]]:
    """Yield (location, record) from a JSON array or, for .jsonl, JSON Lines.

    A JSON Lines line that cannot be decoded is yielded as an UnreadableLine, so
    the caller decides whether it stops the run; a broken JSON array always does.
    """
    text = _read_text(path)
    if path.suffix.lower() in _JSONL_SUFFIXES:
        yield from _iter_json_lines(path, text)
    else:
        yield from _iter_json_array(path, text)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CatalogError(
            "input_not_found", hint="pass_catalog", path=str(path)
        ) from None
    except IsADirectoryError:
        raise CatalogError(
            "input_is_dir", hint="pass_file_inside", path=str(path)
        ) from None
    except OSError as exc:
        raise CatalogError(
            "input_unreadable", path=str(path), detail=exc.strerror
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(
            "not_utf8", hint="save_utf8", path=path, offset=exc.start
        ) from None


def _iter_json_lines(path: Path, text: str) -> Iterator[tuple[Text, Any]]:
    if not text.strip():
        raise CatalogError("file_empty", hint="expect_json_lines", path=path)
    # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085, \x1c...,
    # which JSON strings may hold raw (json.dumps(ensure_ascii=False) writes them).
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            where = Text("at_line_column", line=lineno, column=exc.colno)
            yield where, UnreadableLine(Text("reason_invalid_json", detail=exc.msg))
            continue
        except (RecursionError, ValueError) as exc:
            yield Text("at_line", line=lineno), UnreadableLine(undecodable(exc))
            continue
        yield Text("at_line", line=lineno), record


_WS = re.compile(r"\s*")


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[Text, Any]]:
    """Decode the array one element at a time so each error has a line number."""
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if pos == len(text):
        raise CatalogError("file_empty", hint="expect_array", path=path)
    if text[pos] != "[":
        _raise_not_array(path, text, pos)
    pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    number, line, counted_to = 0, 1, 0
    if text.startswith("]", pos):
        _expect_end(path, text, pos + 1)
        return
    while True:
        number += 1
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            _raise_json(path, exc)
        except (RecursionError, ValueError) as exc:
            _raise_undecodable(path, text.count("\n", 0, pos) + 1, exc)
        # Count newlines incrementally: recounting from 0 is quadratic in big files.
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        yield Text("at_record", number=number, line=line), record
        pos = _WS.match(text, end).end()  # type: ignore[union-attr]
        if text.startswith(",", pos):
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            continue
        if text.startswith("]", pos):
            _expect_end(path, text, pos + 1)
            return
        _raise_json(
            path, json.JSONDecodeError("Expecting ',' delimiter or ']'", text, pos)
        )


def _raise_not_array(path: Path, text: str, pos: int) -> None:
    _reject_json_lines(path, text, pos)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        _raise_json(path, exc)
    except (RecursionError, ValueError) as exc:
        _raise_undecodable(path, text.count("\n", 0, pos) + 1, exc)
    kind = type(value).__name__
    raise CatalogError("top_level", hint="write_array", path=path, kind=kind)


def _reject_json_lines(path: Path, text: str, pos: int) -> None:
    """An object followed by another object: JSON Lines in a file not named so."""
    if text[pos] != "{":
        return
    try:
        _first, end = json.JSONDecoder().raw_decode(text, pos)
    except (RecursionError, ValueError):
        return
    nxt = _WS.match(text, end).end()  # type: ignore[union-attr]
    if "\n" in text[end:nxt] and text.startswith("{", nxt):
        line = text.count("\n", 0, nxt) + 1
        raise CatalogError(
            "looks_like_jsonl", hint="rename_jsonl", path=path, line=line
        )


def _expect_end(path: Path, text: str, pos: int) -> None:
    pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
    if pos != len(text):
        _raise_json(path, json.JSONDecodeError("Extra data", text, pos))


def _raise_json(path: Path, exc: json.JSONDecodeError) -> None:
    raise CatalogError(
        "invalid_json",
        hint="fix_json",
        path=path,
        line=exc.lineno,
        column=exc.colno,
        detail=exc.msg,
    ) from None


def undecodable(exc: BaseException) -> Text:
    """Why valid-looking JSON could not be decoded (json raises these, not
    JSONDecodeError, for hostile input)."""
    if isinstance(exc, RecursionError):
        return Text("reason_too_deep")
    return Text("reason_too_many_digits")


def _raise_undecodable(path: Path, line: int, exc: BaseException) -> None:
    raise CatalogError(
        "undecodable",
        hint="not_a_catalog",
        path=path,
        line=line,
        reason=undecodable(exc),
    ) from None
