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
    "resume_none": {
        "en": "No unfinished tasks in {path}: nothing to resume",
        "zh": "{path} 中没有未完成任务, 无需恢复",
    },
    "inspect_none_store": {
        "en": "No pending tasks in {path}",
        "zh": "{path} 中没有未完成任务",
    },
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
    "catalog_changed": {
        "en": (
            "{path} changed after it was checked: {count} records that no longer "
            "read were skipped, first: {first}"
        ),
        "zh": "{path} 在检查后被修改: 跳过 {count} 条无法再读取的记录, 第一条: {first}",
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
    "top_reasons": {"en": "  most common reasons:", "zh": "  主要失败原因:"},
    "top_reason": {"en": "    {reason}: {count}", "zh": "    {reason}: {count} 张"},
    "failures_none": {
        "en": "No failed images ({path})",
        "zh": "没有失败的图片 ({path})",
    },
    "failures_count": {
        "en": "{count} failed images in {products} products, listed in {path}",
        "zh": "{count} 张图片下载失败 (共 {products} 个商品)，详见 {path}",
    },
    "head_product": {"en": "product", "zh": "商品"},
    "head_category": {"en": "category", "zh": "类别"},
    "head_url": {"en": "URL", "zh": "URL"},
    "head_reason": {"en": "reason", "zh": "原因"},
    "head_attempts": {"en": "attempts", "zh": "尝试次数"},
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
    # ---- errors. An ImgfetchError("x", hint="y", **values) renders err_x; hint_y
    # with the same values. InvalidRecord("x") is reason_x, composed into an error.
    # Values from Python or the OS (strerror, json's "Expecting ',' delimiter")
    # stay as they come.
    "err_usage": {
        "en": "{detail} (see imgfetch --help)",
        "zh": "{detail} (参见 imgfetch --help)",
    },
    "err_internal": {
        "en": "internal error: {detail} (run with --verbose for details)",
        "zh": "内部错误: {detail} (加 --verbose 运行可查看详情)",
    },
    "err_not_whole_number": {
        "en": "{value!r} is not a whole number",
        "zh": "{value!r} 不是整数",
    },
    "err_not_number": {"en": "{value!r} is not a number", "zh": "{value!r} 不是数字"},
    "err_not_finite": {
        "en": "{value!r} is not a finite number",
        "zh": "{value!r} 不是有限的数字",
    },
    "err_negative": {
        "en": "{option} {value} is negative",
        "zh": "{option} {value} 是负数",
    },
    "hint_zero_or_more": {
        "en": "give {option} 0 or more",
        "zh": "{option} 请给 0 或更大的值",
    },
    "err_out_of_range": {
        "en": "{option} {value} is out of range",
        "zh": "{option} {value} 超出范围",
    },
    "hint_range": {"en": "use a value {bounds}", "zh": "请用 {bounds} 范围内的值"},
    "err_json_and_csv": {
        "en": "--json and --csv cannot be used together",
        "zh": "--json 和 --csv 不能同时使用",
    },
    "hint_one_format": {"en": "choose one of them", "zh": "请只选其中一个"},
    "err_faults": {
        "en": "--faults {value} is not between 0 and 1",
        "zh": "--faults {value} 不在 0 到 1 之间",
    },
    "err_bad_scheme": {
        "en": "--default-scheme {scheme!r} is not http or https",
        "zh": "--default-scheme {scheme!r} 不是 http 或 https",
    },
    "hint_scheme": {
        "en": "use --default-scheme https (or http)",
        "zh": "请用 --default-scheme https (或 http)",
    },
    "err_bad_header": {
        "en": "--header {header!r} is not a header",
        "zh": "--header {header!r} 不是有效的请求头",
    },
    "hint_header_form": {
        "en": "write it as 'Name: value', e.g. --header 'Accept-Language: en'",
        "zh": "请写成 'Name: value' 的形式, 例如 --header 'Accept-Language: zh-CN'",
    },
    "err_bad_url_option": {
        "en": "{option} {value!r} is not a URL with scheme {schemes}",
        "zh": "{option} {value!r} 不是以 {schemes} 开头的网址",
    },
    "hint_url_option": {
        "en": "give a full URL such as http://host:port/",
        "zh": "请给出完整的网址, 例如 http://host:port/",
    },
    "err_cookies_file": {
        "en": "--cookies {path}: {detail}",
        "zh": "--cookies {path}: {detail}",
    },
    "hint_cookies_format": {
        "en": "export the cookies as a Netscape cookies.txt file",
        "zh": "请把 cookies 导出为 Netscape 格式的 cookies.txt 文件",
    },
    "err_no_pillow": {
        "en": "--verify-decode needs Pillow, which is not installed",
        "zh": "--verify-decode 需要 Pillow, 但尚未安装",
    },
    "hint_install_decode": {
        "en": "run: pip install 'imgfetch[decode]'",
        "zh": "请运行: pip install 'imgfetch[decode]'",
    },
    "err_field_not_pair": {
        "en": "--field {spec!r} is not CATEGORY=FIELD",
        "zh": "--field {spec!r} 不是 CATEGORY=FIELD 的形式",
    },
    "hint_field_example": {
        "en": "write it like --field qc=qc_photos",
        "zh": "请写成 --field qc=qc_photos 这样",
    },
    "err_field_category": {
        "en": "--field category {category!r} is not a plain name",
        "zh": "--field 的类别 {category!r} 不是简单的名称",
    },
    "hint_category_chars": {
        "en": "use lower-case letters, digits and _ (it becomes part of file names)",
        "zh": "只用小写字母、数字和 _ (它会成为文件名的一部分)",
    },
    "err_unknown_backend": {
        "en": "unknown backend {name!r}",
        "zh": "未知的存储后端 {name!r}",
    },
    "hint_backend_suggest": {
        "en": "did you mean {close!r}? choose one of: {names}",
        "zh": "是不是想用 {close!r}? 可选: {names}",
    },
    "hint_backend_choose": {"en": "choose one of: {names}", "zh": "可选: {names}"},
    "exported": {
        "en": (
            "Exported the {store} store to {path}: {completed} completed, "
            "{pending} pending products, {failed} failed images"
        ),
        "zh": (
            "已将 {store} 存储导出到 {path}: 已完成 {completed} 个商品, "
            "未完成 {pending} 个商品, 失败图片 {failed} 张"
        ),
    },
    "export_is_store": {
        "en": "{path} already holds the JSON store's files; nothing to export",
        "zh": "{path} 中已是 JSON 存储的文件, 无需导出",
    },
    "migrated": {
        "en": (
            "Migrated {path} from {source} to {target}: {completed} completed, "
            "{pending} pending products, {failed} failed images"
        ),
        "zh": (
            "已将 {path} 从 {source} 转换为 {target}: 已完成 {completed} 个商品, "
            "未完成 {pending} 个商品, 失败图片 {failed} 张"
        ),
    },
    "migrate_already": {
        "en": "{path} already uses the {name} store; nothing to migrate",
        "zh": "{path} 已在使用 {name} 存储, 无需转换",
    },
    "err_migrate_same": {
        "en": "--from and --to are both {name!r}",
        "zh": "--from 和 --to 都是 {name!r}",
    },
    "hint_migrate_pick": {
        "en": "name the store the folder uses now, and a different one to convert to",
        "zh": "请指定目录当前使用的存储, 以及要转换成的另一种存储",
    },
    "err_store_mismatch": {
        "en": "{path} holds state written by the {found} store, not by {asked}",
        "zh": "{path} 中的状态由 {found} 存储写入, 不是 {asked}",
    },
    "hint_store_mismatch": {
        "en": (
            "use --backend {found}, or convert the folder first: "
            "imgfetch migrate --from {found} --to {asked}"
        ),
        "zh": (
            "请使用 --backend {found}, 或先转换该目录: "
            "imgfetch migrate --from {found} --to {asked}"
        ),
    },
    "err_store_symlink": {
        "en": "{path} is a symbolic link; imgfetch keeps its state only in real files",
        "zh": "{path} 是符号链接; imgfetch 只在真实文件中保存状态",
    },
    "hint_store_symlink": {
        "en": "replace the link with the file or folder it points to, then run again",
        "zh": "请用链接指向的文件或目录替换该链接, 然后重新运行",
    },
    "err_store_file_damaged": {
        "en": '{path} is damaged (expected {{"store": NAME}})',
        "zh": '{path} 已损坏 (应为 {{"store": 名称}})',
    },
    "err_store_file_unknown": {
        "en": "{path} names a store this imgfetch does not have: {name!r}",
        "zh": "{path} 指定的存储不存在: {name!r}",
    },
    "hint_store_file": {
        "en": (
            "it records which store wrote this folder; write "
            '{{"store": "json"}} into it naming one of: {names}'
        ),
        "zh": ('该文件记录写入此目录的存储; 请写入 {{"store": "json"}}, 可选: {names}'),
    },
    "err_demo_port": {
        "en": "cannot serve the demo on 127.0.0.1:{port} ({detail})",
        "zh": "无法在 127.0.0.1:{port} 上启动演示服务器 ({detail})",
    },
    "hint_demo_port": {
        "en": "pass --port with a free port; keep the same port to resume a demo",
        "zh": "请用 --port 指定一个空闲端口; 恢复演示时请使用同一个端口",
    },
    # the input catalog
    "err_input_not_found": {
        "en": "input file {path!r} not found",
        "zh": "找不到输入文件 {path!r}",
    },
    "hint_pass_catalog": {
        "en": "pass the path of your catalog",
        "zh": "请给出商品目录文件的路径",
    },
    "err_input_is_dir": {
        "en": "input {path!r} is a directory",
        "zh": "输入 {path!r} 是一个目录",
    },
    "hint_pass_file_inside": {
        "en": "pass the catalog file inside it",
        "zh": "请给出其中的商品目录文件",
    },
    "err_input_unreadable": {
        "en": "cannot read input {path!r}: {detail}",
        "zh": "无法读取输入 {path!r}: {detail}",
    },
    "err_not_utf8": {
        "en": "{path}: byte {offset} is not UTF-8",
        "zh": "{path}: 第 {offset} 字节不是 UTF-8 编码",
    },
    "hint_save_utf8": {
        "en": "save the catalog as UTF-8",
        "zh": "请将商品目录保存为 UTF-8",
    },
    "err_file_empty": {"en": "{path}: the file is empty", "zh": "{path}: 文件是空的"},
    "hint_expect_json_lines": {
        "en": "expected one JSON object a line",
        "zh": "应为每行一个 JSON 对象",
    },
    "hint_expect_array": {"en": "expected a JSON array", "zh": "应为一个 JSON 数组"},
    "err_top_level": {
        "en": "{path}: the top level is {kind}, not a list of products",
        "zh": "{path}: 顶层是 {kind}, 不是商品列表",
    },
    "hint_write_array": {
        "en": "write a JSON array [ {{...}}, ... ] or JSON Lines in a .jsonl file",
        "zh": "请写成 JSON 数组 [ {{...}}, ... ], 或把 JSON Lines 存为 .jsonl 文件",
    },
    "err_looks_like_jsonl": {
        "en": (
            "{path}: line {line}: a second top-level object; this looks like "
            "JSON Lines, not a JSON array"
        ),
        "zh": (
            "{path}: 第 {line} 行: 第二个顶层对象; 这像是 JSON Lines, 而不是 JSON 数组"
        ),
    },
    "hint_rename_jsonl": {
        "en": "rename the file to .jsonl, or wrap the records in [ ... ]",
        "zh": "请把文件改名为 .jsonl, 或用 [ ... ] 包住这些记录",
    },
    "err_invalid_json": {
        "en": "{path}: line {line}, column {column}: invalid JSON ({detail})",
        "zh": "{path}: 第 {line} 行第 {column} 列: JSON 格式错误 ({detail})",
    },
    "hint_fix_json": {
        "en": "fix the file (a truncated download or a missing comma is common)",
        "zh": "请修正该文件 (常见原因: 下载不完整或缺少逗号)",
    },
    "err_undecodable": {
        "en": "{path}: line {line}: {reason}",
        "zh": "{path}: 第 {line} 行: {reason}",
    },
    "hint_not_a_catalog": {
        "en": "fix the file (is it really a product catalog?)",
        "zh": "请修正该文件 (它真的是商品目录吗?)",
    },
    "err_catalog_record": {
        "en": "{path}: {where} {reason}",
        "zh": "{path}: {where} {reason}",
    },
    "hint_fix_line": {
        "en": "fix or remove that line, or pass --skip-invalid to skip it",
        "zh": "请修正或删除该行, 或加 --skip-invalid 跳过它",
    },
    "hint_fix_record": {
        "en": "fix the record, or pass --skip-invalid to skip bad records",
        "zh": "请修正该记录, 或加 --skip-invalid 跳过无效记录",
    },
    # where a record is, and why it cannot become a product (InvalidRecord)
    "at_record": {
        "en": "record {number} (line {line}):",
        "zh": "第 {number} 条记录 (第 {line} 行):",
    },
    "at_line": {"en": "line {line}:", "zh": "第 {line} 行:"},
    "at_line_column": {
        "en": "line {line}, column {column}:",
        "zh": "第 {line} 行第 {column} 列:",
    },
    "at_where": {"en": "{where} {reason}", "zh": "{where} {reason}"},
    "reason_not_object": {
        "en": "is {kind}, not an object",
        "zh": "是 {kind}, 不是对象",
    },
    "reason_no_id": {
        "en": "has no product id (looked for {names})",
        "zh": "没有商品ID (查找了 {names})",
    },
    "reason_id_type": {
        "en": "field {name!r} is {kind}, not an id",
        "zh": "字段 {name!r} 是 {kind}, 不是ID",
    },
    "reason_id_value": {
        "en": "field {name!r} is {value!r}, not an id",
        "zh": "字段 {name!r} 的值 {value!r} 不是ID",
    },
    "reason_id_empty": {"en": "field {name!r} is empty", "zh": "字段 {name!r} 是空的"},
    "reason_field_type": {
        "en": "field {name!r} is {kind}; expected a list of URLs",
        "zh": "字段 {name!r} 是 {kind}; 应为 URL 列表",
    },
    "reason_url_type": {
        "en": "{where}.{key} is {kind}",
        "zh": "{where}.{key} 是 {kind}",
    },
    "reason_no_url_key": {
        "en": "{where} is an object without {keys}",
        "zh": "{where} 是不含 {keys} 的对象",
    },
    "reason_item_type": {
        "en": "{where} is {kind}; expected a URL or an object with url",
        "zh": "{where} 是 {kind}; 应为 URL 或带 url 的对象",
    },
    "reason_invalid_json": {
        "en": "invalid JSON ({detail})",
        "zh": "JSON 格式错误 ({detail})",
    },
    "reason_too_deep": {
        "en": "JSON nested too deeply to read",
        "zh": "JSON 嵌套太深, 无法读取",
    },
    "reason_too_many_digits": {
        "en": "a number has too many digits to read",
        "zh": "某个数字位数太多, 无法读取",
    },
    "reason_too_long": {
        "en": "record too long (over {size} MiB)",
        "zh": "记录太长 (超过 {size} MiB)",
    },
    "reason_not_list": {"en": "not a list", "zh": "不是列表"},
    "reason_failure_not_object": {
        "en": "a failure is not an object",
        "zh": "某条失败记录不是对象",
    },
    "reason_failure_missing": {
        "en": "a failure has no {key!r}",
        "zh": "某条失败记录缺少 {key!r}",
    },
    "reason_failure_types": {
        "en": (
            "a failure's fields have the wrong types (category, url and reason are "
            "text; index and attempts are whole numbers, 0 or more)"
        ),
        "zh": (
            "某条失败记录的字段类型不对 (category、url、reason 应为文本; "
            "index、attempts 应为非负整数)"
        ),
    },
    "reason_bad_category": {
        "en": "category {category!r} is not a category name",
        "zh": "类别 {category!r} 不是有效的类别名",
    },
    "reason_bad_index": {
        "en": "index {index!r} is not a position from 1",
        "zh": "index {index!r} 不是从 1 开始的位置",
    },
    "reason_pending_item": {
        "en": 'is not {{"id": "...", "record": {{...}}}}',
        "zh": '不是 {{"id": "...", "record": {{...}}}} 的形式',
    },
    # the data directory and its state files
    "err_busy": {
        "en": "data directory {path} is in use by another imgfetch",
        "zh": "数据目录 {path} 正被另一个 imgfetch 使用",
    },
    "hint_busy": {
        "en": "wait for it to finish, or use another --data-dir",
        "zh": "请等它结束, 或换一个 --data-dir",
    },
    "err_lock_failed": {
        "en": "cannot lock data directory {path}: {detail}",
        "zh": "无法锁定数据目录 {path}: {detail}",
    },
    "hint_local_disk": {
        "en": "check that it is writable and on a local disk",
        "zh": "请确认它可写并且在本地磁盘上",
    },
    "err_data_dir_is_file": {
        "en": "--data-dir {path!r} is a file, not a directory",
        "zh": "--data-dir {path!r} 是文件, 不是目录",
    },
    "hint_pass_dir": {"en": "pass a directory path", "zh": "请给出一个目录的路径"},
    "err_data_dir_create": {
        "en": "cannot create data directory {path!r}: {detail}",
        "zh": "无法创建数据目录 {path!r}: {detail}",
    },
    "hint_writable_data_dir": {
        "en": "choose a writable --data-dir",
        "zh": "请选择一个可写的 --data-dir",
    },
    "err_no_data_dir": {
        "en": "data directory {path!r} does not exist",
        "zh": "数据目录 {path!r} 不存在",
    },
    "hint_pass_data_dir": {
        "en": "pass the --data-dir of your download",
        "zh": "请给出下载时用的 --data-dir",
    },
    "err_write_state": {
        "en": "cannot write state in {path}: {detail}",
        "zh": "无法在 {path} 中写入状态文件: {detail}",
    },
    "hint_free_space": {
        "en": (
            "free disk space or fix permissions, then run again (nothing saved "
            "before is lost)"
        ),
        "zh": "请释放磁盘空间或修正权限, 然后再次运行 (之前保存的内容不会丢失)",
    },
    "err_write_images": {
        "en": "cannot write images in {path}: {detail}",
        "zh": "无法在 {path} 中写入图片: {detail}",
    },
    "hint_free_space_resume": {
        "en": "free disk space or fix permissions, then run again to resume",
        "zh": "请释放磁盘空间或修正权限, 然后再次运行以继续",
    },
    "err_data_dir_gone": {
        "en": (
            "data directory {path} was deleted or replaced while imgfetch was "
            "running; nothing more was written to it"
        ),
        "zh": "数据目录 {path} 在 imgfetch 运行时被删除或替换; 之后没有再写入任何内容",
    },
    "hint_data_dir_gone": {
        "en": "run the command again to start over (whole images left are reused)",
        "zh": "请再次运行该命令从头开始 (目录中留下的完整图片会被复用)",
    },
    "err_state_unreadable": {
        "en": "cannot read {path}: {detail}",
        "zh": "无法读取 {path}: {detail}",
    },
    "err_state_empty": {
        "en": "{path} is empty (expected {shape})",
        "zh": "{path} 是空的 (应为{shape})",
    },
    "err_state_top_level": {
        "en": "{path}: the top level is {kind}, expected {shape}",
        "zh": "{path}: 顶层是 {kind}, 应为{shape}",
    },
    "shape_products": {"en": "a JSON array of products", "zh": "商品的 JSON 数组"},
    "shape_ids": {"en": "an object of product ids", "zh": "以商品ID为键的对象"},
    "err_file_reason": {"en": "{path}: {reason}", "zh": "{path}: {reason}"},
    "err_state_record": {
        "en": "{path}: record {number} {reason}",
        "zh": "{path}: 第 {number} 条记录: {reason}",
    },
    "err_mapping_entry": {
        "en": (
            '{path}: the entry of product {pid!r} is not {{"category": ["path", ...]}}'
        ),
        "zh": '{path}: 商品 {pid!r} 的条目不是 {{"category": ["path", ...]}} 的形式',
    },
    "err_failures_damaged": {
        "en": "{path}: the failures of product {pid!r} are damaged ({reason})",
        "zh": "{path}: 商品 {pid!r} 的失败记录已损坏 ({reason})",
    },
    "shape_marker": {
        "en": 'a product marker {{"id": ...}}',
        "zh": '商品标记 {{"id": ...}}',
    },
    "err_marker_field": {
        "en": "{path}: field {field!r} is missing or has the wrong type",
        "zh": "{path}: 字段 {field!r} 缺失或类型不对",
    },
    "err_marker_misplaced": {
        "en": "{path}: holds product {pid!r}, whose marker has another file name",
        "zh": "{path}: 存放的是商品 {pid!r}, 但它的标记文件应是另一个文件名",
    },
    "hint_damaged": {
        "en": (
            "imgfetch left it untouched; restore it from a backup, repair the JSON, "
            "or move it out of the data directory to start that part over (saved "
            "images stay)"
        ),
        "zh": (
            "imgfetch 没有改动它; 请从备份恢复、修复其中的 JSON, "
            "或把它移出数据目录以重新开始这部分 (已保存的图片会保留)"
        ),
    },
    "hint_pending_fields": {
        "en": (
            "fix that record, or pass the same --field options as the run that saved it"
        ),
        "zh": "请修正该记录, 或使用与保存它的那次运行相同的 --field 选项",
    },
    "hint_pending_id_field": {
        "en": (
            "if the catalog's id field changed, pass the same --id-field as before; "
            "otherwise {damaged}"
        ),
        "zh": "如果商品目录的ID字段变了, 请使用与之前相同的 --id-field; 否则 {damaged}",
    },
    # the SQLite store's database
    "err_state_not_db": {
        "en": "{path} is not an SQLite database ({detail})",
        "zh": "{path} 不是 SQLite 数据库 ({detail})",
    },
    "err_state_db_damaged": {
        "en": "{path} is damaged ({detail})",
        "zh": "{path} 已损坏 ({detail})",
    },
    "hint_damaged_db": {
        "en": (
            "imgfetch left it untouched; restore it from a backup (with its -wal "
            "file, if any), or move both out of the data directory to start that "
            "part over (saved images stay)"
        ),
        "zh": (
            "imgfetch 没有改动它; 请从备份恢复 (连同它的 -wal 文件, 如果有), "
            "或把它们移出数据目录以重新开始这部分 (已保存的图片会保留)"
        ),
    },
    "err_state_foreign_db": {
        "en": "{path} is an SQLite database that imgfetch did not write",
        "zh": "{path} 是一个不由 imgfetch 写入的 SQLite 数据库",
    },
    "hint_foreign_db": {
        "en": "move it out of the data directory, or choose another --data-dir",
        "zh": "请把它移出数据目录, 或换一个 --data-dir",
    },
    "err_state_db_version": {
        "en": (
            "{path} has state format version {version!r}; this imgfetch reads "
            "version {supported}"
        ),
        "zh": (
            "{path} 的状态格式版本是 {version!r}; "
            "当前 imgfetch 只能读取版本 {supported}"
        ),
    },
    "hint_db_version": {
        "en": (
            "use the imgfetch release that wrote it, or move it out of the data "
            "directory to start over (saved images stay)"
        ),
        "zh": (
            "请使用写入它的 imgfetch 版本, "
            "或把它移出数据目录以重新开始 (已保存的图片会保留)"
        ),
    },
    "err_state_orphan_wal": {
        "en": "{path} is there but the database it belongs to is missing",
        "zh": "{path} 存在, 但它所属的数据库不见了",
    },
    "hint_orphan_wal": {
        "en": (
            "put the database back beside it, or move {path} out of the data "
            "directory too"
        ),
        "zh": "请把数据库放回它旁边, 或把 {path} 也移出数据目录",
    },
    "err_pending_damaged": {
        "en": "{path}: the pending record of product {pid!r} is damaged ({reason})",
        "zh": "{path}: 商品 {pid!r} 的待处理记录已损坏 ({reason})",
    },
    "err_saved_image_damaged": {
        "en": "{path}: a saved image of product {pid!r} is damaged ({reason})",
        "zh": "{path}: 商品 {pid!r} 的某条已保存图片记录已损坏 ({reason})",
    },
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

    def __call__(self, key: str, /, **values: object) -> str:
        resolved = {
            name: value.render(self) if isinstance(value, Text) else value
            for name, value in values.items()
        }
        return _CATALOG[key][self.lang].format(**resolved)

    def category_count(self, category: str, n: int) -> str:
        key = f"col_{category}" if category in ("main", "sku", "qc") else "col_other"
        return self(key, n=n, category=category)


class Text:
    """A catalog entry and its values, not yet put into a language.

    Errors carry these and are rendered where the language is known (the CLI
    boundary). A value may itself be a Text: a reason inside an error message.
    `str()` gives English, for logs.
    """

    __slots__ = ("key", "values")

    def __init__(self, key: str, /, **values: object) -> None:
        self.key = key
        self.values = values

    def render(self, msg: Messages) -> str:
        return msg(self.key, **self.values)

    def __str__(self) -> str:
        return self.render(Messages("en"))

    def __repr__(self) -> str:
        return f"Text({self.key!r}, **{self.values!r})"


def keys() -> frozenset[str]:
    """Every message key, for the test that both languages are complete."""
    return frozenset(_CATALOG)


def text(key: str, lang: Lang) -> str:
    """The raw template of one entry, for tests and docs."""
    return _CATALOG[key][lang]
