"""Recognising image formats from their first bytes, never from URLs or headers."""

from __future__ import annotations

SNIFF_BYTES = 32

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
        return _FTYP_BRANDS.get(head[8:12])
    if head[:2] == b"BM" and len(head) >= 14:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ico"
    return None


def describe_non_image(head: bytes) -> str:
    """A short name for what a non-image body looks like, for failure reasons."""
    start = head.lstrip()[:16].lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if start.startswith((b"<?xml", b"<error", b"<")):
        return "an XML document"
    if start.startswith((b"{", b"[")):
        return "JSON"
    if not head:
        return "an empty body"
    return "not an image"
