"""`imgfetch inspect-pending`: what an interrupted or running download has left."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from .catalog import CatalogOptions, InvalidRecord, parse_product
from .errors import ExitCode, StateError, UsageError
from .messages import Messages
from .progress import format_duration, line_writer
from .runner import open_state, pending_age


def inspect_pending(
    data_dir: Path,
    backend: str | None,
    catalog: CatalogOptions,
    msg: Messages,
    *,
    as_json: bool,
    first: int,
) -> int:
    """Print the pending work of `data_dir`; reads only, takes no lock."""
    if first < 0:
        # pending[:-1] would silently list all ids but the last.
        raise UsageError("negative", hint="zero_or_more", option="--first", value=first)
    if not data_dir.is_dir():
        raise StateError("no_data_dir", hint="pass_data_dir", path=str(data_dir))
    store = open_state(data_dir, backend, catalog, locked=False)
    summary = _summarize(store.pending(), catalog, store.pending_label, first)
    summary.update(
        data_dir=str(data_dir),
        store=store.name,
        exists=store.has_pending(),
        age_seconds=pending_age(store),
        completed=store.completed_count(),
        failed_images=sum(len(f) for f in store.failures().values()),
    )
    write = line_writer()
    if as_json:
        write(json.dumps(summary, ensure_ascii=False, indent=2))
    else:
        for line in _human(summary, msg):
            write(line)
    return ExitCode.OK


def _summarize(
    pending: list[tuple[str, dict[str, Any]]],
    catalog: CatalogOptions,
    label: str,
    first: int,
) -> dict[str, Any]:
    images: Counter[str] = Counter(dict.fromkeys(catalog.categories, 0))
    for number, (_pid, raw) in enumerate(pending, start=1):
        try:
            product = parse_product(raw, catalog)
        except InvalidRecord as exc:
            raise StateError(
                "state_record",
                hint="pending_fields",
                path=label,
                number=number,
                reason=exc.text,
            ) from None
        images.update(image.category for image in product.images)
    return {
        "pending_file": label,
        "products": len(pending),
        "images": dict(images),
        "images_total": sum(images.values()),
        "first_ids": [pid for pid, _raw in pending[:first]],
    }


def _human(summary: dict[str, Any], msg: Messages) -> list[str]:
    if not summary["exists"]:
        key = "inspect_none" if summary["store"] == "json" else "inspect_none_store"
        return [msg(key, path=summary["pending_file"])]
    parts = ", ".join(msg.category_count(c, n) for c, n in summary["images"].items())
    age = summary["age_seconds"]
    return [
        msg("inspect_products", count=summary["products"]),
        msg("inspect_images", total=summary["images_total"], parts=parts),
        msg(
            "inspect_file",
            path=summary["pending_file"],
            age=format_duration(age) if age is not None else "?",
        ),
        msg("inspect_first", ids=", ".join(summary["first_ids"]) or "-"),
        msg(
            "inspect_done",
            completed=summary["completed"],
            failed=summary["failed_images"],
        ),
    ]
