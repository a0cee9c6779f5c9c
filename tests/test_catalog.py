"""Unit tests of imgfetch.catalog: reading catalogs into products and image refs."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgfetch import records as records_module
from imgfetch.catalog import (
    DEFAULT_FIELDS,
    CatalogOptions,
    InvalidRecord,
    normalize_url,
    parse_field_overrides,
    parse_product,
    read_catalog,
)
from imgfetch.errors import CatalogError, ExitCode, UsageError

OPTS = CatalogOptions()


def urls(record: dict[str, Any], options: CatalogOptions = OPTS) -> list[tuple]:
    """(category, index, url, problem) of every image of a record, in order."""
    product = parse_product(record, options)
    return [(i.category, i.index, i.url, i.problem) for i in product.images]


# --------------------------------------------------------------- normalize_url

NORMALIZE_OK = [
    # an ordinary https URL is kept as it is
    ("https://img.example.com/a.jpg", "https", "https://img.example.com/a.jpg"),
    # plain http is fetchable too
    ("http://img.example.com/a.jpg", "https", "http://img.example.com/a.jpg"),
    # surrounding blanks, tabs and newlines are trimmed
    (" \thttps://a.test/x.png\n ", "https", "https://a.test/x.png"),
    # protocol-relative URL gets the default scheme https
    ("//img.example.com/a.jpg", "https", "https://img.example.com/a.jpg"),
    # ... or --default-scheme http
    ("//img.example.com/a.jpg", "http", "http://img.example.com/a.jpg"),
    # protocol-relative after trimming
    ("  //cdn.test/b.gif ", "http", "http://cdn.test/b.gif"),
    # the scheme is case-insensitive
    ("HTTPS://IMG.example.com/A.JPG", "https", "HTTPS://IMG.example.com/A.JPG"),
    # ports, queries and fragments are kept verbatim
    ("http://127.0.0.1:8080/i.jpg?x=1&y=2#f", "https", None),
    # IPv6 literal hosts are fine
    ("http://[::1]:8000/a.jpg", "https", None),
    # non-ASCII paths are left for the HTTP client to quote
    ("https://例子.测试/图片.jpg", "https", None),
]


@pytest.mark.parametrize(("raw", "scheme", "expected"), NORMALIZE_OK)
def test_normalize_url_accepts(raw: str, scheme: str, expected: str | None) -> None:
    url, problem = normalize_url(raw, scheme)
    assert problem is None
    assert url == (expected if expected is not None else raw.strip())


NORMALIZE_BAD = [
    # local files must never be read
    ("file:///etc/passwd", "'file'"),
    # inline data is not downloaded
    ("data:image/png;base64,iVBORw0KGgo=", "'data'"),
    # script URLs are not URLs to fetch
    ("javascript:alert(1)", "'javascript'"),
    # other network schemes are not supported either
    ("ftp://example.com/a.jpg", "'ftp'"),
    # a relative path has no scheme at all
    ("images/a.jpg", "(none)"),
    # a bare host without // is not protocol-relative
    ("img.example.com/a.jpg", "(none)"),
    # http without a host
    ("http:///a.jpg", "no host"),
    # scheme but no // -> no host
    ("https:img.example.com/a.jpg", "no host"),
    # only the two slashes
    ("//", "no host"),
    # unbalanced IPv6 bracket: urlsplit raises, the image fails instead
    ("http://[::1/a.jpg", "malformed"),
]


@pytest.mark.parametrize(("raw", "reason"), NORMALIZE_BAD)
def test_normalize_url_rejects(raw: str, reason: str) -> None:
    url, problem = normalize_url(raw, "https")
    assert problem is not None and reason in problem
    # the URL is still reported (in failed_images.json), completed if it was //...
    assert url.endswith(raw.strip())


# ------------------------------------------------------- parse_field_overrides

OVERRIDES_OK = [
    # no --field: the spec's three categories
    ([], DEFAULT_FIELDS),
    # an existing category pointed at another field
    (["qc=qc_photos"], {**DEFAULT_FIELDS, "qc": "qc_photos"}),
    # a new category is added after the defaults
    (["detail=detail_images"], {**DEFAULT_FIELDS, "detail": "detail_images"}),
    # blanks around both halves are ignored
    ([" main = pics "], {**DEFAULT_FIELDS, "main": "pics"}),
    # repeated category: the last one wins
    (["main=a", "main=b"], {**DEFAULT_FIELDS, "main": "b"}),
    # field names are taken verbatim (dots, capitals, unicode)
    (
        ["sku=SKU.Images", "x1=图片"],
        {**DEFAULT_FIELDS, "sku": "SKU.Images", "x1": "图片"},
    ),
    # the value may itself contain '='
    (["main=a=b"], {**DEFAULT_FIELDS, "main": "a=b"}),
    # digits and underscores in a category
    (["colour_2=c2"], {**DEFAULT_FIELDS, "colour_2": "c2"}),
]


@pytest.mark.parametrize(("specs", "expected"), OVERRIDES_OK)
def test_parse_field_overrides(specs: list[str], expected: dict[str, str]) -> None:
    fields = parse_field_overrides(specs)
    assert fields == expected
    assert list(fields) == list(expected)  # order decides the category order
    assert DEFAULT_FIELDS == {
        "main": "main_images",
        "sku": "sku_images",
        "qc": "qc_images",
    }


OVERRIDES_BAD = [
    # no '=' at all
    "qc",
    # empty field name
    "qc=",
    # blank field name
    "qc=   ",
    # empty category
    "=qc_photos",
    # capitals: case-insensitive file systems would merge QC_1.jpg and qc_1.jpg
    "QC=qc_photos",
    # a separator would put files in another folder
    "a/b=x",
    # a traversal would put files outside the product folder
    "../x=y",
    # a Windows separator
    "a\\b=x",
    # cannot start with an underscore
    "_x=y",
    # non-ASCII category
    "图=x",
    # a dot in the category would look like a file extension
    "main.jpg=x",
    # longer than 32 characters
    "a" * 33 + "=x",
    # an embedded newline
    "q\nc=x",
    # the empty string
    "",
]


@pytest.mark.parametrize("spec", OVERRIDES_BAD)
def test_parse_field_overrides_rejects(spec: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_field_overrides(["main=pics", spec])
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert "--field" in str(info.value)
    assert info.value.hint  # says what to write instead


# ----------------------------------------------------------- parse_product ids

IDS_OK: list[tuple[dict[str, Any], str | None, str]] = [
    # the default id field
    ({"id": "p1"}, None, "p1"),
    # numbers become strings
    ({"id": 991466016025}, None, "991466016025"),
    # integral floats lose the .0 (a JSON exporter wrote 12.0 for 12)
    ({"id": 12.0}, None, "12"),
    # integers beyond 64 bits survive exactly
    ({"id": 123456789012345678901234567890}, None, "123456789012345678901234567890"),
    # zero is an id, not a missing one
    ({"id": 0}, None, "0"),
    # negative numbers are ids too
    ({"id": -5}, None, "-5"),
    # fallback 1: item_id
    ({"item_id": "i9"}, None, "i9"),
    # fallback 2: product_id
    ({"product_id": 7}, None, "7"),
    # fallback 3: num_iid (Taobao)
    ({"num_iid": 5551212}, None, "5551212"),
    # fallback 4: goods_id
    ({"goods_id": "g-1"}, None, "g-1"),
    # id wins over every fallback
    ({"goods_id": "g", "item_id": "i", "id": "x"}, None, "x"),
    # the fallbacks are tried in their documented order
    ({"goods_id": "g", "num_iid": "n", "product_id": "p"}, None, "p"),
    # a null id counts as absent: the next field present is used
    ({"id": None, "item_id": "i2"}, None, "i2"),
    # --id-field takes any field
    ({"id": "ignored", "sku_code": "S-1"}, "sku_code", "S-1"),
    # --id-field with a number
    ({"code": 42}, "code", "42"),
    # ids are taken verbatim: no trimming, no case folding
    ({"id": " Ab "}, None, " Ab "),
    # hostile ids are fine here; paths.product_dir_name makes them safe
    ({"id": "../../etc"}, None, "../../etc"),
]


@pytest.mark.parametrize(("record", "id_field", "expected"), IDS_OK)
def test_product_id(
    record: dict[str, Any], id_field: str | None, expected: str
) -> None:
    product = parse_product(record, CatalogOptions(id_field=id_field))
    assert product.id == expected
    assert product.raw is record  # the dict exactly as read, for pending_tasks.json


IDS_BAD: list[tuple[Any, str | None, str]] = [
    # no id field at all
    ({"title": "x"}, None, "no product id"),
    # every id field null
    ({"id": None, "item_id": None}, None, "no product id"),
    # true is not the id "True"
    ({"id": True}, None, "bool"),
    # false neither (bool is an int subclass in Python)
    ({"id": False}, None, "bool"),
    # a list is not an id
    ({"id": [1, 2]}, None, "list"),
    # an object is not an id
    ({"id": {"v": 1}}, None, "dict"),
    # empty string
    ({"id": ""}, None, "empty"),
    # blanks only
    ({"id": "  \t"}, None, "empty"),
    # a fractional number is not an id
    ({"id": 1.5}, None, "1.5"),
    # NaN (Python's json accepts it)
    ({"id": float("nan")}, None, "nan"),
    # infinity
    ({"id": float("inf")}, None, "inf"),
    # wrong type in a fallback field
    ({"item_id": ["x"]}, None, "item_id"),
    # --id-field given: no silent fallback to "id"
    ({"id": "x"}, "sku_code", "sku_code"),
    # a record that is not an object
    (["id", 1], None, "not an object"),
    # a bare string record
    ("p1", None, "not an object"),
    # a null record
    (None, None, "not an object"),
]


@pytest.mark.parametrize(("record", "id_field", "fragment"), IDS_BAD)
def test_product_id_rejects(record: Any, id_field: str | None, fragment: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_product(record, CatalogOptions(id_field=id_field))
    assert fragment in str(info.value)


# -------------------------------------------------------- parse_product images

U = "https://img.test/"
IMAGES_OK: list[tuple[dict[str, Any], list[tuple]]] = [
    # a list of URL strings, n counts from 1 per category
    (
        {"main_images": [U + "a", U + "b"], "sku_images": [U + "c"]},
        [
            ("main", 1, U + "a", None),
            ("main", 2, U + "b", None),
            ("sku", 1, U + "c", None),
        ],
    ),
    # objects carrying the URL under url, image or src
    (
        {"sku_images": [{"url": U + "1"}, {"image": U + "2"}, {"src": U + "3"}]},
        [
            ("sku", 1, U + "1", None),
            ("sku", 2, U + "2", None),
            ("sku", 3, U + "3", None),
        ],
    ),
    # url is preferred over image and src when several are present
    ({"main_images": [{"src": U + "s", "url": U + "u"}]}, [("main", 1, U + "u", None)]),
    # a null url falls through to the next key that holds one
    ({"main_images": [{"url": None, "src": U + "s"}]}, [("main", 1, U + "s", None)]),
    # an object whose URL keys are all null is no image
    ({"main_images": [{"url": None}, U + "x"]}, [("main", 1, U + "x", None)]),
    # extra keys in an object are ignored
    ({"qc_images": [{"url": U + "q", "w": 800}]}, [("qc", 1, U + "q", None)]),
    # one URL string instead of a list
    ({"qc_images": U + "only"}, [("qc", 1, U + "only", None)]),
    # null, missing and empty mean no images
    ({"main_images": None, "sku_images": []}, []),
    # a blank string means no image
    ({"main_images": "   "}, []),
    # null and blank entries are skipped and do not use up a number
    (
        {"main_images": [None, "", " ", U + "a", None, U + "b"]},
        [("main", 1, U + "a", None), ("main", 2, U + "b", None)],
    ),
    # URLs are trimmed
    ({"main_images": ["  " + U + "t \n"]}, [("main", 1, U + "t", None)]),
    # protocol-relative URLs get the default scheme
    (
        {"main_images": ["//img.test/p.jpg"]},
        [("main", 1, "https://img.test/p.jpg", None)],
    ),
    # categories come in the order of the options, not of the record's keys
    (
        {"qc_images": [U + "q"], "main_images": [U + "m"]},
        [("main", 1, U + "m", None), ("qc", 1, U + "q", None)],
    ),
    # the same URL twice is two images
    (
        {"main_images": [U + "d", U + "d"]},
        [("main", 1, U + "d", None), ("main", 2, U + "d", None)],
    ),
]


@pytest.mark.parametrize(("record", "expected"), IMAGES_OK)
def test_images(record: dict[str, Any], expected: list[tuple]) -> None:
    assert urls({"id": "p", **record}) == expected


def test_unfetchable_urls_fail_only_that_image() -> None:
    record = {
        "id": "p",
        "main_images": [U + "ok", "file:///etc/passwd", "data:,x", "javascript:1"],
    }
    images = urls(record)
    # every image keeps its slot; only the bad ones carry a problem
    assert [i[1] for i in images] == [1, 2, 3, 4]
    assert images[0][3] is None
    assert all(i[3] and "scheme" in i[3] for i in images[1:])


def test_field_overrides_and_added_category() -> None:
    options = CatalogOptions(
        fields=parse_field_overrides(["main=pics", "detail=detail_pics"]),
        default_scheme="http",
    )
    record = {
        "id": 1,
        "main_images": [U + "ignored"],  # no longer the main field
        "pics": [U + "m"],
        "detail_pics": ["//d.test/1.jpg", {"src": U + "d2"}],
    }
    assert urls(record, options) == [
        ("main", 1, U + "m", None),
        ("detail", 1, "http://d.test/1.jpg", None),
        ("detail", 2, U + "d2", None),
    ]
    assert options.categories == ("main", "sku", "qc", "detail")


IMAGES_BAD: list[tuple[dict[str, Any], list[str]]] = [
    # a number instead of a list
    ({"main_images": 5}, ["main_images", "int"]),
    # an object instead of a list
    ({"sku_images": {"a": 1}}, ["sku_images", "dict"]),
    # true instead of a list
    ({"qc_images": True}, ["qc_images", "bool"]),
    # a list element that is a number
    ({"main_images": [U + "a", 7]}, ["main_images[1]", "int"]),
    # a list element that is a list
    ({"main_images": [[U + "a"]]}, ["main_images[0]", "list"]),
    # a list element that is a bool
    ({"qc_images": [False]}, ["qc_images[0]", "bool"]),
    # an object without url, image or src
    ({"sku_images": [{"href": U + "a"}]}, ["sku_images[0]", "url"]),
    # an object whose url is not a string
    ({"sku_images": [{"url": 12}]}, ["sku_images[0].url", "int"]),
    # an object whose url is a nested object
    ({"sku_images": [{"image": {"url": U}}]}, ["sku_images[0].image", "dict"]),
]


@pytest.mark.parametrize(("record", "fragments"), IMAGES_BAD)
def test_images_reject(record: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_product({"id": "p", **record}, OPTS)
    for fragment in fragments:
        assert fragment in str(info.value)


# ---------------------------------------------------------------- read_catalog


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


READ_OK: list[tuple[str, str | bytes, list[str]]] = [
    # the spec's form: a JSON array
    ("c.json", '[{"id": "a"}, {"id": "b"}]', ["a", "b"]),
    # pretty-printed with blank lines and CRLF line ends
    ("c.json", '[\r\n  {"id": "a"},\r\n\r\n  {"id": 2}\r\n]\r\n', ["a", "2"]),
    # an empty array is an empty catalog, not an error
    ("c.json", " [ ] \n", []),
    # a UTF-8 byte order mark is accepted
    ("c.json", b'\xef\xbb\xbf[{"id": "bom"}]', ["bom"]),
    # JSON Lines with blank lines
    ("c.jsonl", '{"id": "a"}\n\n{"id": "b"}\n', ["a", "b"]),
    # JSON Lines with CRLF and no final newline
    ("c.jsonl", '{"id": "a"}\r\n{"id": "b"}', ["a", "b"]),
    # .ndjson is JSON Lines too, and the suffix is case-insensitive
    ("c.NDJSON", '{"id": "a"}\n', ["a"]),
    ("c.JSONL", '{"id": "a"}\n', ["a"]),
    # a raw U+2028 inside a JSON string is not a line break (json.dumps writes it)
    (
        "c.jsonl",
        '{"id": "a\u2028b"}\n{"id": "c\u0085d\u2029e"}\n',
        ["a\u2028b", "c\u0085d\u2029e"],
    ),
    # non-ASCII ids and field values
    ("c.json", '[{"id": "商品一", "title": "连衣裙"}]', ["商品一"]),
]


@pytest.mark.parametrize(("name", "content", "ids"), READ_OK)
def test_read_catalog(
    tmp_path: Path, name: str, content: str | bytes, ids: list[str]
) -> None:
    catalog = read_catalog(write(tmp_path, name, content), OPTS)
    assert [p.id for p in catalog.products] == ids
    assert catalog.duplicates == catalog.invalid == 0


def test_read_catalog_keeps_raw_records_exactly(tmp_path: Path) -> None:
    records = [
        {
            "id": 1,
            "title": "x",
            "nested": {"a": [1, 2.5, None, True]},
            "main_images": [],
        },
        {"item_id": "i", "价格": "9.9"},
    ]
    catalog = read_catalog(write(tmp_path, "c.json", json.dumps(records)), OPTS)
    assert [p.raw for p in catalog.products] == records


def test_duplicates_first_wins(tmp_path: Path) -> None:
    records = [
        {"id": "a", "main_images": [U + "first"]},
        {"id": "b"},
        {"id": "a", "main_images": [U + "second"]},
        {"id": "b"},
        {"id": "a"},
        {"id": 5},
        {"id": "5"},  # the number 5 and the string "5" are the same id
    ]
    catalog = read_catalog(write(tmp_path, "c.json", json.dumps(records)), OPTS)
    assert [p.id for p in catalog.products] == ["a", "b", "5"]
    assert catalog.products[0].images[0].url == U + "first"
    assert catalog.duplicates == 4
    assert catalog.duplicate_example == "a"


def test_skip_invalid_counts_bad_records(tmp_path: Path) -> None:
    records = [{"id": "a"}, {"title": "no id"}, {"id": True}, {"id": "b"}, 3]
    path = write(tmp_path, "c.json", json.dumps(records, indent=1))
    with pytest.raises(CatalogError):
        read_catalog(path, OPTS)
    catalog = read_catalog(path, OPTS, skip_invalid=True)
    assert [p.id for p in catalog.products] == ["a", "b"]
    assert catalog.invalid == 3
    assert catalog.first_invalid.startswith("record 2 (line 5)")


def test_skip_invalid_skips_broken_json_lines(tmp_path: Path) -> None:
    # a scraper killed mid-write leaves a truncated last line in a JSON Lines file
    path = write(
        tmp_path, "c.jsonl", '{"id": "a"}\n{"id": \n{"id": "b"}\n{"id": "c", "ma'
    )
    with pytest.raises(CatalogError) as info:
        read_catalog(path, OPTS)
    assert "line 2" in str(info.value)
    catalog = read_catalog(path, OPTS, skip_invalid=True)
    assert [p.id for p in catalog.products] == ["a", "b"]
    assert catalog.invalid == 2
    assert catalog.first_invalid.startswith("line 2")


def test_skip_invalid_cannot_skip_a_broken_array(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", '[{"id": "a"}, {"id": ')
    with pytest.raises(CatalogError):
        read_catalog(path, OPTS, skip_invalid=True)


READ_BAD: list[tuple[str, str | bytes, list[str]]] = [
    # a record without an id: its number and line
    (
        "c.json",
        '[\n{"id": "a"},\n\n{"title": "t"}\n]',
        ["record 2 (line 4)", "no product id"],
    ),
    # a bad id type in JSON Lines: the line
    ("c.jsonl", '{"id": "a"}\n\n{"id": [1]}\n', ["line 3", "list"]),
    # an image field of the wrong type
    ("c.json", '[{"id": "a", "main_images": 1}]', ["record 1 (line 1)", "main_images"]),
    # a list element of the wrong type
    (
        "c.json",
        '[{"id": "a", "sku_images": [{"url": 3}]}]',
        ["record 1", "sku_images[0].url"],
    ),
    # a record that is not an object
    ("c.json", '[{"id": "a"}, "b"]', ["record 2", "str"]),
    # truncated file: the line and column where it ends
    (
        "c.json",
        '[\n{"id": "a"},\n{"id": "b", "main_images": ["h',
        ["line 3", "invalid JSON"],
    ),
    # missing comma between records
    ("c.json", '[\n{"id": "a"}\n{"id": "b"}\n]', ["line 3", "invalid JSON"]),
    # trailing comma
    ("c.json", '[{"id": "a"},]', ["line 1", "invalid JSON"]),
    # garbage after the array
    ("c.json", '[{"id": "a"}]\n]', ["line 2", "invalid JSON"]),
    # broken JSON inside a record
    ("c.json", '[{"id": "a",, }]', ["line 1", "invalid JSON"]),
    # top level object
    ("c.json", '{"id": "a"}', ["top level is dict", "not a list"]),
    # top level string
    ("c.json", '"products"', ["top level is str"]),
    # top level number
    ("c.json", "42", ["top level is int"]),
    # top level null
    ("c.json", "null", ["top level is NoneType"]),
    # empty file
    ("c.json", "", ["empty"]),
    # blanks only
    ("c.json", " \n\t\n", ["empty"]),
    # an empty JSON Lines file
    ("c.jsonl", "\n\n", ["empty"]),
    # JSON Lines content in a .json file: said so
    ("c.json", '{"id": "a"}\n{"id": "b"}\n', ["line 2", "JSON Lines", ".jsonl"]),
    # a broken line in JSON Lines
    ("c.jsonl", '{"id": "a"}\n{"id": }\n', ["line 2", "column 8", "invalid JSON"]),
    # a JSON array in a .jsonl file (pretty-printed)
    ("c.jsonl", '[\n{"id": "a"}\n]\n', ["line 1", "invalid JSON"]),
    # not UTF-8: the byte offset
    ("c.json", b'[{"id": "caf\xe9"}]', ["byte 12", "UTF-8"]),
    # UTF-16 is not UTF-8 either
    ("c.json", '[{"id": "a"}]'.encode("utf-16"), ["byte 0", "UTF-8"]),
    # an integer too long for Python to convert (hostile input, not a crash)
    ("c.json", '[{"id": ' + "9" * 5000 + "}]", ["line 1", "digits"]),
    # nesting deeper than the JSON decoder's recursion limit
    ("c.json", "[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    # the same inside a record
    (
        "c.json",
        '[{"id": "a"},\n{"x": ' + "[" * 100_000 + "]" * 100_000 + "}]",
        ["line 2", "nested"],
    ),
    # the same in JSON Lines
    (
        "c.jsonl",
        '{"id": "a"}\n{"x": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
        ["line 2", "nested"],
    ),
]


@pytest.mark.parametrize(("name", "content", "fragments"), READ_BAD)
def test_read_catalog_rejects(
    tmp_path: Path, name: str, content: str | bytes, fragments: list[str]
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(CatalogError) as info:
        read_catalog(path, OPTS)
    error = info.value
    text = str(error)
    assert error.exit_code == ExitCode.BAD_INPUT
    assert str(path) in text  # names the file
    assert "\n" not in error.message  # one line
    assert error.hint  # says what to do
    for fragment in fragments:
        assert fragment in text


def test_read_catalog_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        read_catalog(tmp_path / "nope.json", OPTS)
    assert "nope.json" in str(info.value) and "not found" in str(info.value)


def test_read_catalog_directory(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        read_catalog(tmp_path, OPTS)
    assert str(tmp_path) in str(info.value) and "directory" in str(info.value)


def test_read_catalog_line_numbers_of_a_big_file(tmp_path: Path) -> None:
    # Line numbers are counted incrementally; check they stay right far into a file.
    records = [{"id": f"p{i}", "main_images": [U + str(i)]} for i in range(2000)]
    records[1500] = {"title": "no id"}
    path = write(tmp_path, "c.json", json.dumps(records, indent=2))
    lines = path.read_text().split("\n")
    expected_line = next(n for n, line in enumerate(lines, 1) if '"title"' in line) - 1
    with pytest.raises(CatalogError) as info:
        read_catalog(path, OPTS)
    assert f"record 1501 (line {expected_line})" in str(info.value)


# ------------------------------------------------------------------- streaming

MiB = 1024 * 1024
BOM = b"\xef\xbb\xbf"


@pytest.fixture
def traced() -> Iterator[None]:
    """Trace Python's allocations for the test: tracemalloc's peak then counts
    only what the test itself allocated."""
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def traced_peak() -> float:
    return tracemalloc.get_traced_memory()[1] / MiB


def ids_or_error(path: Path) -> list[str] | str:
    """What read_catalog makes of a file: the product ids, or the error."""
    try:
        return [p.id for p in read_catalog(path, OPTS).products]
    except CatalogError as exc:
        return str(exc)


@pytest.mark.parametrize(
    ("name", "content"),
    [(name, content) for name, content, _ in READ_OK + READ_BAD],
    ids=[f"ok{n}" for n in range(len(READ_OK))]
    + [f"bad{n}" for n in range(len(READ_BAD))],
)
def test_chunk_boundaries_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, content: str | bytes
) -> None:
    # Three bytes a read: every token, number, escape, character and BOM of the
    # tables above is cut somewhere, and every result must stay the same.
    path = write(tmp_path, name, content)
    expected = ids_or_error(path)
    monkeypatch.setattr(records_module, "_CHUNK", 3)
    assert ids_or_error(path) == expected


def write_huge_line(path: Path, size: int) -> None:
    """JSON Lines: a good line, a line of `size` bytes, a good line; written a
    chunk at a time (the test must not hold the file either)."""
    chunk = b"x" * MiB
    with path.open("wb") as out:
        out.write(b'{"id": "before"}\n{"id": "huge", "pad": "')
        for _ in range(size // MiB):
            out.write(chunk)
        out.write(b'"}\n{"id": "after"}\n')


@pytest.mark.parametrize("size_mib", [100, 200])
def test_a_huge_json_line_is_refused_without_holding_it(
    tmp_path: Path, traced: None, size_mib: int
) -> None:
    path = tmp_path / "c.jsonl"
    write_huge_line(path, size_mib * MiB)
    try:
        tracemalloc.reset_peak()
        with pytest.raises(CatalogError) as info:
            read_catalog(path, OPTS)
        catalog = read_catalog(path, OPTS, skip_invalid=True)
        ids = [p.id for p in catalog.products]
        peak = traced_peak()
    finally:
        path.unlink()  # hundreds of MB: not left for pytest's kept temp folders
    assert "c.jsonl: line 2: record too long (over 64 MiB)" in str(info.value)
    assert "--skip-invalid" in str(info.value)
    # --skip-invalid skips that line alone; the next one is still line 3
    assert ids == ["before", "after"]
    assert catalog.invalid == 1
    assert catalog.first_invalid == "line 2: record too long (over 64 MiB)"
    # At most the 64 MiB limit of the line is ever held, never the line whole.
    assert peak < 100, f"peak {peak:.0f} MiB for a {size_mib} MiB line"


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 MiB record limit, read 64 KiB at a time: the limit's edges, cheaply."""
    monkeypatch.setattr(records_module, "MAX_RECORD_BYTES", MiB)
    monkeypatch.setattr(records_module, "_CHUNK", 64 * 1024)


