"""The registry of state stores: names to classes, imported only when chosen."""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

from ..errors import UsageError
from .base import StateStore

# name -> "module:Class"; a new store adds one line here and a module beside this one.
_REGISTRY: dict[str, str] = {
    "json": "imgfetch.backends.json_store:JsonStore",
    "markers": "imgfetch.backends.markers_store:MarkersStore",
    "sqlite": "imgfetch.backends.sqlite_store:SqliteStore",
}
DEFAULT_BACKEND = "json"


def backend_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def check_backend(name: str) -> str:
    """Return `name` if a store has it; otherwise a UsageError with a suggestion."""
    if name in _REGISTRY:
        return name
    close = difflib.get_close_matches(name, _REGISTRY, n=1)
    raise UsageError(
        "unknown_backend",
        hint="backend_suggest" if close else "backend_choose",
        name=name,
        close=close[0] if close else None,
        names=", ".join(_REGISTRY),
    )


def store_class(name: str) -> type[StateStore]:
    """The class registered as `name`, imported now."""
    target = _REGISTRY[check_backend(name)]
    module_name, _, class_name = target.partition(":")
    cls: type[StateStore] = getattr(importlib.import_module(module_name), class_name)
    return cls


def open_store(name: str, data_dir: Path) -> StateStore:
    """Create the store called `name` for `data_dir` (not yet opened)."""
    return store_class(name)(data_dir)
