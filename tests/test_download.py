"""`imgfetch download` end to end against the real local image server."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    assert_consistent,
    imgfetch_env,
    load_json,
    make_catalog,
    run_imgfetch,
    write_catalog,
)

from imgfetch import cli, saving
from imgfetch.paths import product_dir_name
from imgfetch.testserver import ImageServer

ZH = "zh_CN.UTF-8"
ANSI = re.compile(r"\x1b[\[\]()]")
CJK = re.compile(r"[\u4e00-\u9fff]")

# What a test expects of one product: category -> URL of each slot in input order,
# None for a slot that must have failed.
Expected = dict[str, dict[str, list[str | None]]]


def download(
    source: Path, data: Path, *args: str, lang: str = "en_US.UTF-8", **kw: Any
) -> subprocess.CompletedProcess[str]:
    return run_imgfetch(
        ["download", str(source), "-d", str(data), "--workers", "4", *args],
        lang=lang,
        timeout=60,
        **kw,
    )


def assert_mapping(data: Path, server: ImageServer, expected: Expected) -> dict:
    """The mapping names exactly the expected files, holding the bytes served."""
    mapping = load_json(data / "image_mapping.json")
    assert set(mapping) == set(expected)
    for pid, categories in expected.items():
        entry = mapping[pid]
        assert list(entry) == list(categories), "every category key, in order"
        folder = re.escape(product_dir_name(pid))
        for category, urls in categories.items():
            slots = [(n, url) for n, url in enumerate(urls, 1) if url is not None]
            paths = entry[category]
            assert len(paths) == len(slots), (pid, category, paths)
            for rel, (n, url) in zip(paths, slots, strict=True):
                # relative to the data directory, n from 1 in input order
                assert re.fullmatch(rf"images/{folder}/{category}_{n}\.[a-z]+", rel)
                assert (data / rel).read_bytes() == server.expected_bytes(url)
    assert not list(data.rglob(".imgfetch-*.tmp"))
    return mapping


def stdout_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


# -------------------------------------------------- the spec's happy path


def test_json_array_chinese_progress_and_layout(
    tmp_path: Path, server: ImageServer
) -> None:
    catalog = make_catalog(server, 3)  # main 2, sku 1, qc 1
    # main_1 of the first product finishes last: the list is still in input order
    catalog[0]["main_images"][0] = server.url("slow-first", delay=0.4)
    source = write_catalog(tmp_path / "products.json", catalog)
    data = tmp_path / "data"
    result = download(source, data, lang=ZH)  # --progress auto, not a TTY
    assert result.returncode == 0, result.stderr

    assert not ANSI.search(result.stdout) and not ANSI.search(result.stderr)
    line_re = re.compile(
        r"进度: (\d+)/3 - 商品 (p\d{4}): 主图2 张, SKU图1 张, QC图1 张 \(共4张\)"
    )
    progress = [m for m in map(line_re.fullmatch, stdout_lines(result)) if m]
    assert [int(m[1]) for m in progress] == [1, 2, 3]
    assert sorted(m[2] for m in progress) == ["p0000", "p0001", "p0002"]
    lines = stdout_lines(result)
    assert "图片下载程序" in lines and "开始下载图片..." in lines
    assert "映射文件已保存: image_mapping.json (共 3 个商品)" in lines
    assert lines[-1].startswith("✓ 所有任务已完成")
    assert not [x for x in lines if x.startswith(("Progress", "Mapping"))]

    mapping = assert_consistent(data, catalog, server, finished=True)
    assert mapping["p0000"] == {
        "main": ["images/p0000/main_1.jpg", "images/p0000/main_2.jpg"],
        "sku": ["images/p0000/sku_1.jpg"],
        "qc": ["images/p0000/qc_1.jpg"],
    }
    assert not (data / "failed_images.json").exists()
    assert not (data / "pending_tasks.json").exists()


def test_jsonl_id_fallbacks_and_numeric_ids(
    tmp_path: Path, server: ImageServer
) -> None:
    def imgs(name: str) -> list[str]:
        return [server.url(f"{name}-1"), server.url(f"{name}-2", fmt="png")]

    records = [
        {"item_id": "i-1", "main_images": imgs("a")},
        {"product_id": 2002, "main_images": imgs("b")},
        {"num_iid": 991466016025, "sku_images": imgs("c")},
        {"goods_id": "g_4", "qc_images": imgs("d")},
        {"id": 5, "item_id": "not-this", "main_images": imgs("e")},
        {"id": None, "item_id": "i-6", "main_images": imgs("f")},
        {"id": 7.0, "main_images": []},
    ]
    source = tmp_path / "products.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    data = tmp_path / "data"
    result = download(source, data)
    assert result.returncode == 0, result.stderr
    none: list[str | None] = []
    assert_mapping(
        data,
        server,
        {
            "i-1": {"main": imgs("a"), "sku": none, "qc": none},
            "2002": {"main": imgs("b"), "sku": none, "qc": none},
            "991466016025": {"main": none, "sku": imgs("c"), "qc": none},
            "g_4": {"main": none, "sku": none, "qc": imgs("d")},
            "5": {"main": imgs("e"), "sku": none, "qc": none},
            "i-6": {"main": imgs("f"), "sku": none, "qc": none},
            "7": {"main": none, "sku": none, "qc": none},
        },
    )
    assert (data / "images" / "991466016025" / "sku_2.png").is_file()


def test_id_field_option(tmp_path: Path, server: ImageServer) -> None:
    records = [
        {"id": "x1", "sku_code": "S-1", "main_images": [server.url("s1")]},
        {"id": "x2", "sku_code": 77, "main_images": [server.url("s2")]},
    ]
    source = write_catalog(tmp_path / "c.json", records)
    data = tmp_path / "data"
    result = download(source, data, "--id-field", "sku_code")
    assert result.returncode == 0, result.stderr
    assert_mapping(
        data,
        server,
        {
            "S-1": {"main": [server.url("s1")], "sku": [], "qc": []},
            "77": {"main": [server.url("s2")], "sku": [], "qc": []},
        },
    )


def test_field_override_and_added_category(tmp_path: Path, server: ImageServer) -> None:
    ignored = server.url("ignored")
    records = [
        {
            "id": "a",
            "main_images": [ignored],
            "pics": [server.url("a-pic")],
            "detail_images": [server.url("a-d1"), {"src": server.url("a-d2")}],
        },
        {"id": "b", "pics": server.url("b-pic"), "sku_images": [server.url("b-s")]},
    ]
    source = write_catalog(tmp_path / "c.json", records)
    data = tmp_path / "data"
    result = download(
        source, data, "--field", "main=pics", "--field", "detail=detail_images"
    )
    assert result.returncode == 0, result.stderr
    assert_mapping(
        data,
        server,
        {
            "a": {
                "main": [server.url("a-pic")],
                "sku": [],
                "qc": [],
                "detail": [server.url("a-d1"), server.url("a-d2")],
            },
            "b": {
                "main": [server.url("b-pic")],
                "sku": [server.url("b-s")],
                "qc": [],
                "detail": [],
            },
        },
    )
    assert server.requests_for(ignored) == 0
    assert (
        "Progress: 1/2 - product a: main 1, SKU 0, QC 0, detail 2 (3 images)"
        in stdout_lines(result)
        or "Progress: 2/2 - product a: main 1, SKU 0, QC 0, detail 2 (3 images)"
        in stdout_lines(result)
    )


def test_url_field_shapes_and_protocol_relative(
    tmp_path: Path, server: ImageServer
) -> None:
    def url(name: str) -> str:
        return server.url(name)

    def rel(name: str) -> str:
        return url(name).removeprefix("http:")  # //127.0.0.1:port/img/...

    records = [
        {"id": "strings", "main_images": [url("s1"), url("s2")]},
        {
            "id": "objects",
            "sku_images": [
                {"url": url("o1")},
                {"image": url("o2")},
                {"src": url("o3")},
            ],
        },
        {"id": "single", "qc_images": url("q1")},
        {"id": "empty", "main_images": None, "sku_images": [], "qc_images": ""},
        {"id": "missing", "title": "no image fields at all"},
        {
            "id": "protorel",
            "main_images": [rel("r1")],
            "sku_images": [{"url": rel("r2")}],
            "qc_images": f"  {rel('r3')} ",
        },
        {"id": "holes", "main_images": [None, url("h1"), "", " ", url("h2")]},
    ]
    source = write_catalog(tmp_path / "c.json", records)
    data = tmp_path / "data"
    result = download(source, data, "--default-scheme", "http")
    assert result.returncode == 0, result.stderr
    empty: list[str | None] = []
    assert_mapping(
        data,
        server,
        {
            "strings": {"main": [url("s1"), url("s2")], "sku": empty, "qc": empty},
            "objects": {
                "main": empty,
                "sku": [url(f"o{i}") for i in (1, 2, 3)],
                "qc": empty,
            },
            "single": {"main": empty, "sku": empty, "qc": [url("q1")]},
            "empty": {"main": empty, "sku": empty, "qc": empty},
            "missing": {"main": empty, "sku": empty, "qc": empty},
            "protorel": {"main": [url("r1")], "sku": [url("r2")], "qc": [url("r3")]},
            "holes": {"main": [url("h1"), url("h2")], "sku": empty, "qc": empty},
        },
    )
    assert not (data / "failed_images.json").exists()


def test_extension_comes_from_the_bytes(tmp_path: Path, server: ImageServer) -> None:
    base = server.base_url
    urls = [
        f"{base}/img/s1.jpg?fmt=png&size=3000",  # says .jpg, is a PNG
        f"{base}/img/s2.png?fmt=gif",  # says .png, is a GIF
        f"{base}/img/s3.jpg?fmt=webp",
        f"{base}/img/s4?fmt=bmp",  # no extension at all
        f"{base}/img/s5.gif?fmt=jpeg",
        f"{base}/img/s6.jpg?fmt=avif",
        f"{base}/img/s7.webp?fmt=tiff",
    ]
    source = write_catalog(tmp_path / "c.json", [{"id": "x", "main_images": urls}])
    data = tmp_path / "data"
    result = download(source, data)
    assert result.returncode == 0, result.stderr
    mapping = assert_mapping(data, server, {"x": {"main": urls, "sku": [], "qc": []}})
    exts = [p.rpartition(".")[2] for p in mapping["x"]["main"]]
    assert exts == ["png", "gif", "webp", "bmp", "jpg", "avif", "tif"]


# --------------------------------------------------------------- failures


def test_unfetchable_urls_and_html_fail_only_that_image(
    tmp_path: Path, server: ImageServer
) -> None:
    html = server.url("challenge", html=1)
    bad = [
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        html,
    ]
    records = [
        {
            "id": "f",
            "main_images": [server.url("f-1"), *bad, server.url("f-6")],
            "sku_images": [server.url("f-s1")],
        },
        {"id": "g", "main_images": [server.url("g-1")]},
    ]
    source = write_catalog(tmp_path / "c.json", records)
    data = tmp_path / "data"
    result = download(source, data)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr

    main: list[str | None] = [
        server.url("f-1"),
        None,
        None,
        None,
        None,
        server.url("f-6"),
    ]
    assert_mapping(
        data,
        server,
        {
            "f": {"main": main, "sku": [server.url("f-s1")], "qc": []},
            "g": {"main": [server.url("g-1")], "sku": [], "qc": []},
        },
    )
    # the HTML page was not saved under any name
    assert sorted(p.name for p in (data / "images" / "f").iterdir()) == [
        "main_1.jpg",
        "main_6.jpg",
        "sku_1.jpg",
    ]
    failed = load_json(data / "failed_images.json")
    assert list(failed) == ["f"]
    assert [(f["category"], f["index"], f["url"]) for f in failed["f"]] == [
        ("main", n, url) for n, url in zip((2, 3, 4, 5), bad, strict=True)
    ]
    reasons = [f["reason"] for f in failed["f"]]
    for reason, scheme in zip(reasons, ("file", "data", "javascript"), strict=False):
        assert scheme in reason
    assert "HTML" in reasons[3]
    assert server.requests_for(html) >= 1
    assert not (data / "pending_tasks.json").exists()
    progress_f = [x for x in stdout_lines(result) if "product f:" in x]
    assert len(progress_f) == 1 and "4 failed" in progress_f[0]
    assert any("failed_images.json" in x for x in stdout_lines(result))


def test_retry_failed_fetches_just_the_failed_images(
    tmp_path: Path, server: ImageServer
) -> None:
    ok1, ok3 = server.url("r-main-1"), server.url("r-main-3")
    gone2 = server.url("r-main-2", fail="404:1")  # 404 once, then served
    gone_sku = server.url("r-sku-1", fail="404:1")
    other = server.url("s-main-1")
    catalog = [
        {"id": "r", "main_images": [ok1, gone2, ok3], "sku_images": [gone_sku]},
        {"id": "s", "main_images": [other]},
    ]
    source = write_catalog(tmp_path / "c.json", catalog)
    data = tmp_path / "data"

    first = download(source, data)
    assert first.returncode == 1, first.stderr
    assert_mapping(
        data,
        server,
        {
            "r": {"main": [ok1, None, ok3], "sku": [None], "qc": []},
            "s": {"main": [other], "sku": [], "qc": []},
        },
    )
    failed = load_json(data / "failed_images.json")
    assert [(f["category"], f["index"], f["url"]) for f in failed["r"]] == [
        ("main", 2, gone2),
        ("sku", 1, gone_sku),
    ]
    assert "404" in failed["r"][0]["reason"]
    s_entry = load_json(data / "image_mapping.json")["s"]

    retry = run_imgfetch(
        ["download", "--retry-failed", "-d", str(data), "-w", "4"], timeout=60
    )
    assert retry.returncode == 0, retry.stderr
    mapping = assert_mapping(
        data,
        server,
        {
            "r": {"main": [ok1, gone2, ok3], "sku": [gone_sku], "qc": []},
            "s": {"main": [other], "sku": [], "qc": []},
        },
    )
    assert mapping["r"]["main"] == [f"images/r/main_{n}.jpg" for n in (1, 2, 3)]
    assert mapping["s"] == s_entry
    assert not (data / "failed_images.json").exists()
    for url in (ok1, ok3, other):
        assert server.requests_for(url) == 1, url  # not fetched again
    assert server.requests_for(gone2) == 2 and server.requests_for(gone_sku) == 2
    assert_consistent(data, catalog, server, finished=True)

    # nothing left to retry: says so, exit 0, nothing changes
    before = (data / "image_mapping.json").read_bytes()
    again = run_imgfetch(["download", "--retry-failed", "-d", str(data)])
    assert again.returncode == 0, again.stderr
    assert "nothing to retry" in again.stdout
    assert (data / "image_mapping.json").read_bytes() == before


# ------------------------------------------------------- progress and lang


def test_progress_none_prints_no_progress_lines(
    tmp_path: Path, server: ImageServer
) -> None:
    catalog = make_catalog(server, 3, main=1, sku=0, qc=0)
    source = write_catalog(tmp_path / "c.json", catalog)
    data = tmp_path / "data"
    result = download(source, data, "--progress", "none", lang=ZH)
    assert result.returncode == 0, result.stderr
    assert not [x for x in stdout_lines(result) if x.startswith(("进度", "Progress"))]
    assert "映射文件已保存: image_mapping.json (共 3 个商品)" in stdout_lines(result)
    assert not ANSI.search(result.stdout + result.stderr)
    assert_consistent(data, catalog, server, finished=True)


def test_progress_plain_is_the_spec_format(tmp_path: Path, server: ImageServer) -> None:
    catalog = make_catalog(server, 2, main=2, sku=2, qc=2)
    source = write_catalog(tmp_path / "c.json", catalog)
    result = download(source, tmp_path / "data", "--progress", "plain", lang=ZH)
    assert result.returncode == 0, result.stderr
    progress = [x for x in stdout_lines(result) if x.startswith("进度")]
    pattern = re.compile(
        r"进度: (\d)/2 - 商品 (p000[01]): 主图2 张, SKU图2 张, QC图2 张 \(共6张\)"
    )
    matches = [pattern.fullmatch(x) for x in progress]
    assert all(matches), progress
    assert [m[1] for m in matches if m] == ["1", "2"]
    assert {m[2] for m in matches if m} == {"p0000", "p0001"}


@pytest.mark.parametrize(
    ("env", "args", "chinese"),
    [
        # a Chinese locale, overridden by --lang en
        ({"LANG": ZH}, ["--lang", "en"], False),
        # an English locale, overridden by --lang zh
        ({"LANG": "en_US.UTF-8"}, ["--lang", "zh"], True),
        # LC_ALL wins over LANG, as in every POSIX program
        ({"LANG": "en_US.UTF-8", "LC_ALL": "zh_CN.UTF-8"}, [], True),
        # C locale: English
        ({"LANG": "C.UTF-8"}, [], False),
    ],
)
def test_language_choice(
    tmp_path: Path,
    server: ImageServer,
    env: dict[str, str],
    args: list[str],
    chinese: bool,
) -> None:
    catalog = make_catalog(server, 2, main=1, sku=1, qc=0)
    source = write_catalog(tmp_path / "c.json", catalog)
    result = download(
        source, tmp_path / "data", "--progress", "plain", *args, env=imgfetch_env(**env)
    )
    assert result.returncode == 0, result.stderr
    lines = stdout_lines(result)
    if chinese:
        assert any(x.startswith("进度: ") for x in lines)
        assert "映射文件已保存: image_mapping.json (共 2 个商品)" in lines
    else:
        assert any(x.startswith("Progress: ") for x in lines)
        assert any(x.startswith("Mapping file saved:") for x in lines)
        assert not CJK.search(result.stdout), result.stdout


# ------------------------------------------------------------ hostile ids


def test_hostile_ids_stay_inside_the_data_directory(
    tmp_path: Path, server: ImageServer
) -> None:
    ids = ["../escape", "../../etc", "CON", "a/b", "A/B", "商品\u202e1", "x" * 300]
    records = [
        {"id": pid, "main_images": [server.url(f"h{i}")]} for i, pid in enumerate(ids)
    ]
    work = tmp_path / "work"
    source = write_catalog(work / "c.json", records)
    data = work / "data"
    result = download(source, data)
    assert result.returncode == 0, result.stderr
    assert_mapping(
        data,
        server,
        {
            pid: {"main": [server.url(f"h{i}")], "sku": [], "qc": []}
            for i, pid in enumerate(ids)
        },
    )
    # nothing beside the catalog and the data directory, nothing outside tmp_path
    assert sorted(p.name for p in work.iterdir()) == ["c.json", "data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    folders = sorted(p.name for p in (data / "images").iterdir())
    assert len(folders) == len(ids)


def test_the_same_url_is_fetched_once_and_every_place_gets_its_own_file(
    server: ImageServer, tmp_path: Path
) -> None:
    shared = server.url("shared", size=3000)
    other = server.url("other", size=2000)
    catalog = [
        {"id": "a", "main_images": [shared, other], "sku_images": [shared]},
        {"id": "b", "main_images": [other], "qc_images": [shared]},
        {"id": "c", "main_images": [shared]},
    ]
    source = write_catalog(tmp_path / "c.json", catalog)
    data = tmp_path / "data"

    result = run_imgfetch(["download", str(source), "--data-dir", str(data)])

    assert result.returncode == 0, result.stderr
    assert server.requests_for(shared) == 1 and server.requests_for(other) == 1
    mapping = load_json(data / "image_mapping.json")
    places = [
        mapping["a"]["main"][0],
        mapping["a"]["sku"][0],
        mapping["b"]["qc"][0],
        mapping["c"]["main"][0],
    ]
    assert len(set(places)) == 4  # a file of its own in each place
    for relpath in places:
        assert (data / relpath).read_bytes() == server.expected_bytes(shared)
    # Hard links where the file system has them (it does here).
    assert len({(data / p).stat().st_ino for p in places}) == 1
    assert (data / mapping["b"]["main"][0]).read_bytes() == server.expected_bytes(other)


def test_a_failed_shared_url_is_a_failure_in_every_place(
    server: ImageServer, tmp_path: Path
) -> None:
    gone = server.url("gone", status=404)
    catalog = [
        {"id": "a", "main_images": [gone], "qc_images": [gone]},
        {"id": "b", "sku_images": [gone]},
    ]
    source = write_catalog(tmp_path / "c.json", catalog)
    data = tmp_path / "data"

    result = run_imgfetch(["download", str(source), "--data-dir", str(data)])

    assert result.returncode == 1, result.stderr
    assert server.requests_for(gone) == 1
    failed = load_json(data / "failed_images.json")
    places = {
        (pid, f["category"], f["index"]) for pid, fs in failed.items() for f in fs
    }
    assert places == {("a", "main", 1), ("a", "qc", 1), ("b", "sku", 1)}
    assert all(
        f["reason"].startswith("permanent: ") for fs in failed.values() for f in fs
    )


def test_images_are_synced_on_the_disk_images_lives_on(
    server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # images/ may link to another disk than the state files': the batch sync
    # before a save must reach the disk the images are on.
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(elsewhere)
    synced: list[str] = []
    monkeypatch.setattr(
        saving,
        "sync_filesystem",
        lambda folder: synced.append(os.path.realpath(folder)),
    )
    catalog = write_catalog(
        tmp_path / "c.json", [{"id": "p1", "main_images": [server.url("a")]}]
    )
    args = ["download", str(catalog), "--data-dir", str(data), "--progress", "none"]
    assert cli.main([*args, "--lang", "en"]) == 0
    assert (elsewhere / "p1" / "main_1.jpg").exists()
    assert synced and set(synced) == {os.path.realpath(elsewhere)}