def padded(pid: str, size: int) -> str:
    """A record of exactly `size` characters of JSON."""
    shell = json.dumps({"id": pid, "pad": ""})
    return json.dumps({"id": pid, "pad": "x" * (size - len(shell))})


@pytest.mark.parametrize("name", ["c.json", "c.jsonl"])
def test_a_record_at_the_limit_is_read(
    tmp_path: Path, small_limit: None, name: str
) -> None:
    records = [padded("a", MiB), padded("b", 10), padded("c", MiB)]
    text = "\n".join(records) if name == "c.jsonl" else f"[{','.join(records)}]"
    catalog = read_catalog(write(tmp_path, name, text), OPTS)
    assert [p.id for p in catalog.products] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        # JSON Lines: a bad line, which --skip-invalid may skip
        ("c.jsonl", "line 3: record too long (over 1 MiB); fix or remove that line"),
        # an array cannot be read past it: the file is refused
        ("c.json", "line 3: record too long (over 1 MiB); fix the file"),
    ],
)
def test_a_record_over_the_limit_is_refused(
    tmp_path: Path, small_limit: None, name: str, fragment: str
) -> None:
    records = [padded("a", 10), padded("b", MiB), padded("c", MiB + 1)]
    text = "\n".join(records) if name == "c.jsonl" else "[" + ",\n".join(records)
    with pytest.raises(CatalogError) as info:
        read_catalog(write(tmp_path, name, text + "\n]"), OPTS)
    assert fragment in str(info.value)


