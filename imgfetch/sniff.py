"""Recognising image formats from their first bytes, never from URLs or headers."""

from __future__ import annotations

# Enough for every signature, including an ftyp box with several compatible brands.
SNIFF_BYTES = 64

# ISO-BMFF brands (bytes 8..12 of the `ftyp` box) and the format they announce.
_FTYP_BRANDS = {
    b"avif": "avif",
    b"avis": "avif",
    b"heic": "heic",
    b"heix": "heic",
    b"heim": "heic",
    b"heis": "heic",
    b"hevc": "heic",
    b"hevx": "heic",
    b"mif1": "heic",
    b"msf1": "heic",
}
# MIAF/HEIF structural brands: a file may carry one as its major brand and name
# the codec (avif, heic) only among its compatible brands.
_GENERIC_BRANDS = frozenset({b"mif1", b"msf1", b"miaf"})

EXTENSIONS = {
    "jpeg": "jpg",
    "png": "png",
    "gif": "gif",
    "webp": "webp",
    "avif": "avif",
    "heic": "heic",
    "bmp": "bmp",
    "tiff": "tif",
    "ico": "ico",
}


def sniff_format(head: bytes) -> str | None:
    """The image format whose signature starts `head`, or None (HTML, JSON, ...)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return _ftyp_format(head)
    # BITMAPFILEHEADER: "BM", file size, two reserved zero words, data offset. The
    # reserved words keep a text body that happens to start with "BM" out.
    if head[:2] == b"BM" and len(head) >= 14 and head[6:10] == b"\x00\x00\x00\x00":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ico"
    return None


def _ftyp_format(head: bytes) -> str | None:
    """AVIF or HEIC from an ISO-BMFF `ftyp` box; None for video and the rest."""
    major = head[8:12]
    if major not in _GENERIC_BRANDS:
        return _FTYP_BRANDS.get(major)
    size = int.from_bytes(head[:4], "big")
    end = min(size, len(head)) if size >= 16 else len(head)
    # Compatible brands follow the major brand and the minor version.
    for start in range(16, end - 3, 4):
        brand = head[start : start + 4]
        if brand not in _GENERIC_BRANDS and brand in _FTYP_BRANDS:
            return _FTYP_BRANDS[brand]
    return _FTYP_BRANDS.get(major)


def describe_non_image(head: bytes) -> str:
    """A short name for what a non-image body looks like, for failure reasons."""
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip()[:16].lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    # A vector image is not what a catalog's picture slots hold; name it apart
    # from XML error pages all the same.
    if start.startswith(b"<svg"):
        return "an SVG drawing"
    if start.startswith((b"<?xml", b"<error", b"<")):
        return "an XML document"
    if start.startswith((b"{", b"[")):
        return "JSON"
    if start.startswith(b"%pdf-"):
        return "a PDF document"
    if not head:
        return "an empty body"
    return "not an image"
