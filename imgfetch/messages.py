"""The message catalog: every line imgfetch prints, in English and in Chinese."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

Lang = Literal["en", "zh"]

RULE = "=" * 60

# The Chinese texts are the contract of the original download_images.py; keep them
# byte for byte (scripts and habits depend on them).
_CATALOG: dict[str, dict[Lang, str]] = {
    "banner": {"en": "Image downloader", "zh": "图片下载程序"},
    "found_pending": {
        "en": "Found unfinished tasks: {count} products",
        "zh": "发现未完成任务: {count} 个商品",
    },
    "pending_first": {
        "en": "  they will be processed first",
        "zh": "  将优先处理这些任务",
    },
    "starting": {"en": "Downloading images...", "zh": "开始下载图片..."},
    "progress": {
        "en": "Progress: {done}/{total} - product {pid}: {parts} ({images} images)",
        "zh": "进度: {done}/{total} - 商品 {pid}: {parts} (共{images}张)",
    },
    "progress_failed": {"en": ", {failed} failed", "zh": ", 失败{failed}张"},
    "interrupted": {
        "en": "Interrupt received, shutting down safely...",
        "zh": "收到中断信号，正在安全退出...",
    },
    "waiting": {
        "en": "Waiting for current tasks to finish...",
        "zh": "等待当前任务完成...",
    },
    "saving": {"en": "Saving progress...", "zh": "保存当前进度..."},
    "mapping_saved_count": {
        "en": "✓ Mapping file saved: {count} products",
        "zh": "✓ 映射文件已保存: {count} 个商品",
    },
    "pending_saved": {
        "en": "✓ Unfinished tasks saved: {count} products",
        "zh": "✓ 未完成任务已保存: {count} 个商品",
    },
    "pending_location": {
        "en": "  File location: {path}",
        "zh": "  文件位置: {path}",
    },
    "pending_next_run": {
        "en": "  They will be resumed automatically on the next run",
        "zh": "  下次运行时会自动恢复这些任务",
    },
    "saved_exit": {
        "en": "✓ Data saved safely, exiting",
        "zh": "✓ 数据已安全保存，程序退出",
    },
    "mapping_saved_final": {
        "en": "Mapping file saved: {name} ({count} products in total)",
        "zh": "映射文件已保存: {name} (共 {count} 个商品)",
    },
    "all_done_deleted": {
        "en": "✓ All tasks completed, pending file deleted",
        "zh": "✓ 所有任务已完成，已删除待办文件",
    },
    "all_done": {"en": "✓ All tasks completed", "zh": "✓ 所有任务已完成"},
    "nothing_to_resume": {
        "en": "No unfinished tasks in {path}: nothing to resume",
        "zh": "没有未完成任务: {path} 不存在，无需恢复",
    },
    "summary": {
        "en": (
            "Done: {products} products, {images} images, {size}, {failed} failed, "
            "{elapsed}, {rate} images/s"
        ),
        "zh": (
            "下载完成: {products} 个商品, {images} 张图片, {size}, 失败 {failed} 张, "
            "用时 {elapsed}, {rate} 张/秒"
        ),
    },
    "failures_written": {
        "en": "  {count} images failed, listed in {path}",
        "zh": "  {count} 张图片下载失败，详见 {path}",
    },
    "retry_failed_none": {
        "en": "No failed images recorded in {path}: nothing to retry",
        "zh": "没有失败的图片记录 ({path})，无需重试",
    },
    "retrying_failed": {
        "en": "Retrying {count} failed images of {products} products",
        "zh": "重新下载失败的图片: {count} 张 (共 {products} 个商品)",
    },
    "duplicates": {
        "en": (
            "{count} duplicate product ids skipped (the first occurrence wins), "
            "e.g. {example}"
        ),
        "zh": "跳过 {count} 个重复的商品ID (保留第一次出现), 例如 {example}",
    },
    "skipped_invalid": {
        "en": "{count} invalid records skipped, first: {first}",
        "zh": "跳过 {count} 条无效记录, 第一条: {first}",
    },
    "second_interrupt": {
        "en": "Second interrupt: skipping the wait",
        "zh": "再次收到中断信号: 不再等待",
    },
    "stale_temp_removed": {
        "en": "Removed {count} temporary files left by an interrupted run",
        "zh": "已清理上次中断留下的 {count} 个临时文件",
    },
    "inspect_none": {
        "en": "No pending tasks ({path} does not exist)",
        "zh": "没有未完成任务 ({path} 不存在)",
    },
    "inspect_products": {
        "en": "Pending tasks: {count} products",
        "zh": "未完成任务: {count} 个商品",
    },
    "inspect_images": {
        "en": "  images: {total} ({parts})",
        "zh": "  图片: {total} 张 ({parts})",
    },
    "inspect_file": {
        "en": "  file: {path} (saved {age} ago)",
        "zh": "  文件位置: {path} ({age} 前保存)",
    },
    "inspect_first": {"en": "  first ids: {ids}", "zh": "  前几个商品ID: {ids}"},
    "inspect_done": {
        "en": "Completed: {completed} products; failed images: {failed}",
        "zh": "已完成: {completed} 个商品; 失败图片: {failed} 张",
    },
    "demo_folder": {
        "en": "Demo: catalog {catalog}, images and state in {data_dir}",
        "zh": "演示: 商品目录 {catalog}, 图片和状态文件在 {data_dir}",
    },
    "demo_server": {
        "en": "Demo server on {url}; press Ctrl+C any time, then run the demo again",
        "zh": "演示服务器 {url}; 随时按 Ctrl+C 中断, 然后再次运行演示即可恢复",
    },
    "error_prefix": {"en": "error", "zh": "错误"},
    "col_main": {"en": "main {n}", "zh": "主图{n} 张"},
    "col_sku": {"en": "SKU {n}", "zh": "SKU图{n} 张"},
    "col_qc": {"en": "QC {n}", "zh": "QC图{n} 张"},
    "col_other": {"en": "{category} {n}", "zh": "{category}图{n} 张"},
    "label_products": {"en": "products", "zh": "商品"},
    "label_images": {"en": "images", "zh": "图片"},
    "label_failed": {"en": "failed", "zh": "失败"},
}


def detect_lang(environ: Mapping[str, str] | None = None) -> Lang:
    """Chinese when the locale says so (LC_ALL, then LC_MESSAGES, then LANG)."""
    env = os.environ if environ is None else environ
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name, "")
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


class Messages:
    """Looks up and formats catalog entries in one language."""

    def __init__(self, lang: Lang) -> None:
        self.lang: Lang = lang

    def __call__(self, key: str, **values: object) -> str:
        return _CATALOG[key][self.lang].format(**values)

    def category_count(self, category: str, n: int) -> str:
        key = f"col_{category}" if category in ("main", "sku", "qc") else "col_other"
        return self(key, n=n, category=category)


def keys() -> frozenset[str]:
    """Every message key, for the test that both languages are complete."""
    return frozenset(_CATALOG)


def text(key: str, lang: Lang) -> str:
    """The raw template of one entry, for tests and docs."""
    return _CATALOG[key][lang]
