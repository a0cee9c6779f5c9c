"""The message catalog: complete in both languages, the spec's wording, locale rules."""

from __future__ import annotations

import re

import pytest

from imgfetch import messages
from imgfetch.messages import Messages, detect_lang
from imgfetch.progress import ProductLine


def test_every_key_has_both_languages_with_the_same_placeholders() -> None:
    for key in messages.keys():
        en, zh = messages.text(key, "en"), messages.text(key, "zh")
        assert en and zh, key
        assert set(re.findall(r"{(\w+)}", en)) == set(re.findall(r"{(\w+)}", zh)), key


@pytest.mark.parametrize(
    ("key", "values", "expected"),
    [
        # The lines of download_images.py, byte for byte.
        ("interrupted", {}, "收到中断信号，正在安全退出..."),
        ("waiting", {}, "等待当前任务完成..."),
        ("saving", {}, "保存当前进度..."),
        ("mapping_saved_count", {"count": 1000}, "✓ 映射文件已保存: 1000 个商品"),
        ("pending_saved", {"count": 500}, "✓ 未完成任务已保存: 500 个商品"),
        ("pending_next_run", {}, "  下次运行时会自动恢复这些任务"),
        ("saved_exit", {}, "✓ 数据已安全保存，程序退出"),
        ("found_pending", {"count": 500}, "发现未完成任务: 500 个商品"),
        ("pending_first", {}, "  将优先处理这些任务"),
        ("starting", {}, "开始下载图片..."),
        (
            "mapping_saved_final",
            {"name": "image_mapping.json", "count": 1500},
            "映射文件已保存: image_mapping.json (共 1500 个商品)",
        ),
        ("all_done_deleted", {}, "✓ 所有任务已完成，已删除待办文件"),
    ],
)
def test_spec_wording(key: str, values: dict[str, object], expected: str) -> None:
    assert Messages("zh")(key, **values) == expected


def test_progress_line_matches_the_spec_example() -> None:
    line = ProductLine(1000, 1500, "991466016025", {"main": 2, "sku": 2, "qc": 2})
    expected = (
        "进度: 1000/1500 - 商品 991466016025: 主图2 张, SKU图2 张, QC图2 张 (共6张)"
    )
    assert line.render(Messages("zh")) == expected


def test_progress_line_in_english_with_failures_and_extra_category() -> None:
    line = ProductLine(3, 9, "p1", {"main": 1, "sku": 0, "qc": 0, "detail": 2}, 1)
    assert line.render(Messages("en")) == (
        "Progress: 3/9 - product p1: main 1, SKU 0, QC 0, detail 2 (3 images), 1 failed"
    )


@pytest.mark.parametrize(
    ("environ", "lang"),
    [
        ({"LANG": "zh_CN.UTF-8"}, "zh"),
        ({"LANG": "zh_TW.UTF-8"}, "zh"),
        ({"LANG": "en_US.UTF-8"}, "en"),
        ({}, "en"),
        ({"LANG": "C.UTF-8"}, "en"),
        # LC_ALL overrides LANG, as in every POSIX program.
        ({"LANG": "en_US.UTF-8", "LC_ALL": "zh_CN.UTF-8"}, "zh"),
        ({"LANG": "zh_CN.UTF-8", "LC_ALL": "C"}, "en"),
        ({"LANG": "en_US.UTF-8", "LC_MESSAGES": "zh_CN.UTF-8"}, "zh"),
    ],
)
def test_detect_lang(environ: dict[str, str], lang: str) -> None:
    assert detect_lang(environ) == lang
