"""CDN URL rewrites: the original image behind a thumbnail URL (`--original`)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_EXT = r"\.(?:jpe?g|png|gif|webp)"

# Alibaba-family CDNs (alicdn, tbcdn, 1688) serve a resized copy when a suffix
# follows the real file name: `<name>.jpg_400x400q90.jpg_.webp`, `<name>.jpg_.webp`,
# `<name>.png_80x80.png`, `<name>.jpg_sum.jpg`. The real name may hold `_` and `!!`
# of its own (`O1CN01abc_!!2244854683.jpg`), so the cut is made after the first
# image extension that is directly followed by `_`, and only when what follows is
# itself an image name: `photo.jpg_backup` is left alone.
_THUMBNAIL = re.compile(
    rf"^(?P<name>[^/]+?{_EXT})_(?P<thumbnail>[^/]*{_EXT})$", re.IGNORECASE
)
# The path is everything before the query or the fragment, which are kept as-is.
_PATH_END = re.compile(r"[?#]")


def original_url(url: str) -> str:
    """`url` without a CDN thumbnail suffix after its file name; else unchanged."""
    end = _PATH_END.search(url)
    cut = end.start() if end else len(url)
    path, rest = url[:cut], url[cut:]
    folder, _, name = path.rpartition("/")
    match = _THUMBNAIL.match(name)
    if match is None or not _in_path(url, name):
        return url
    return f"{folder}/{match['name']}{rest}"


def _in_path(url: str, name: str) -> bool:
    """True when `name` is the last segment of the URL's path, not its host."""
    try:
        path = urlsplit(url).path
    except ValueError:  # a malformed URL is the fetcher's to report, as it is
        return False
    return "/" in path and path.rpartition("/")[2] == name
