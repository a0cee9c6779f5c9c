"""Image formats from their first bytes: signatures, ftyp brands, and non-images."""

from __future__ import annotations

import struct

import pytest

from imgfetch.sniff import EXTENSIONS, SNIFF_BYTES, describe_non_image, sniff_format
from imgfetch.testimages import IMAGE_FORMATS, image_bytes


def ftyp(major: bytes, *compatible: bytes, tail: bytes = b"\x00" * 8) -> bytes:
    """An ISO-BMFF file start: the ftyp box, then the next box header."""
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body + tail


def riff(kind: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 1000) + kind + b"VP8 " + b"\x00" * 16


def bmp_header() -> bytes:
    return b"BM" + struct.pack("<IHHI", 1078, 0, 0, 54) + struct.pack("<I", 40)


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        # JPEG: SOI and the first marker's 0xFF, whatever the marker is.
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "jpeg"),  # JFIF
        (b"\xff\xd8\xff\xe1\x00\x18Exif\x00\x00", "jpeg"),  # Exif (cameras)
        (b"\xff\xd8\xff\xdb\x00\x43\x00", "jpeg"),  # raw quantisation table
        (b"\xff\xd8\xff\xee\x00\x0eAdobe", "jpeg"),  # Adobe
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "png"),
        (b"GIF87a\x01\x00\x01\x00", "gif"),
        (b"GIF89a\x01\x00\x01\x00", "gif"),
        (riff(b"WEBP"), "webp"),  # RIFF container, WEBP form
        (bmp_header(), "bmp"),
        (b"II*\x00\x08\x00\x00\x00", "tiff"),  # little-endian TIFF
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),  # big-endian TIFF
        (b"\x00\x00\x01\x00\x01\x00\x10\x10", "ico"),
        # AVIF: major brand avif (still) or avis (sequence).
        (ftyp(b"avif", b"avif", b"mif1", b"miaf", b"MA1B"), "avif"),
        (ftyp(b"avis", b"avis", b"msf1", b"miaf"), "avif"),
        # HEIC: Apple and others.
        (ftyp(b"heic", b"mif1", b"heic"), "heic"),
        (ftyp(b"heix", b"mif1", b"heix"), "heic"),
        (ftyp(b"hevc", b"msf1", b"hevc"), "heic"),
        (ftyp(b"heim", b"mif1", b"heim"), "heic"),
        (ftyp(b"heis", b"msf1", b"heis"), "heic"),
        (ftyp(b"hevx", b"msf1", b"hevx"), "heic"),
        # Generic HEIF major brand: the codec is among the compatible brands.
        (ftyp(b"mif1", b"mif1", b"avif", b"miaf"), "avif"),
        (ftyp(b"mif1", b"mif1", b"miaf", b"MA1B", b"avif"), "avif"),
        (ftyp(b"msf1", b"msf1", b"avis"), "avif"),
        (ftyp(b"mif1", b"mif1", b"heic"), "heic"),
        (ftyp(b"mif1", b"mif1"), "heic"),  # plain HEIF: saved as .heic
    ],
)
def test_signature(head: bytes, fmt: str) -> None:
    assert sniff_format(head) == fmt
    # Only the first SNIFF_BYTES are ever looked at.
    assert sniff_format(head[:SNIFF_BYTES]) == fmt
    # What follows the signature does not matter.
    assert sniff_format(head + b"\x00" * 100) == fmt


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_every_test_server_format_is_recognised(fmt: str) -> None:
    # The bodies the test server serves (and so every fetch test relies on).
    body = image_bytes("sniff", fmt, 500)
    assert sniff_format(body[:SNIFF_BYTES]) == fmt


def test_every_recognised_format_has_an_extension() -> None:
    formats = {"jpeg", "png", "gif", "webp", "avif", "heic", "bmp", "tiff", "ico"}
    assert set(EXTENSIONS) == formats
    assert EXTENSIONS["jpeg"] == "jpg"
    assert EXTENSIONS["tiff"] == "tif"
    # Extensions are plain lower-case names: safe in any file name.
    assert all(ext.isalnum() and ext.islower() for ext in EXTENSIONS.values())


@pytest.mark.parametrize(
    "head",
    [
        b"",  # empty body
        b"<!DOCTYPE html><html><head><title>Security check</title>",
        b"<html><body>Access denied</body></html>",
        b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>',
        b'{"error": "not found", "code": 404}',
        b"[1, 2, 3]",
        b"Not Found\n",
        b"BMW X5 spare parts catalogue, page 1",  # text starting with "BM"
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3",
        b"PK\x03\x04\x14\x00\x00\x00",  # zip
        b'<svg xmlns="http://www.w3.org/2000/svg"/>',  # vector, not a raster image
        riff(b"WAVE"),  # RIFF, but audio
        riff(b"AVI "),  # RIFF, but video
        ftyp(b"isom", b"isom", b"iso2", b"mp41"),  # MP4 video
        ftyp(b"mp42", b"mp42", b"isom"),
        ftyp(b"qt  ", b"qt  "),  # QuickTime
        ftyp(b"miaf", b"miaf"),  # MIAF without any codec brand
        # Truncated signatures: a few bytes are not an image.
        b"\xff\xd8",
        b"\x89PNG\r\n",
        b"GIF8",
        b"RIFF\x00\x00\x00\x00",
        b"BM\x00\x00",
        b"\x00\x00\x00\x18ftyp",
        b"\x00\x00\x00\x00",
        b"   \n\t",
    ],
)
def test_not_an_image(head: bytes) -> None:
    assert sniff_format(head) is None


def test_image_signature_must_be_at_the_start() -> None:
    # An HTML page that embeds PNG bytes somewhere is still an HTML page.
    assert sniff_format(b"<html>\x89PNG\r\n\x1a\n") is None
    assert sniff_format(b" \xff\xd8\xff\xe0") is None


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"<!DOCTYPE html><html>", "an HTML page"),
        (b"<!doctype HTML>\n<html lang=en>", "an HTML page"),
        (b"\n\n   <html><body>", "an HTML page"),  # leading whitespace
        (b"\xef\xbb\xbf<!DOCTYPE html>", "an HTML page"),  # UTF-8 byte order mark
        (b"<HEAD><TITLE>", "an HTML page"),
        (b"<body>blocked</body>", "an HTML page"),
        (b'<?xml version="1.0"?><Error/>', "an XML document"),
        (b"<Error><Code>AccessDenied</Code>", "an XML document"),
        (b'{"error": 1}', "JSON"),
        (b'  [{"a": 1}]', "JSON"),
        (b"", "an empty body"),
        (b"Not Found", "not an image"),
        (b"%PDF-1.7", "a PDF document"),
        (b'<svg xmlns="http://www.w3.org/2000/svg">', "an SVG drawing"),
        (b"\x00\x01\x02\x03", "not an image"),  # unknown binary
    ],
)
def test_describe_non_image(head: bytes, kind: str) -> None:
    assert describe_non_image(head) == kind
