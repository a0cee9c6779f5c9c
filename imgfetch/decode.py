"""`--verify-decode`: decode each image fully with Pillow (the `decode` extra).

A body with the right signature and the announced length can still be cut or
corrupt inside: a CDN that cached a half upload serves it whole, with a matching
Content-Length. Only decoding every pixel tells.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .errors import UsageError

# Sniffed format -> Pillow's name for its decoder. HEIF is there only when the
# pillow-heif plugin registered it; a format Pillow cannot open is not verified.
_PILLOW_NAMES = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "avif": "AVIF",
    "heic": "HEIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "ico": "ICO",
}


class DecodeFailed(Exception):
    """The image does not decode; `permanent` when retrying cannot help."""

    def __init__(self, detail: str, permanent: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.permanent = permanent


def require_pillow() -> None:
    """UsageError unless Pillow can be imported; call before downloading."""
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("no_pillow", hint="install_decode") from None
    # Pillow warns (on stderr) about images over its pixel limit; the limit's
    # error twice over is what counts, and it is reported as a failure.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def can_verify(fmt: str) -> bool:
    """Whether the installed Pillow has a decoder for this sniffed format."""
    from PIL import Image

    Image.init()
    return _PILLOW_NAMES.get(fmt, "") in Image.OPEN


def verify(path: Path, fmt: str) -> None:
    """Decode `path` fully as `fmt`; DecodeFailed says why it cannot be."""
    from PIL import Image

    name = _PILLOW_NAMES[fmt]
    try:
        # verify() walks the structure (chunk CRCs, the end marker); load()
        # decodes the pixels, which is where a cut scan shows up.
        with Image.open(path, formats=[name]) as image:
            image.verify()
        with Image.open(path, formats=[name]) as image:
            image.load()
    except Image.DecompressionBombError:
        raise DecodeFailed("too many pixels to decode", permanent=True) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error...
        text = str(exc).replace(str(path), "the file") or type(exc).__name__
        raise DecodeFailed(text.splitlines()[0][:120]) from None