@pytest.mark.parametrize("name", ["c.json", "c.jsonl"])
def test_a_huge_record_costs_only_the_limit(
    tmp_path: Path, small_limit: None, traced: None, name: str
) -> None:
    # 50 MiB in one record, against a limit of 1 MiB: what is held stays a few
    # times the limit, whatever the size of the record.
    path = tmp_path / name
    with path.open("wb") as out:
        out.write(b'[{"id": "a"},\n{"id": "b", "x": "' if name == "c.json" else b"")
        for _ in range(50):
            out.write(b"x" * MiB)
    tracemalloc.reset_peak()
    with pytest.raises(CatalogError) as info:
        read_catalog(path, OPTS)
    peak = traced_peak()
    assert f"line {2 if name == 'c.json' else 1}: record too long" in str(info.value)
    assert peak < 8, f"peak {peak:.1f} MiB"


def test_a_huge_top_level_object_is_named_as_such(
    tmp_path: Path, small_limit: None
) -> None:
    # {"products": [...]} of any size: the message says what the top level is
    path = write(tmp_path, "c.json", json.dumps({"products": [padded("a", MiB)]}))
    with pytest.raises(CatalogError) as info:
        read_catalog(path, OPTS)
    assert "the top level is dict, not a list of products" in str(info.value)


