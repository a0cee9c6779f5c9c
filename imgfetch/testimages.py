"""Deterministic image bodies in every sniffed format, for the demo and the tests."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable

IMAGE_FORMATS: tuple[str, ...] = (
    "jpeg",
    "png",
    "gif",
    "webp",
    "avif",
    "bmp",
    "heic",
    "tiff",
)

_JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_JPEG_TAIL = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SIDE = 64
# Private, ancillary, safe-to-copy chunk type: decoders skip it, so it can pad a
# real PNG to the requested size without affecting the picture.
_PNG_PAD_TYPE = b"ifPd"
_CHUNK_OVERHEAD = 12


def _noise(name: str, length: int) -> bytes:
    """`length` bytes of the sha256 chain seeded by `name`."""
    block = hashlib.sha256(name.encode()).digest()
    out = bytearray()
    while len(out) < length:
        out += block
        block = hashlib.sha256(block).digest()
    return bytes(out[:length])


def _le32(value: int) -> bytes:
    return struct.pack("<I", value)


def _be32(value: int) -> bytes:
    return struct.pack(">I", value)


def _fill(head: bytes, tail: bytes, name: str, total: int) -> bytes:
    return head + _noise(name, total - len(head) - len(tail)) + tail


def _jpeg(name: str, size: int) -> bytes:
    total = max(size, len(_JPEG_HEAD) + len(_JPEG_TAIL))
    return _fill(_JPEG_HEAD, _JPEG_TAIL, name, total)


def _gif(name: str, size: int) -> bytes:
    # Logical screen descriptor without a global colour table, then the trailer.
    head = b"GIF89a" + struct.pack("<HHBBB", _PNG_SIDE, _PNG_SIDE, 0, 0, 0)
    return _fill(head, b";", name, max(size, len(head) + 1))


def _webp(name: str, size: int) -> bytes:
    total = max(size, 20)
    head = b"RIFF" + _le32(total - 8) + b"WEBP" + b"VP8 " + _le32(total - 20)
    return _fill(head, b"", name, total)


def _isobmff(
    brand: bytes, compatible: tuple[bytes, ...]
) -> Callable[[str, int], bytes]:
    ftyp_body = brand + _be32(0) + b"".join(compatible)
    ftyp = _be32(8 + len(ftyp_body)) + b"ftyp" + ftyp_body

    def build(name: str, size: int) -> bytes:
        total = max(size, len(ftyp) + 8)
        head = ftyp + _be32(total - len(ftyp)) + b"mdat"
        return _fill(head, b"", name, total)

    return build


def _bmp(name: str, size: int) -> bytes:
    total = max(size, 14)
    head = b"BM" + _le32(total) + b"\x00\x00\x00\x00" + _le32(14)
    return _fill(head, b"", name, total)


def _tiff(name: str, size: int) -> bytes:
    head = b"II*\x00" + _le32(8)
    return _fill(head, b"", name, max(size, len(head)))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return _be32(len(data)) + kind + data + _be32(crc)


def _png(name: str, size: int) -> bytes:
    red, green, blue = hashlib.sha256(name.encode()).digest()[:3]
    row = b"\x00" + bytes((red, green, blue)) * _PNG_SIDE
    header = struct.pack(">IIBBBBB", _PNG_SIDE, _PNG_SIDE, 8, 2, 0, 0, 0)
    picture = _png_chunk(b"IHDR", header) + _png_chunk(
        b"IDAT", zlib.compress(row * _PNG_SIDE, 9)
    )
    end = _png_chunk(b"IEND", b"")
    spare = size - len(_PNG_SIGNATURE) - len(picture) - len(end) - _CHUNK_OVERHEAD
    pad = _png_chunk(_PNG_PAD_TYPE, _noise(name, spare)) if spare >= 0 else b""
    return _PNG_SIGNATURE + picture + pad + end


_BUILDERS: dict[str, Callable[[str, int], bytes]] = {
    "jpeg": _jpeg,
    "png": _png,
    "gif": _gif,
    "webp": _webp,
    "avif": _isobmff(b"avif", (b"avif", b"mif1", b"miaf")),
    "bmp": _bmp,
    "heic": _isobmff(b"heic", (b"mif1", b"heic")),
    "tiff": _tiff,
}


def image_bytes(name: str, fmt: str = "jpeg", size: int = 2048) -> bytes:
    """Deterministic image body for (name, fmt, size).

    The body starts with the real signature of `fmt` and is exactly
    max(size, minimal header length) bytes long; the payload after the headers is
    the sha256 chain of `name`. PNG is a real decodable 64x64 picture in a colour
    derived from `name`, padded to `size` with a private ancillary chunk; its size
    is approximate only when `size` is less than 12 bytes above the bare picture
    (then the bare picture is returned).
    """
    try:
        build = _BUILDERS[fmt]
    except KeyError:
        raise ValueError(f"unknown image format {fmt!r}") from None
    return build(name, size)
