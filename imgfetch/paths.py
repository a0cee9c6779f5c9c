"""Where things live in the data directory; product ids made safe as folder names."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

IMAGES_DIR = "images"
MAPPING_FILE = "image_mapping.json"
PENDING_FILE = "pending_tasks.json"
FAILED_FILE = "failed_images.json"
LOCK_FILE = ".imgfetch.lock"
TEMP_PREFIX = ".imgfetch-"
TEMP_SUFFIX = ".tmp"

MAX_NAME = 64
_KEPT_PREFIX = 40
# Lower case only: on case-insensitive file systems (macOS, Windows) "AB" and "ab"
# would otherwise share one folder.
_PLAIN = re.compile(r"^[a-z0-9_-][a-z0-9_.-]*$")
_UNSAFE_CHARS = re.compile(r"[^a-z0-9_.-]+")
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{i}" for i in range(10)]
    + [f"lpt{i}" for i in range(10)]
)


def product_dir_name(product_id: str) -> str:
    """A folder name for a product id, safe on any file system and injective.

    Plain ids (lower-case letters, digits, `_.-`) are kept as they are. Any other id
    becomes a sanitised prefix plus `~` and a hash of the exact id: plain names
    never contain `~`, so the two kinds cannot collide.
    """
    if _is_plain(product_id):
        return product_id
    digest = hashlib.sha256(product_id.encode("utf-8", "surrogatepass")).hexdigest()
    prefix = _UNSAFE_CHARS.sub("_", product_id.lower()).strip("._")[:_KEPT_PREFIX]
    if _is_reserved(prefix):
        # "CON.jpg" -> "con.jpg~...": Windows reserves CON whatever follows the dot.
        prefix = f"_{prefix}"
    return f"{prefix}~{digest[:16]}"


def _is_plain(name: str) -> bool:
    return (
        len(name) <= MAX_NAME
        # fullmatch: `$` would also match before a trailing "\n".
        and _PLAIN.fullmatch(name) is not None
        and not name.endswith(".")
        and not _is_reserved(name)
    )


def _is_reserved(name: str) -> bool:
    return name.split(".", 1)[0] in _WINDOWS_RESERVED


def image_relpath(product_id: str, stem: str, ext: str) -> str:
    """The mapping's path of an image: relative to the data directory, with `/`."""
    return f"{IMAGES_DIR}/{product_dir_name(product_id)}/{stem}.{ext}"


def product_dir(data_dir: Path, product_id: str) -> Path:
    return data_dir / IMAGES_DIR / product_dir_name(product_id)


def is_temp_name(name: str) -> bool:
    """True for files imgfetch writes before renaming them into place."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)
