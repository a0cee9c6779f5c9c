"""`imgfetch failures` and the top reasons at the end of a run: what failed, where,
and why, for people (a table) and scripts (JSON, CSV); read-only, no lock."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import pytest
from conftest import imgfetch_env, load_json, run_imgfetch, write_catalog

from imgfetch.backends.base import Failure
from imgfetch.failures_report import reason_group, top_reasons
from imgfetch.testserver import ImageServer

COLUMNS = ["product", "category", "index", "url", "reason", "attempts"]


@dataclass
class Downloaded:
    data: Path
    result: subprocess.CompletedProcess[str]
    # (product, category, index, url, what the reason must name), in store order
    expected: list[tuple[str, str, int, str, str]]


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Downloaded]:
    """One real run in which three images answer 404 and two an HTML page."""
    root = tmp_path_factory.mktemp("failures")
    with ImageServer() as server:
        ok = [server.url(f"ok-{n}") for n in range(3)]
        gone = [server.url(f"gone-{n}", status=404) for n in range(3)]
        page = [server.url(f"page-{n}", html=1) for n in range(2)]
        catalog = [
            {"id": "p0", "main_images": [ok[0], gone[0]], "sku_images": [page[0]]},
            {"id": "p1", "main_images": [ok[1]], "qc_images": [gone[1]]},
            {"id": "p2", "main_images": [gone[2], page[1], ok[2]]},
        ]
        source = write_catalog(root / "catalog.json", catalog)
        data = root / "data"
        # One worker: products finish, and their failures are stored, in input order.
        result = run_imgfetch(["download", str(source), "-d", str(data), "-w", "1"])
    expected = [
        ("p0", "main", 2, gone[0], "404"),
        ("p0", "sku", 1, page[0], "HTML"),
        ("p1", "qc", 1, gone[1], "404"),
        ("p2", "main", 1, gone[2], "404"),
        ("p2", "main", 2, page[1], "HTML"),
    ]
    yield Downloaded(data, result, expected)


def stored_rows(data: Path) -> list[dict[str, Any]]:
    """failed_images.json flattened to the report's rows, in file order."""
    return [
        {"product": pid, **failure}
        for pid, failures in load_json(data / "failed_images.json").items()
        for failure in failures
    ]


def check_rows(rows: list[dict[str, Any]], run: Downloaded) -> None:
    """The rows are exactly the failed images, each with its stored reason."""
    assert [list(row) for row in rows] == [COLUMNS] * len(run.expected)
    stored = {
        (r["product"], r["category"], r["index"]): r for r in stored_rows(run.data)
    }
    assert len(stored) == len(run.expected)
    for row, (pid, category, index, url, names) in zip(rows, run.expected, strict=True):
        assert (row["product"], row["category"], row["index"]) == (pid, category, index)
        assert row["url"] == url
        # permanent failures are not retried
        assert row["attempts"] == 1
        assert names in row["reason"]
        assert row["reason"] == stored[pid, category, index]["reason"]