@pytest.mark.parametrize("chunk", [1024 * 1024, 4093])
@pytest.mark.parametrize(
    ("broken", "fragment"),
    [
        # a syntax error inside a record: json's own line and column
        ('"id": "p15000",', '"id": "p15000",,'),
        # a missing comma between two records
        ('  },\n  {\n    "id": "p15001"', '  }\n  {\n    "id": "p15001"'),
        # a truncated file
        ('"id": "p15000"', '"id": "p15000'),
    ],
    ids=["syntax", "comma", "truncated"],
)
def test_an_error_deep_in_a_big_array_has_its_exact_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    broken: str,
    fragment: str,
) -> None:
    monkeypatch.setattr(records_module, "_CHUNK", chunk)
    records = [
        {"id": f"p{i}", "title": "连衣裙\u2028✓", "main_images": [f"{U}{i}.jpg"]}
        for i in range(20_000)
    ]
    text = json.dumps(records, ensure_ascii=False, indent=2)
    assert len(text.encode()) > 2 * MiB  # several reads even at the real size
    cut = text.index(broken)
    text = (
        text[:cut]
        + fragment
        + ("" if broken == '"id": "p15000"' else text[cut + len(broken) :])
    )
    with pytest.raises(json.JSONDecodeError) as reference:
        json.loads(text)
    with pytest.raises(CatalogError) as info:
        read_catalog(write(tmp_path, "c.json", text), OPTS)
    where = f"line {reference.value.lineno}, column {reference.value.colno}"
    # (json.loads says "Expecting ',' delimiter"; the reader adds "or ']'")
    assert f"{where}: invalid JSON ({reference.value.msg}" in str(info.value)
    assert reference.value.lineno > 100_000


