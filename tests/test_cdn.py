"""`original_url`: CDN thumbnail suffixes come off, real names and queries stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_json, run_imgfetch, write_catalog

from imgfetch.cdn import original_url
from imgfetch.testserver import ImageServer

ALI = "https://img.alicdn.com/imgextra/i1/2244854683/O1CN01abc_!!2244854683"

STRIPPED = [
    # size, quality, then a WebP re-encoding: the whole tail goes.
    (f"{ALI}.jpg_400x400q90.jpg_.webp", f"{ALI}.jpg"),
    # size only
    (f"{ALI}.jpg_400x400.jpg", f"{ALI}.jpg"),
    # WebP re-encoding only
    (f"{ALI}.jpg_.webp", f"{ALI}.jpg"),
    # quality only
    (f"{ALI}.jpg_q90.jpg", f"{ALI}.jpg"),
    # a PNG original keeps its own extension
    (
        "https://img.alicdn.com/bao/uploaded/i4/TB1x.png_80x80.png",
        "https://img.alicdn.com/bao/uploaded/i4/TB1x.png",
    ),
    # Taobao's named sizes
    (
        "https://img.alicdn.com/bao/uploaded/i2/TB2abc.jpg_sum.jpg",
        "https://img.alicdn.com/bao/uploaded/i2/TB2abc.jpg",
    ),
    # size, then WebP
    (f"{ALI}.jpg_50x50.jpg_.webp", f"{ALI}.jpg"),
    # jpeg spelled out, and a GIF original
    (
        "https://img.alicdn.com/i1/a.jpeg_200x200.jpg",
        "https://img.alicdn.com/i1/a.jpeg",
    ),
    (
        "https://img.alicdn.com/i1/anim.gif_120x120.gif",
        "https://img.alicdn.com/i1/anim.gif",
    ),
    # a WebP original
    (
        "https://img.alicdn.com/i1/pic.webp_300x300.jpg",
        "https://img.alicdn.com/i1/pic.webp",
    ),
    # extensions in upper case
    (
        "https://img.alicdn.com/i1/IMG_1.JPG_400x400.JPG",
        "https://img.alicdn.com/i1/IMG_1.JPG",
    ),
    # the query string and the fragment are kept exactly
    (
        f"{ALI}.jpg_400x400.jpg?x-oss-process=a,b&t=1",
        f"{ALI}.jpg?x-oss-process=a,b&t=1",
    ),
    (f"{ALI}.jpg_.webp#top", f"{ALI}.jpg#top"),
    # protocol-relative URLs (before the scheme is added) work the same
    ("//img.alicdn.com/i1/x_y.jpg_60x60.jpg", "//img.alicdn.com/i1/x_y.jpg"),
    # a name with underscores of its own loses only the suffix
    (
        "https://cbu01.alicdn.com/img/ibank/my_photo_1.jpg_220x220.jpg",
        "https://cbu01.alicdn.com/img/ibank/my_photo_1.jpg",
    ),
    # the cut is after the first extension followed by "_"
    ("http://127.0.0.1:8000/img/a.png_b.jpg_c.jpg", "http://127.0.0.1:8000/img/a.png"),
]

UNCHANGED = [
    # the real name alone, with "_" and "!!" of its own
    f"{ALI}.jpg",
    "https://example.com/images/my_photo_1.jpg",
    "https://img.alicdn.com/bao/uploaded/TB1_xyz.jpg",
    # an extension inside the name but no suffix after the last one
    "https://example.com/a.jpg.png",
    "https://example.com/a.jpgfoo_400x400.jpg",
    # what follows "_" is not an image name: not a thumbnail suffix
    "https://example.com/report.jpg_backup",
    "https://example.com/report.jpg_",
    "https://example.com/photo.jpg_400x400",
    # not an image extension before the "_"
    "https://example.com/doc.pdf_400x400.jpg",
    "https://example.com/photo.jpgx_400x400.jpg",
    # the suffix look-alike is in the query or a folder, not the file name
    "https://example.com/img/a.jpg?size=a.jpg_400x400.jpg",
    "https://example.com/a.jpg_400x400.jpg/real.png",
    # nothing before the extension
    "https://example.com/.jpg_400x400.jpg",
    # no path at all, and a host that merely looks like a file name
    "https://example.com",
    "https://img.jpg_1x1.jpg",
    # not a URL the fetcher could use: left for it to report as it is
    "http://[::1/a.jpg_1x1.jpg",
    "",
]


@pytest.mark.parametrize(("url", "expected"), STRIPPED)
def test_thumbnail_suffix_is_stripped(url: str, expected: str) -> None:
    assert original_url(url) == expected


@pytest.mark.parametrize("url", UNCHANGED)
def test_other_urls_are_unchanged(url: str) -> None:
    assert original_url(url) == url


@pytest.mark.parametrize(("url", "expected"), STRIPPED)
def test_stripping_twice_changes_nothing_more(url: str, expected: str) -> None:
    assert original_url(original_url(url)) == expected


# ------------------------------------------------------------ --original, end to end


def thumbnail_and_original(server: ImageServer, name: str) -> tuple[str, str]:
    """A thumbnail URL in the CDN's style, and the URL of its original."""
    original = f"{server.base_url}/img/{name}.jpg"
    return (
        f"{original}_400x400q90.jpg_.webp?fmt=jpeg&size=1999",
        f"{original}?fmt=jpeg&size=1999",
    )


@pytest.mark.parametrize("strip", [True, False])
def test_download_fetches_the_original_only_with_the_option(
    tmp_path: Path, server: ImageServer, strip: bool
) -> None:
    thumbnail, original = thumbnail_and_original(server, "O1CN01abc_!!22448")
    plain = server.url("plain_name_1")
    source = write_catalog(
        tmp_path / "c.json", [{"id": "a", "main_images": [thumbnail, plain]}]
    )
    data = tmp_path / "data"
    args = ["download", str(source), "-d", str(data)]
    result = run_imgfetch([*args, "--original"] if strip else args)
    assert result.returncode == 0, result.stderr

    wanted, other = (original, thumbnail) if strip else (thumbnail, original)
    assert server.requests_for(wanted) == 1
    assert server.requests_for(other) == 0
    assert server.requests_for(plain) == 1  # a URL without a suffix is unchanged
    saved = data / load_json(data / "image_mapping.json")["a"]["main"][0]
    assert saved.read_bytes() == server.expected_bytes(wanted)


def test_resume_takes_the_option_too(tmp_path: Path, server: ImageServer) -> None:
    thumbnail, original = thumbnail_and_original(server, "TB1_xyz")
    data = tmp_path / "data"
    data.mkdir()
    pending = [{"id": "r", "sku_images": [thumbnail]}]
    (data / "pending_tasks.json").write_text(json.dumps(pending), encoding="utf-8")
    result = run_imgfetch(["resume", "-d", str(data), "--original"])
    assert result.returncode == 0, result.stderr
    assert server.requests_for(original) == 1
    assert server.requests_for(thumbnail) == 0
    assert load_json(data / "image_mapping.json")["r"]["sku"] == ["images/r/sku_1.jpg"]
