"""Reading the JSON files stores keep: damaged ones become one-line StateErrors."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from ..catalog import InvalidRecord, is_category_name
from ..errors import StateError
from ..messages import Text
from ..records import undecodable
from .base import Failure


def load_state_json(path: Path, kind: type, shape: Text) -> Any:
    """Parse a state file, or None when it does not exist; StateError when damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError("state_unreadable", path=path, detail=exc.strerror) from None
    if not data.strip():
        raise StateError("state_empty", hint="damaged", path=path, shape=shape)
    try:
        # utf-8-sig: a file repaired in an editor that adds a BOM is still fine.
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise StateError(
            "not_utf8", hint="damaged", path=path, offset=exc.start
        ) from None
    except json.JSONDecodeError as exc:
        raise StateError(
            "invalid_json",
            hint="damaged",
            path=path,
            line=exc.lineno,
            column=exc.colno,
            detail=exc.msg,
        ) from None
    # RecursionError: nested too deeply; ValueError: an integer beyond Python's
    # int-from-text digit limit.
    except (RecursionError, ValueError) as exc:
        raise StateError(
            "file_reason", hint="damaged", path=path, reason=undecodable(exc)
        ) from None
    if not isinstance(value, kind):
        raise StateError(
            "state_top_level",
            hint="damaged",
            path=path,
            kind=type(value).__name__,
            shape=shape,
        )
    return value


def checked_failure(failure: Failure) -> Failure:
    """Reject failures that would name a file outside the product's folder.

    The category and index become the file name (`<category>_<index>.<ext>`) when
    `--retry-failed` fetches the image again, so a hand-edited category such as
    "../../x" must never get that far.
    """
    if not is_category_name(failure.category):
        raise InvalidRecord("bad_category", category=failure.category)
    if isinstance(failure.index, bool) or failure.index < 1:
        raise InvalidRecord("bad_index", index=failure.index)
    return failure


def is_valid_entry(entry: Any) -> bool:
    """A mapping entry: category names to lists of relative paths that stay inside
    the data directory (a hand-edited "../../x" is damage, not a path to follow)."""
    return isinstance(entry, dict) and all(
        is_category_name(category)
        and isinstance(paths, list)
        and all(_is_inside(path) for path in paths)
        for category, paths in entry.items()
    )


def _is_inside(path: Any) -> bool:
    if not isinstance(path, str) or not path or "\x00" in path:
        return False
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return not path.startswith(("/", "\\")) and ".." not in parts and ":" not in path