def test_a_bad_record_deep_in_a_big_array_has_its_number_and_line(
    tmp_path: Path,
) -> None:
    records: list[Any] = [{"id": f"p{i}", "t": "✓" * 50} for i in range(40_000)]
    records[31_234] = {"title": "no id"}
    text = json.dumps(records, ensure_ascii=False, indent=1)
    line = text[: text.index('"title"')].count("\n")  # the line of its "{"
    with pytest.raises(CatalogError) as info:
        read_catalog(write(tmp_path, "c.json", text), OPTS)
    assert f"record 31235 (line {line}): has no product id" in str(info.value)


BOM_CASES: list[tuple[str, bytes, list[str]]] = [
    # JSON Lines with a BOM
    ("c.jsonl", BOM + b'{"id": "a"}\n{"id": "b"}\n', ["a", "b"]),
    # an array with a BOM, spread over lines
    ("c.json", BOM + b'[\n{"id": "a"},\n{"id": "b"}\n]', ["a", "b"]),
    # only a BOM: an empty file
    ("c.json", BOM, ["empty"]),
    ("c.jsonl", BOM + b"\n", ["empty"]),
    # the BOM is not a column: errors point where an editor shows them
    ("c.jsonl", BOM + b'{"id": }\n', ["line 1, column 8", "invalid JSON"]),
    ("c.json", BOM + b'[{"id": }]', ["line 1, column 9", "invalid JSON"]),
    # bytes are counted in the file, BOM included
    ("c.json", BOM + b'[{"id": "caf\xe9"}]', ["byte 15", "UTF-8"]),
    ("c.jsonl", BOM + b'{"id": "caf\xe9"}', ["byte 14", "UTF-8"]),
    # a second BOM is not skipped
    ("c.json", BOM + BOM + b"[]", ["line 1, column 1", "invalid JSON"]),
]


