"""Bad input and damaged state, end to end through a real `imgfetch` process.

The standard for every case: exit code 2, exactly one line on stderr (no
traceback) that names the bad value and where it is, nothing on stdout, and no
change on disk: no data directory created for a bad catalog or option, and every
file of an existing data directory byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import filelock
import pytest
from conftest import (
    assert_consistent,
    imgfetch_env,
    load_json,
    make_catalog,
    run_imgfetch,
    write_catalog,
)

from imgfetch.paths import LOCK_FILE
from imgfetch.testserver import ImageServer

BAD_INPUT = 2
BUSY = 3


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under `root`, by relative path."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def assert_unchanged(root: Path, before: dict[str, bytes | None]) -> None:
    """Nothing changed under `root`; only the lock file of filelock may appear."""
    after = snapshot(root)
    if LOCK_FILE not in before:
        after.pop(LOCK_FILE, None)
    assert after.keys() == before.keys(), "files appeared or disappeared"
    for name, content in before.items():
        assert after[name] == content, f"{name} changed"


def assert_one_line_error(
    result: subprocess.CompletedProcess[str],
    *fragments: str,
    prefix: str = "imgfetch: error: ",
    code: int = BAD_INPUT,
) -> str:
    """Exit code 2 (or `code`), stdout empty, stderr one error line with fragments."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(prefix), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert result.stdout == "", result.stdout
    return line


# ------------------------------------------------------------ bad catalogs

GOOD = '{"id": "ok1", "main_images": []}'

BAD_CATALOGS: list[tuple[str, str | bytes, list[str]]] = [
    # broken JSON: a missing comma between two records
    ("c.json", f"[\n{GOOD}\n{GOOD}\n]", ["line 3", "invalid JSON"]),
    # truncated JSON: the download of the catalog stopped half way
    ("c.json", f'[\n{GOOD},\n{{"id": "p2", "main_images": ["http://x', ["line 3"]),
    # top level is an object
    ("c.json", '{"products": []}', ["top level is dict", "list of products"]),
    # top level is a string
    ("c.json", '"products.json"', ["top level is str"]),
    # top level is a number
    ("c.json", "1500", ["top level is int"]),
    # an empty file
    ("c.json", "", ["empty"]),
    # JSON Lines saved as .json
    ("c.json", f"{GOOD}\n{GOOD}\n", ["line 2", "JSON Lines"]),
    # a record without an id: its record and line number
    (
        "c.json",
        f'[\n{GOOD},\n{{"title": "no id"}}\n]',
        ["record 2 (line 3)", "no product id"],
    ),
    # id of the wrong type: bool
    ("c.json", '[{"id": true}]', ["record 1", "'id'", "bool"]),
    # id of the wrong type: list
    ("c.json", '[{"id": ["a"]}]', ["record 1", "'id'", "list"]),
    # id null and no other id field
    ("c.json", f'[{GOOD}, {{"id": null}}]', ["record 2", "no product id"]),
    # an image field of the wrong type
    ("c.json", '[{"id": "a", "main_images": 3}]', ["record 1", "main_images", "int"]),
    # a list element of the wrong type
    ("c.json", '[{"id": "a", "sku_images": ["http://x/1.jpg", 7]}]', ["sku_images[1]"]),
    # not UTF-8 (Latin-1 é)
    ("c.json", b'[{"id": "caf\xe9"}]', ["byte 12", "UTF-8"]),
    # hostile: nesting deeper than the decoder can follow
    ("c.json", "[" * 50_000 + "]" * 50_000, ["nested too deeply"]),
    # JSON Lines: a broken line
    ("c.jsonl", f'{GOOD}\n{{"id": "p2",\n', ["line 2", "invalid JSON"]),
]


