"""Reading a product catalog (JSON array or JSON Lines) into products and image refs."""

from __future__ import annotations

import itertools
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .cdn import original_url
from .errors import CatalogError, UsageError
from .messages import Text
from .records import UnreadableLine, iter_records

ID_FALLBACKS = ("id", "item_id", "product_id", "num_iid", "goods_id")
DEFAULT_FIELDS = {"main": "main_images", "sku": "sku_images", "qc": "qc_images"}
URL_KEYS = ("url", "image", "src")
FETCHABLE_SCHEMES = ("http", "https")
_CATEGORY_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")
# http(s), an ASCII host name, maybe a port, then the path: urlsplit would accept
# it as it is, and a catalog holds millions of these (urlsplit and its hostname
# took half the time of reading one).
_PLAIN_URL = re.compile(r"https?://[a-z0-9.-]+(?::[0-9]*)?(?:[/?#]|\Z)", re.IGNORECASE)


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
    """What checking one input found: how many products, what was dropped, and the
    products themselves, read again from the file each time `products` is iterated.

    Only counts are kept between the passes, and a pass holds the set of ids it
    has seen and one product at a time, whatever the size of the file (#6).
    """

    path: Path
    options: CatalogOptions
    product_count: int = 0  # valid and deduplicated
    duplicates: int = 0
    duplicate_example: str = ""
    invalid: int = 0
    invalid_example: Text | None = None  # where the first invalid record is, and why
    changed: int = 0  # records a later pass skipped: the file changed after the check
    changed_example: Text | None = None
    kept: list[Product] | None = None  # an input that cannot be read twice (a pipe)

    @property
    def first_invalid(self) -> str:
        """The first invalid record, in English (logs, tests)."""
        return "" if self.invalid_example is None else str(self.invalid_example)

    @property
    def products(self) -> CatalogProducts:
        return CatalogProducts(self)


class CatalogProducts:
    """The valid, deduplicated products of a checked catalog, in input order.

    Every iteration is a new pass over the file, holding one product at a time.
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def __len__(self) -> int:
        return self._catalog.product_count

    def __iter__(self) -> Iterator[Product]:
        return _reread(self._catalog)

    def __getitem__(self, index: int) -> Product:
        """Reads the file up to `index`: for tests and small catalogs."""
        position = index + len(self) if index < 0 else index
        if position >= 0:
            for product in itertools.islice(self, position, None):
                return product
        raise IndexError(index)


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
    if _PLAIN_URL.match(url):
        return url, None
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
    """Check a whole catalog in one pass and count what it holds; raise CatalogError
    on the first problem. Its products are read again when iterated."""
    catalog = Catalog(path, options)
    kept: list[Product] | None = None if _rereadable(path) else []
    # The ids are needed for this pass only; `products` builds its own set.
    seen: set[str] = set()
    for where, record in iter_records(path):
        product = _parse(record, options)
        if isinstance(product, Text):
            if not skip_invalid:
                raise CatalogError(
                    "catalog_record",
                    hint="fix_line"
                    if isinstance(record, UnreadableLine)
                    else "fix_record",
                    path=path,
                    where=where,
                    reason=product,
                )
            catalog.invalid += 1
            catalog.invalid_example = catalog.invalid_example or Text(
                "at_where", where=where, reason=product
            )
        elif product.id in seen:
            catalog.duplicates += 1
            catalog.duplicate_example = catalog.duplicate_example or product.id
        else:
            seen.add(product.id)
            catalog.product_count += 1
            if kept is not None:
                kept.append(product)
    catalog.kept = kept
    return catalog


def _rereadable(path: Path) -> bool:
    """A regular file can be read twice; a pipe or FIFO cannot, so its products are
    kept in memory as they are read (as every catalog's were before #6)."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return True  # iter_records says why it cannot be read


def _parse(record: Any, options: CatalogOptions) -> Product | Text:
    """The record as a product, or why it cannot be one."""
    if isinstance(record, UnreadableLine):
        return record.reason
    try:
        return parse_product(record, options)
    except InvalidRecord as exc:
        return exc.text


def _reread(catalog: Catalog) -> Iterator[Product]:
    """The second pass: the products read_catalog counted, deduplicated again."""
    if catalog.kept is not None:
        yield from catalog.kept
        return
    catalog.changed, catalog.changed_example = 0, None
    seen: set[str] = set()
    invalid = 0
    # A record that the check accepted can fail here only if the file changed in
    # between (a scraper still appending, an editor saving over it). By now the
    # run holds the data directory and is queueing work: a crash would leave half
    # the catalog queued, so what no longer reads is skipped and counted, and the
    # runner warns about it.
    try:
        for where, record in iter_records(catalog.path):
            product = _parse(record, catalog.options)
            if isinstance(product, Text):
                invalid += 1
                if invalid > catalog.invalid:
                    _note_changed(
                        catalog, Text("at_where", where=where, reason=product)
                    )
            elif product.id not in seen:
                seen.add(product.id)
                yield product
    except CatalogError as exc:
        _note_changed(catalog, exc.text)


def _note_changed(catalog: Catalog, example: Text) -> None:
    catalog.changed += 1
    catalog.changed_example = catalog.changed_example or example