@pytest.mark.parametrize(("name", "content", "expected"), BOM_CASES)
def test_byte_order_mark(
    tmp_path: Path, name: str, content: bytes, expected: list[str]
) -> None:
    outcome = ids_or_error(write(tmp_path, name, content))
    if isinstance(outcome, list):
        assert outcome == expected
    else:
        for fragment in expected:
            assert fragment in outcome


@functools.cache
def multibyte_catalog(name: str, count: int) -> bytes:
    records = [{"id": f"p{i}", "title": "夏季新款连衣裙 ✓ 😀"} for i in range(count)]
    if name.endswith(".jsonl"):
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=1)
    return text.encode()


@pytest.mark.parametrize("name", ["c.json", "c.jsonl"])
@pytest.mark.parametrize("bom", [b"", BOM], ids=["plain", "bom"])
@pytest.mark.parametrize("bad", [b"\xff", b"\xe5\xa4", b"\xf0\x9f\x98"])
def test_invalid_utf8_deep_in_a_big_file_is_found_at_its_byte(
    tmp_path: Path, name: str, bom: bytes, bad: bytes
) -> None:
    data = bom + multibyte_catalog(name, 60_000)
    assert len(data) > 3 * MiB
    # a stray byte, or a character cut short, in record p45678's id
    offset = data.index(b'"p45678"') + 1
    data = data[:offset] + bad + data[offset:]
    with pytest.raises(CatalogError) as info:
        read_catalog(write(tmp_path, name, data), OPTS)
    assert f"byte {offset} is not UTF-8" in str(info.value)