def case_id(value: object) -> str:
    """Short readable test ids (some contents are 100 000 characters long)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return text if len(text) <= 30 else text[:27] + "..."


@pytest.mark.parametrize(("name", "content", "fragments"), BAD_CATALOGS, ids=case_id)
def test_bad_catalog(
    tmp_path: Path, name: str, content: str | bytes, fragments: list[str]
) -> None:
    source = tmp_path / name
    source.write_bytes(content.encode() if isinstance(content, str) else content)
    data = tmp_path / "data"
    result = run_imgfetch(["download", str(source), "-d", str(data)], timeout=60)
    assert_one_line_error(result, str(source), *fragments)
    assert not data.exists(), "a data directory was created for bad input"
    assert source.read_bytes() == (
        content.encode() if isinstance(content, str) else content
    )


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        # a missing input file
        ("missing.json", ["missing.json", "not found"]),
        # the input is a directory
        (".", ["is a directory"]),
    ],
)
def test_unusable_input_path(tmp_path: Path, target: str, fragments: list[str]) -> None:
    data = tmp_path / "data"
    result = run_imgfetch(["download", str(tmp_path / target), "-d", str(data)])
    assert_one_line_error(result, *fragments)
    assert not data.exists()


@pytest.mark.parametrize(
    ("lang", "args", "prefix"),
    [
        # a Chinese locale: the Chinese prefix
        ("zh_CN.UTF-8", [], "imgfetch: 错误: "),
        # --lang en overrides the Chinese locale for the error line too
        ("zh_CN.UTF-8", ["--lang", "en"], "imgfetch: error: "),
        # --lang zh in an English locale
        ("en_US.UTF-8", ["--lang", "zh"], "imgfetch: 错误: "),
    ],
)
def test_error_line_language(
    tmp_path: Path, lang: str, args: list[str], prefix: str
) -> None:
    source = tmp_path / "c.json"
    source.write_text('{"id": "a"}')
    data = tmp_path / "data"
    result = run_imgfetch(["download", str(source), "-d", str(data), *args], lang=lang)
    assert result.returncode == BAD_INPUT
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    assert str(source) in lines[0]
    assert not data.exists()


# Errors in the user's language: (case, arguments after `download SOURCE -d DATA`,
# the catalog or None for a missing file, values named in either language, our
# words in Chinese, the same in English).
BROKEN_JSON = f"[\n{GOOD}\n{GOOD}\n]"
LANGUAGE_CASES: list[
    tuple[str, list[str], str | None, list[str], list[str], list[str]]
] = [
    (
        "missing input file",
        [],
        None,
        ["missing.json"],
        ["找不到输入文件", "请给出商品目录文件的路径"],
        ["input file", "not found", "pass the path of your catalog"],
    ),
    (
        "broken JSON",
        [],
        BROKEN_JSON,
        ["c.json", "Expecting ','"],  # json's own reason stays as Python wrote it
        ["第 3 行第 1 列", "JSON 格式错误", "请修正该文件"],
        ["line 3, column 1", "invalid JSON", "fix the file"],
    ),
    (
        "unknown backend",
        ["--backend", "jsn"],
        BROKEN_JSON,  # the option is checked before the catalog is read
        ["'jsn'", "'json'"],
        ["未知的存储后端", "是不是想用"],
        ["unknown backend", "did you mean"],
    ),
    (
        "not a whole number",
        ["--workers", "many"],
        BROKEN_JSON,
        ["'--workers'", "'many'"],  # inside click's own words, which stay English
        ["不是整数", "参见 imgfetch --help"],
        ["is not a whole number", "see imgfetch --help"],
    ),
]
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize(
    ("args", "content", "values", "chinese", "english"),
    [case[1:] for case in LANGUAGE_CASES],
    ids=[case[0] for case in LANGUAGE_CASES],
)
def test_error_in_the_users_language(
    tmp_path: Path,
    args: list[str],
    content: str | None,
    values: list[str],
    chinese: list[str],
    english: list[str],
) -> None:
    source = tmp_path / ("c.json" if content is not None else "missing.json")
    if content is not None:
        source.write_text(content)
    data = tmp_path / "data"
    command = ["download", str(source), "-d", str(data), *args]
    # a Chinese locale: our words in Chinese, none of the English ones
    result = run_imgfetch(command, lang="zh_CN.UTF-8")
    line = assert_one_line_error(result, *values, *chinese, prefix="imgfetch: 错误: ")
    assert not [word for word in english if word in line], line
    # --lang en in the same locale: English, no Chinese at all
    result = run_imgfetch([*command, "--lang", "en"], lang="zh_CN.UTF-8")
    line = assert_one_line_error(result, *values, *english)
    assert not CJK.search(line), line
    assert not data.exists()


@pytest.mark.parametrize(
    ("lang", "args", "prefix", "fragments"),
    [
        (
            "zh_CN.UTF-8",
            [],
            "imgfetch: 错误: ",
            ["正被另一个 imgfetch 使用", "请等它结束"],
        ),
        ("zh_CN.UTF-8", ["--lang", "en"], "imgfetch: error: ", ["in use by another"]),
    ],
)
def test_busy_data_dir_in_the_users_language(
    tmp_path: Path, lang: str, args: list[str], prefix: str, fragments: list[str]
) -> None:
    source = tmp_path / "c.json"
    source.write_text('[{"id": "a"}]')
    data = tmp_path / "data"
    data.mkdir()
    # Another imgfetch holds the lock: the same lock file, held by this process.
    with filelock.FileLock(str(data / LOCK_FILE)):
        result = run_imgfetch(
            ["download", str(source), "-d", str(data), *args], lang=lang
        )
    assert_one_line_error(result, str(data), *fragments, prefix=prefix, code=BUSY)
    assert not (data / "image_mapping.json").exists()


def test_default_input_missing(tmp_path: Path) -> None:
    # no INPUT: DATA_DIR/products.json, which does not exist
    data = tmp_path / "data_clean"
    result = run_imgfetch(["download", "-d", str(data)])
    assert_one_line_error(result, "products.json", "not found")
    assert not data.exists()


def test_bad_catalog_leaves_an_existing_data_dir_untouched(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "images" / "p1").mkdir(parents=True)
    (data / "images" / "p1" / "main_1.jpg").write_bytes(b"\xff\xd8\xff old")
    stale = data / "images" / "p1" / ".imgfetch-main_2.jpg.x1.tmp"
    stale.write_bytes(b"half")
    (data / "image_mapping.json").write_text(
        '{"p1": {"main": ["images/p1/main_1.jpg"], "sku": [], "qc": []}}'
    )
    (data / "pending_tasks.json").write_text('[{"id": "p2"}]')
    before = snapshot(data)
    source = tmp_path / "c.json"
    source.write_text('[{"id": "p2"}, {"id": false}]')
    result = run_imgfetch(["download", str(source), "-d", str(data)])
    assert_one_line_error(result, "record 2", "bool")
    assert_unchanged(data, before)


# ------------------------------------------------------------- bad options

OPTION_CASES: list[tuple[list[str], list[str]]] = [
    # --field without '='
    (["--field", "qc"], ["--field", "'qc'", "CATEGORY=FIELD"]),
    # --field with a category unfit for file names
    (["--field", "../qc=x"], ["--field", "'../qc'"]),
    # --workers 0
    (["--workers", "0"], ["--workers", "0", "1..512"]),
    # --workers not a number
    (["--workers", "many"], ["--workers", "many"]),
    # an unknown backend, with a suggestion
    (["--backend", "jsn"], ["backend", "'jsn'", "did you mean 'json'"]),
    # --default-scheme other than http/https
    (["--default-scheme", "ftp"], ["--default-scheme", "'ftp'"]),
    # a negative grace period
    (["--grace-period", "-1"], ["--grace-period"]),
    # --progress value not in the list
    (["--progress", "fancy"], ["--progress", "fancy"]),
    # --lang value not in the list
    (["--lang", "fr"], ["--lang", "fr"]),
    # a mistyped option, with a suggestion
    (["--wokers", "4"], ["--wokers", "--workers"]),
]


@pytest.mark.parametrize(
    ("args", "fragments"), OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES]
)
def test_bad_option(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    source = tmp_path / "c.json"
    source.write_text('[{"id": "a"}]')  # no images: nothing would be fetched
    data = tmp_path / "data"
    result = run_imgfetch(["download", str(source), "-d", str(data), *args])
    assert_one_line_error(result, *fragments)
    assert not data.exists(), "a data directory was created for a bad option"


@pytest.mark.parametrize("command", ["resume", "inspect-pending"])
def test_unknown_backend_other_commands(tmp_path: Path, command: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "pending_tasks.json").write_text('[{"id": "a"}]')
    before = snapshot(data)
    result = run_imgfetch([command, "-d", str(data), "--backend", "jsno"])
    assert_one_line_error(result, "'jsno'", "did you mean 'json'")
    assert_unchanged(data, before)


def test_unknown_backend_on_a_new_data_dir_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_imgfetch(["resume", "-d", str(data), "--backend", "redis-ish"])
    assert_one_line_error(result, "'redis-ish'")
    assert not data.exists()


@pytest.mark.parametrize("command", ["download", "resume", "inspect-pending"])
def test_backend_comes_from_the_environment(tmp_path: Path, command: str) -> None:
    # Some typer releases ignored envvar=; IMGFETCH_BACKEND must reach every command.
    data = tmp_path / "data"
    source = tmp_path / "c.json"
    source.write_text('[{"id": "a"}]')
    args = [command, str(source)] if command == "download" else [command]
    result = run_imgfetch(
        [*args, "-d", str(data)],
        env=imgfetch_env(IMGFETCH_BACKEND="jsno"),
    )
    assert_one_line_error(result, "'jsno'", "did you mean 'json'")
    assert not data.exists()


# ------------------------------------------------------------ damaged state

MAPPING_OK = '{"p1": {"main": ["images/p1/main_1.jpg"], "sku": [], "qc": []}}\n'
PENDING_OK = '[{"id": "p2", "main_images": []}]\n'
FAILED_OK = (
    '{"p1": [{"category": "sku", "index": 1, "url": "http://127.0.0.1:9/x.jpg", '
    '"reason": "HTTP 404", "attempts": 1}]}\n'
)

DAMAGED: list[tuple[str, str | bytes, list[str]]] = [
    # mapping: broken JSON (a kill in an editor, a full disk in another tool)
    (
        "image_mapping.json",
        '{"p1": {"main": [\n"images/p1/m',
        ["line 2", "invalid JSON"],
    ),
    # mapping: wrong top-level type
    ("image_mapping.json", "[]", ["top level is list"]),
    # mapping: empty file
    ("image_mapping.json", "", ["empty"]),
    # mapping: an entry of the wrong shape
    ("image_mapping.json", '{"p1": ["images/p1/main_1.jpg"]}', ["'p1'"]),
    # mapping: not UTF-8
    ("image_mapping.json", b'{"p\xff": {}}', ["byte 3", "UTF-8"]),
    # pending: broken JSON
    ("pending_tasks.json", '[{"id": "p2"},\n{"id": ', ["line 2", "invalid JSON"]),
    # pending: wrong top-level type
    ("pending_tasks.json", '{"p2": {}}', ["top level is dict"]),
    # pending: empty file
    ("pending_tasks.json", "", ["empty"]),
    # pending: a record without an id
    (
        "pending_tasks.json",
        '[{"id": "p2"}, {"title": "x"}]',
        ["record 2", "no product id"],
    ),
    # pending: a record with an image field of the wrong type
    ("pending_tasks.json", '[{"id": "p2", "qc_images": 5}]', ["record 1", "qc_images"]),
    # pending: hostile nesting deeper than the decoder can follow
    ("pending_tasks.json", "[" * 50_000 + "]" * 50_000, ["nested too deeply"]),
    # failed images: broken JSON
    ("failed_images.json", '{"p1": [', ["line 1", "invalid JSON"]),
    # failed images: wrong top-level type
    ("failed_images.json", '["p1"]', ["top level is list"]),
    # failed images: empty file
    ("failed_images.json", "", ["empty"]),
    # failed images: a failure without a URL
    (
        "failed_images.json",
        '{"p1": [{"category": "main", "index": 1}]}',
        ["'p1'", "url"],
    ),
    # failed images: a category that would write outside the product folder
    (
        "failed_images.json",
        '{"p1": [{"category": "../../../x", "index": 1, "url": "http://h/x.jpg"}]}',
        ["'p1'", "../../../x"],
    ),
]


def seeded_data_dir(data: Path, damaged: str, content: str | bytes) -> None:
    """A data directory of an interrupted run, with one file damaged."""
    (data / "images" / "p1").mkdir(parents=True)
    (data / "images" / "p1" / "main_1.jpg").write_bytes(b"\xff\xd8\xff image")
    (data / "images" / "p1" / ".imgfetch-sku_1.jpg.k9.tmp").write_bytes(b"partial")
    files = {
        "image_mapping.json": MAPPING_OK,
        "pending_tasks.json": PENDING_OK,
        "failed_images.json": FAILED_OK,
    }
    files[damaged] = content
    for name, text in files.items():
        path = data / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)


@pytest.mark.parametrize(("damaged", "content", "fragments"), DAMAGED, ids=case_id)
def test_damaged_state_download(
    tmp_path: Path, damaged: str, content: str | bytes, fragments: list[str]
) -> None:
    data = tmp_path / "data"
    seeded_data_dir(data, damaged, content)
    before = snapshot(data)
    source = tmp_path / "c.json"
    source.write_text('[{"id": "p1"}, {"id": "p2"}, {"id": "p3"}]')
    result = run_imgfetch(["download", str(source), "-d", str(data)])
    line = assert_one_line_error(result, damaged, *fragments)
    # the message says what the user can do, and the file was not overwritten
    assert any(word in line for word in ("restore", "repair", "fix", "pass the same"))
    assert_unchanged(data, before)


@pytest.mark.parametrize(
    ("command", "damaged", "content"),
    [
        # resume with a broken pending file
        (["resume"], "pending_tasks.json", '[{"id": "p2"'),
        # retry-failed with a failed file of the wrong type
        (["download", "--retry-failed"], "failed_images.json", "[]"),
        # retry-failed with a broken mapping
        (["download", "--retry-failed"], "image_mapping.json", "{"),
    ],
)
def test_damaged_state_other_commands(
    tmp_path: Path, command: list[str], damaged: str, content: str
) -> None:
    data = tmp_path / "data"
    seeded_data_dir(data, damaged, content)
    before = snapshot(data)
    result = run_imgfetch([*command, "-d", str(data)])
    assert_one_line_error(result, damaged)
    assert_unchanged(data, before)


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    source = tmp_path / "c.json"
    source.write_text('[{"id": "a"}]')
    data = tmp_path / "data"
    data.write_bytes(b"not a folder")
    result = run_imgfetch(["download", str(source), "-d", str(data)])
    assert_one_line_error(result, "--data-dir", str(data))
    assert data.read_bytes() == b"not a folder"


# ---------------------------------------------- --skip-invalid and duplicates


def warning_lines(stderr: str, marker: str) -> list[str]:
    return [line for line in stderr.splitlines() if marker in line]


def test_skip_invalid_downloads_the_rest(tmp_path: Path, server: ImageServer) -> None:
    good = make_catalog(server, 4, main=1, sku=1, qc=0)
    records: list[object] = [
        good[0],
        {"title": "no id", "main_images": [server.url("orphan")]},
        good[1],
        {"id": True},
        good[2],
        {"id": "bad-images", "main_images": {"url": server.url("x")}},
        "not even an object",
        good[3],
    ]
    source = tmp_path / "c.json"
    source.write_text(json.dumps(records, indent=1))
    data = tmp_path / "data"

    stopped = run_imgfetch(["download", str(source), "-d", str(data)])
    assert_one_line_error(stopped, "record 2", "--skip-invalid")
    assert not data.exists()

    result = run_imgfetch(
        ["download", str(source), "-d", str(data), "--skip-invalid", "--workers", "4"]
    )
    assert result.returncode == 0, result.stderr
    warnings = warning_lines(result.stderr, "invalid records skipped")
    assert len(warnings) == 1, result.stderr
    assert "4 invalid records skipped" in warnings[0]
    assert "record 2" in warnings[0]  # the first one, to find it
    assert "Traceback" not in result.stderr
    assert_consistent(data, good, server, finished=True)
    assert server.requests_for(server.url("orphan")) == 0


def test_skip_invalid_jsonl_with_a_truncated_last_line(
    tmp_path: Path, server: ImageServer
) -> None:
    good = make_catalog(server, 3, main=1, sku=0, qc=0)
    lines = [json.dumps(p) for p in good]
    lines.append(json.dumps(make_catalog(server, 1, prefix="t")[0])[:40])
    source = tmp_path / "c.jsonl"
    source.write_text("\n".join(lines))
    data = tmp_path / "data"
    result = run_imgfetch(
        ["download", str(source), "-d", str(data), "--skip-invalid", "-w", "4"]
    )
    assert result.returncode == 0, result.stderr
    warnings = warning_lines(result.stderr, "invalid records skipped")
    assert len(warnings) == 1 and "line 4" in warnings[0], result.stderr
    assert_consistent(data, good, server, finished=True)


def test_duplicates_first_wins_with_one_warning(
    tmp_path: Path, server: ImageServer
) -> None:
    first = make_catalog(server, 3, main=1, sku=1, qc=0)
    later = make_catalog(server, 3, main=2, sku=0, qc=1, prefix="p", copy=1)
    for product in later:
        product["title"] = "a later copy"
    records = [first[0], first[1], later[0], first[2], later[1], later[0]]
    source = write_catalog(tmp_path / "c.json", records)
    data = tmp_path / "data"
    result = run_imgfetch(["download", str(source), "-d", str(data), "-w", "4"])
    assert result.returncode == 0, result.stderr
    warnings = warning_lines(result.stderr, "duplicate")
    assert len(warnings) == 1, result.stderr
    assert "3 duplicate product ids skipped" in warnings[0]
    assert "p0000" in warnings[0]
    mapping = assert_consistent(data, first, server, finished=True)
    # the first occurrence's images, not the later copy's
    assert mapping["p0000"] == {
        "main": ["images/p0000/main_1.jpg"],
        "sku": ["images/p0000/sku_1.jpg"],
        "qc": [],
    }
    for product in later:
        for url in product["main_images"] + product["qc_images"]:
            assert server.requests_for(url) == 0
    assert not (data / "failed_images.json").exists()
    assert load_json(data / "image_mapping.json").keys() == {"p0000", "p0001", "p0002"}
