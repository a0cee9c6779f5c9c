"""The message catalog: complete in both languages, the spec's wording, locale rules."""

from __future__ import annotations

import ast
import string
from pathlib import Path

import pytest

import imgfetch
from imgfetch import errors, messages
from imgfetch.catalog import InvalidRecord
from imgfetch.errors import CatalogError, StateError
from imgfetch.messages import Messages, Text, detect_lang
from imgfetch.progress import ProductLine


def placeholders(template: str) -> set[str]:
    """The value names of a template: `{path}`, `{value!r}`; not `{{` escapes."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_key_has_both_languages_with_the_same_placeholders() -> None:
    for key in messages.keys():
        en, zh = messages.text(key, "en"), messages.text(key, "zh")
        assert en and zh, key
        assert placeholders(en) == placeholders(zh), key


# The classes built from a catalog key, and the prefix each adds to it.
KEY_PREFIX = {
    **{
        name: "err_"
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.ImgfetchError)
    },
    "BadValue": "err_",
    "InvalidRecord": "reason_",
    "Text": "",
}


def keyed_calls() -> list[tuple[str, str, set[str] | None]]:
    """Every `CatalogError("key", hint=..., **values)`, `InvalidRecord("key")` and
    `Text("key")` in the package: (where, catalog key, value names given, or None
    when the call passes **values)."""
    found = []
    for path in sorted(Path(imgfetch.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            prefix = KEY_PREFIX.get(node.func.id)
            # A key that is not a literal is the classes' own plumbing.
            if prefix is None or not node.args:
                continue
            if not isinstance(node.args[0], ast.Constant):
                continue
            where = f"{path.name}:{node.lineno}"
            names = {k.arg for k in node.keywords}
            given = None if None in names else names - {"hint"}
            found.append((where, prefix + node.args[0].value, given))
            for keyword in node.keywords:
                if keyword.arg == "hint":  # "a", or `"a" if close else "b"`
                    for leaf in ast.walk(keyword.value):
                        if isinstance(leaf, ast.Constant) and leaf.value:
                            found.append((where, f"hint_{leaf.value}", given))
    return found


def test_every_error_key_in_the_code_exists_and_gets_its_values() -> None:
    calls = keyed_calls()
    assert len(calls) > 50  # the scan found the raises
    for where, key, given in calls:
        assert key in messages.keys(), (where, key)
        if given is not None:
            missing = placeholders(messages.text(key, "en")) - given
            assert not missing, (where, key, missing)


def test_an_error_renders_in_either_language_and_str_is_english() -> None:
    error = CatalogError(
        "invalid_json",
        hint="fix_json",
        path="c.json",
        line=3,
        column=1,
        detail="Expecting ',' delimiter",
    )
    assert (
        str(error)
        == error.render(Messages("en"))
        == (
            "c.json: line 3, column 1: invalid JSON (Expecting ',' delimiter); "
            "fix the file (a truncated download or a missing comma is common)"
        )
    )
    assert error.render(Messages("zh")) == (
        "c.json: 第 3 行第 1 列: JSON 格式错误 (Expecting ',' delimiter); "
        "请修正该文件 (常见原因: 下载不完整或缺少逗号)"
    )


def test_a_record_reason_is_rendered_in_the_language_of_its_error() -> None:
    reason = InvalidRecord("id_type", name="id", kind="bool")
    assert str(reason) == "field 'id' is bool, not an id"
    error = StateError(
        "state_record",
        hint="pending_fields",
        path="pending_tasks.json",
        number=2,
        reason=reason.text,
    )
    assert error.message == "pending_tasks.json: record 2 field 'id' is bool, not an id"
    assert error.render(Messages("zh")).startswith(
        "pending_tasks.json: 第 2 条记录: 字段 'id' 是 bool, 不是ID; 请修正该记录"
    )
    where = Text("at_record", number=2, line=5)
    assert Messages("zh")("at_where", where=where, reason=reason.text) == (
        "第 2 条记录 (第 5 行): 字段 'id' 是 bool, 不是ID"
    )


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