@pytest.mark.parametrize("name", ["c.json", "c.jsonl"])
@pytest.mark.parametrize("shift", range(4))
def test_a_character_cut_by_a_read_is_decoded_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, shift: int
) -> None:
    # 4-byte characters at every position relative to the end of a read
    monkeypatch.setattr(records_module, "_CHUNK", 4096 + shift)
    data = multibyte_catalog(name, 2000)
    catalog = read_catalog(write(tmp_path, name, data), OPTS)
    assert [p.raw["title"] for p in catalog.products] == ["夏季新款连衣裙 ✓ 😀"] * 2000


@pytest.mark.parametrize("name", ["c.json", "c.jsonl"])
def test_a_character_cut_by_the_end_of_the_file(tmp_path: Path, name: str) -> None:
    data = b'[{"id": "\xe5\xa4' if name == "c.json" else b'{"id": "\xe5\xa4'
    with pytest.raises(CatalogError) as info:
        read_catalog(write(tmp_path, name, data), OPTS)
    offset = data.index(b"\xe5")
    assert f"byte {offset} is not UTF-8" in str(info.value)


# Run in a fresh Python: how much its peak resident memory grows while it checks
# a catalog and reads every product again (tracemalloc slows this 8-fold).
MEMORY_CHILD = """
import resource, sys
from pathlib import Path
from imgfetch.catalog import CatalogOptions, read_catalog
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
catalog = read_catalog(Path(sys.argv[1]), CatalogOptions())
iterated = sum(1 for _ in catalog.products)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(catalog.product_count, iterated, grown / 1024)
"""


