"""Unit tests of imgfetch.catalog: reading catalogs into products and image refs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