def failures(data: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run_imgfetch(["failures", "-d", str(data), *args], **kw)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------- machine formats


def test_json_lists_every_failed_image(downloaded: Downloaded) -> None:
    assert downloaded.result.returncode == 1, downloaded.result.stderr
    result = failures(downloaded.data, "--json")
    assert result.returncode == 0, result.stderr
    check_rows(json.loads(result.stdout), downloaded)


def test_csv_has_a_header_and_the_same_rows(downloaded: Downloaded) -> None:
    result = failures(downloaded.data, "--csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == ",".join(COLUMNS)
    records = list(csv.DictReader(io.StringIO(result.stdout)))
    for record in records:
        record["index"] = int(record["index"])  # type: ignore[assignment]
        record["attempts"] = int(record["attempts"])  # type: ignore[assignment]
    check_rows(records, downloaded)  # type: ignore[arg-type]


def test_json_and_csv_together_is_a_usage_error(downloaded: Downloaded) -> None:
    result = failures(downloaded.data, "--json", "--csv")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "--json and --csv" in result.stderr


# ------------------------------------------------------------------- the table


def test_table_rows_then_count_then_top_reasons(downloaded: Downloaded) -> None:
    result = failures(downloaded.data)  # COLUMNS=200 in the test environment
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines]
    assert cells[0] == ["product", "category", "#", "URL", "reason", "attempts"]
    assert set(lines[1]) == {"─"}
    n = len(downloaded.expected)
    stored = stored_rows(downloaded.data)
    assert cells[2 : 2 + n] == [
        [r["product"], r["category"], str(r["index"]), r["url"], r["reason"], "1"]
        for r in stored
    ]
    assert [r["url"] for r in stored] == [e[3] for e in downloaded.expected]
    path = downloaded.data / "failed_images.json"
    group_404 = reason_group(stored[0]["reason"])
    group_html = reason_group(stored[1]["reason"])
    assert lines[2 + n :] == [
        "",
        f"5 failed images in 3 products, listed in {path}",
        "  most common reasons:",
        f"    {group_404}: 3",
        f"    {group_html}: 2",
    ]
    assert "404" in group_404 and "HTML" in group_html
    assert "\x1b" not in result.stdout  # no terminal, no escape codes


def test_narrow_table_folds_urls_without_losing_a_character(
    downloaded: Downloaded,
) -> None:
    env = imgfetch_env(COLUMNS="70")
    result = failures(downloaded.data, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    table = lines[: lines.index("")]
    assert max(len(line) for line in table) <= 70
    assert "…" not in result.stdout
    rule = next(i for i, line in enumerate(table) if set(line) == {"─"})
    header = table[rule - 1]
    start, end = header.index("URL"), header.index("reason")
    body = table[rule + 1 :]
    folded = "".join(line[start:end].strip() for line in body)
    assert folded == "".join(e[3] for e in downloaded.expected)
    assert len(body) > len(downloaded.expected)  # the URLs did need folding


def test_chinese_headers_and_reasons(downloaded: Downloaded) -> None:
    result = failures(downloaded.data, lang="zh_CN.UTF-8")
    assert result.returncode == 0, result.stderr
    header = re.split(r"\s{2,}", result.stdout.splitlines()[0].strip())
    assert header == ["商品", "类别", "#", "URL", "原因", "尝试次数"]
    assert "  主要失败原因:" in result.stdout.splitlines()
    assert "5 张图片下载失败 (共 3 个商品)" in result.stdout


# --------------------------------------------------- read-only, and no failures


def test_reads_while_the_lock_is_held_and_writes_nothing(
    downloaded: Downloaded,
) -> None:
    before = snapshot(downloaded.data)
    with filelock.FileLock(str(downloaded.data / ".imgfetch.lock"), timeout=0):
        for args in ([], ["--json"], ["--csv"]):
            result = failures(downloaded.data, *args)
            assert result.returncode == 0, result.stderr
    assert snapshot(downloaded.data) == before


def test_no_failures(tmp_path: Path, server: ImageServer) -> None:
    source = write_catalog(
        tmp_path / "c.json", [{"id": "a", "main_images": [server.url("a")]}]
    )
    data = tmp_path / "data"
    run = run_imgfetch(["download", str(source), "-d", str(data)])
    assert run.returncode == 0, run.stderr
    assert "most common reasons" not in run.stdout

    table = failures(data)
    assert table.returncode == 0, table.stderr
    assert table.stdout == f"No failed images ({data / 'failed_images.json'})\n"
    as_json = failures(data, "--json")
    assert (as_json.returncode, as_json.stdout) == (0, "[]\n")
    as_csv = failures(data, "--csv")
    assert (as_csv.returncode, as_csv.stdout) == (0, ",".join(COLUMNS) + "\n")


def test_missing_data_dir_is_an_error(tmp_path: Path) -> None:
    result = failures(tmp_path / "nowhere")
    assert result.returncode == 2
    assert str(tmp_path / "nowhere") in result.stderr
    assert not (tmp_path / "nowhere").exists()


# ------------------------------------------------- top reasons at the end of a run


def test_run_summary_lists_the_top_reasons(downloaded: Downloaded) -> None:
    lines = downloaded.result.stdout.splitlines()
    stored = stored_rows(downloaded.data)
    written = next(i for i, line in enumerate(lines) if "images failed" in line)
    assert lines[written - 1].startswith("Done: ")
    assert lines[written + 1 : written + 4] == [
        "  most common reasons:",
        f"    {reason_group(stored[0]['reason'])}: 3",
        f"    {reason_group(stored[1]['reason'])}: 2",
    ]
    assert "most common reasons" not in lines[written + 4 :]


def failure(reason: str) -> Failure:
    return Failure("main", 1, "http://x.test/a.jpg", reason)


def test_top_reasons_are_five_most_common_first_ties_in_first_seen_order() -> None:
    reasons = ["HTTP 400", "HTTP 410", "HTTP 404", "HTTP 404", "HTTP 401"]
    reasons += ["HTTP 410", "HTTP 405", "HTTP 404", "HTTP 406", "HTTP 403"]
    stored = {
        "a": [failure(r) for r in reasons[:5]],
        "b": [failure(r) for r in reasons[5:]],
    }
    assert top_reasons(stored) == [
        ("HTTP 404", 3),
        ("HTTP 410", 2),
        ("HTTP 400", 1),
        ("HTTP 401", 1),
        ("HTTP 405", 1),
    ]
    assert top_reasons({}) == []


GROUPS = [
    # a plain reason is its own group
    ("HTTP 404", "HTTP 404"),
    ("more than 10 redirects", "more than 10 redirects"),
    ("unsupported URL scheme 'file'", "unsupported URL scheme 'file'"),
    # counts and sizes in parentheses differ per image: dropped
    ("HTTP 503 (gave up after 4 attempts)", "HTTP 503"),
    ("truncated body (512 of 2048 bytes) (gave up after 4 attempts)", "truncated body"),
    ("too large (99999999 bytes > --max-bytes)", "too large"),
    ("connection failed ([Errno 104] Connection reset by peer)", "connection failed"),
    # a short detail after ": " says which kind: kept
    (
        "not an image: an HTML page (Content-Type text/html)",
        "not an image: an HTML page",
    ),
    ("not an image: JSON (Content-Type application/json)", "not an image: JSON"),
    ("permanent: HTTP 404", "permanent: HTTP 404"),
    # a long detail, or one holding a URL, is particular to one image: dropped
    (
        "internal error: ValueError('something went wrong deep inside a library')",
        "internal error",
    ),
    ("redirected: to http://x.test/elsewhere.jpg", "redirected"),
    # white space is normalised; an empty reason still has a group
    ("  HTTP   404\n", "HTTP 404"),
    ("", "-"),
]


@pytest.mark.parametrize(("reason", "group"), GROUPS)
def test_reason_group(reason: str, group: str) -> None:
    assert reason_group(reason) == group