def test_reading_a_big_catalog_keeps_memory_flat(tmp_path: Path) -> None:
    count = 200_000
    path = tmp_path / "c.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            record = {"id": f"p{i:06d}", "title": "连衣裙 " * 20, "main_images": [U]}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    products, iterated, grown = result.stdout.split()
    assert int(products) == int(iterated) == count
    # Kept whole (before #6) these products grew it by about 340 MiB; now only
    # the ids of one pass and one product at a time are held.
    assert float(grown) < 150, f"grew by {float(grown):.0f} MiB"


def test_products_are_read_again_in_input_order(tmp_path: Path) -> None:
    records = [{"id": "b"}, {"id": "a"}, {"id": "b"}, {"id": "c"}, {"id": "a"}]
    path = write(tmp_path, "c.jsonl", "\n".join(json.dumps(r) for r in records))
    catalog = read_catalog(path, OPTS)
    assert len(catalog.products) == catalog.product_count == 3
    assert [p.id for p in catalog.products] == ["b", "a", "c"]
    assert [p.id for p in catalog.products] == ["b", "a", "c"]  # and again
    assert catalog.products[-1].id == "c"
    with pytest.raises(IndexError):
        catalog.products[3]


CHANGED: list[tuple[str, str, str, list[str], str]] = [
    # a record became invalid: skipped, the others still come
    (
        "c.jsonl",
        '{"id": "a"}\n{"id": "b"}\n{"id": "c"}\n',
        '{"id": "a"}\n{"id": true}\n{"id": "c"}\n',
        ["a", "c"],
        "line 2: field 'id' is bool",
    ),
    # a line was cut short by a writer still at work
    (
        "c.jsonl",
        '{"id": "a"}\n{"id": "b"}\n',
        '{"id": "a"}\n{"id": "b", "main',
        ["a"],
        "line 2, column 13: invalid JSON",
    ),
    # the array was cut short: read as far as it goes
    (
        "c.json",
        '[{"id": "a"},\n{"id": "b"}]',
        '[{"id": "a"},\n{"id": ',
        ["a"],
        "line 2, column 8: invalid JSON",
    ),
    # the file is gone
    ("c.json", '[{"id": "a"}]', "", [], "not found"),
]


@pytest.mark.parametrize(("name", "before", "after", "ids", "first"), CHANGED)
def test_a_file_changed_after_the_check_is_read_as_far_as_it_goes(
    tmp_path: Path, name: str, before: str, after: str, ids: list[str], first: str
) -> None:
    path = write(tmp_path, name, before)
    catalog = read_catalog(path, OPTS)
    if after:
        path.write_text(after)
    else:
        path.unlink()
    assert [p.id for p in catalog.products] == ids
    assert catalog.changed == 1
    assert first in str(catalog.changed_example)


def test_skip_invalid_records_are_not_changes(tmp_path: Path) -> None:
    path = write(tmp_path, "c.jsonl", '{"id": "a"}\n{"id": true}\n{"id": \n')
    catalog = read_catalog(path, OPTS, skip_invalid=True)
    assert [p.id for p in catalog.products] == ["a"]
    assert catalog.invalid == 2 and catalog.changed == 0


def test_a_catalog_from_a_pipe_is_read_once(tmp_path: Path) -> None:
    # A FIFO cannot be read a second time: its products are kept from the check.
    fifo = tmp_path / "c.jsonl"
    os.mkfifo(fifo)
    content = '{"id": "a"}\n{"id": "b"}\n{"id": "a"}\n'
    writer = threading.Thread(target=fifo.write_text, args=(content,), daemon=True)
    writer.start()
    catalog = read_catalog(fifo, OPTS)
    writer.join(timeout=30)
    assert [p.id for p in catalog.products] == ["a", "b"]
    assert [p.id for p in catalog.products] == ["a", "b"]
    assert catalog.duplicates == 1
