"""`imgfetch inspect-pending`: what an interrupted download left, for people and
scripts; read-only, and clear about damaged files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_imgfetch

PENDING = [
    {
        "id": "a1",
        "main_images": ["http://x.test/1.jpg", "http://x.test/2.jpg"],
        "sku_images": "http://x.test/s.jpg",
    },
    {"id": 2, "qc_images": [{"url": "//x.test/q.jpg"}, {"src": "file:///etc/passwd"}]},
    {"item_id": "c3", "main_images": None, "detail": ["http://x.test/d.jpg"]},
    {"id": "done", "main_images": ["http://x.test/done.jpg"]},  # also in the mapping
    {"id": "a1", "main_images": []},  # the same id twice counts once
]
MAPPING = {"done": {"main": ["images/done/main_1.jpg"], "sku": [], "qc": []}}
FAILED = {
    "done": [
        {
            "category": "sku",
            "index": 1,
            "url": "http://x.test/f1",
            "reason": "HTTP 404",
        },
        {
            "category": "sku",
            "index": 2,
            "url": "http://x.test/f2",
            "reason": "HTTP 410",
        },
    ]
}


def seeded(tmp_path: Path, age: float = 3600) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for name, value in (
        ("pending_tasks.json", PENDING),
        ("image_mapping.json", MAPPING),
        ("failed_images.json", FAILED),
    ):
        (data / name).write_text(json.dumps(value, ensure_ascii=False, indent=2))
    then = time.time() - age
    os.utime(data / "pending_tasks.json", (then, then))
    return data


def snapshot(root: Path) -> dict[str, Any]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def inspect(data: Path, *args: str, lang: str = "en_US.UTF-8") -> Any:
    return run_imgfetch(["inspect-pending", "-d", str(data), *args], lang=lang)


def test_json_report(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    before = snapshot(data)
    result = inspect(data, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["exists"] is True
    assert summary["products"] == 3  # a1, 2, c3: "done" is completed, a1 once
    assert summary["first_ids"] == ["a1", "2", "c3"]
    assert summary["images"] == {"main": 2, "sku": 1, "qc": 2}
    assert summary["images_total"] == 5
    assert summary["pending_file"] == str(data / "pending_tasks.json")
    assert 3600 <= summary["age_seconds"] < 3600 + 120
    assert summary["completed"] == 1
    assert summary["failed_images"] == 2
    assert snapshot(data) == before  # read-only: not even a lock file


def test_human_report_english(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    result = inspect(data)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Pending tasks: 3 products"
    assert lines[1] == "  images: 5 (main 2, SKU 1, QC 2)"
    assert re.fullmatch(
        rf"  file: {re.escape(str(data / 'pending_tasks.json'))} "
        r"\(saved 1h0[0-2]m\d\ds ago\)",
        lines[2],
    ), lines[2]
    assert lines[3] == "  first ids: a1, 2, c3"
    assert lines[4] == "Completed: 1 products; failed images: 2"
    assert "\x1b" not in result.stdout
    assert result.stderr == ""


def test_human_report_chinese(tmp_path: Path) -> None:
    data = seeded(tmp_path, age=5)
    result = inspect(data, lang="zh_CN.UTF-8")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "未完成任务: 3 个商品"
    assert lines[1] == "  图片: 5 张 (主图2 张, SKU图1 张, QC图2 张)"
    assert lines[2].startswith("  文件位置: ") and lines[2].endswith("前保存)")
    assert lines[3] == "  前几个商品ID: a1, 2, c3"


def test_first_and_field_options(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pending = [{"id": f"p{i:03d}", "detail": [f"http://x.test/{i}"]} for i in range(25)]
    (data / "pending_tasks.json").write_text(json.dumps(pending))

    default = json.loads(inspect(data, "--json").stdout)
    assert default["first_ids"] == [f"p{i:03d}" for i in range(10)]
    assert default["products"] == 25
    assert default["images"] == {"main": 0, "sku": 0, "qc": 0}

    # --first N; and a category added by --field is counted like the spec's three
    args = ["--json", "--first", "3", "--field", "detail=detail"]
    chosen = json.loads(inspect(data, *args).stdout)
    assert chosen["first_ids"] == ["p000", "p001", "p002"]
    assert chosen["images"] == {"main": 0, "sku": 0, "qc": 0, "detail": 25}


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    # a pending file repaired in an editor that saves UTF-8 with a BOM
    data = tmp_path / "data"
    data.mkdir()
    text = json.dumps([{"id": "修好", "main_images": ["http://x.test/1.jpg"]}])
    (data / "pending_tasks.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = inspect(data, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["first_ids"] == ["修好"]


def test_no_pending_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "image_mapping.json").write_text(json.dumps(MAPPING))
    human = inspect(data)
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines() == [
        f"No pending tasks ({data / 'pending_tasks.json'} does not exist)"
    ]
    summary = json.loads(inspect(data, "--json").stdout)
    assert summary["exists"] is False
    assert summary["products"] == 0 and summary["first_ids"] == []
    assert summary["age_seconds"] is None
    assert summary["completed"] == 1
    assert sorted(p.name for p in data.iterdir()) == ["image_mapping.json"]


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], *frags: str
) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("imgfetch: error: ")
    for fragment in frags:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""


def test_missing_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "nowhere"
    result = inspect(data)
    assert_one_line_error(result, str(data), "does not exist")
    assert not data.exists()


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        # broken JSON: the line and column
        ("pending_tasks.json", '[\n{"id": "a"},\n{"id"', ["line 3", "invalid JSON"]),
        # a record without an id
        ("pending_tasks.json", '[{"id": "a"}, {"x": 1}]', ["record 2"]),
        # a record with an image field of the wrong type
        ("pending_tasks.json", '[{"id": "a", "main_images": 4}]', ["record 1"]),
        # a damaged mapping
        ("image_mapping.json", '{"done": ', ["line 1", "invalid JSON"]),
        # a damaged failure list
        ("failed_images.json", "[]", ["top level is list"]),
    ],
)
def test_damaged_files(
    tmp_path: Path, name: str, content: str, fragments: list[str]
) -> None:
    data = seeded(tmp_path)
    (data / name).write_text(content)
    before = snapshot(data)
    result = inspect(data)
    assert_one_line_error(result, str(data / name), *fragments)
    assert snapshot(data) == before  # never overwritten, never deleted


def test_damaged_file_with_json_output(tmp_path: Path) -> None:
    # scripts get the same error on stderr and nothing half-written on stdout
    data = seeded(tmp_path)
    (data / "pending_tasks.json").write_text('[{"id": "a"},')
    before = snapshot(data)
    result = inspect(data, "--json")
    assert_one_line_error(result, "pending_tasks.json", "line 1")
    assert snapshot(data) == before


def test_negative_first_is_a_usage_error(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    assert_one_line_error(inspect(data, "--first", "-1"), "--first", "-1")
