"""Shared fixtures: a real image server on 127.0.0.1 and a real imgfetch process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from imgfetch.testserver import ImageServer

CATEGORY_FIELDS = {"main": "main_images", "sku": "sku_images", "qc": "qc_images"}
_INDEX = re.compile(r"^(?P<cat>[a-z0-9_]+)_(?P<n>\d+)\.[a-z0-9]+$")


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


def imgfetch_env(lang: str = "en_US.UTF-8", **extra: str) -> dict[str, str]:
    """A clean environment for a child imgfetch: fixed locale, no colour, no TTY."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LC_", "IMGFETCH_")) and k not in ("LANG", "FORCE_COLOR")
    }
    env.update(LANG=lang, PYTHONUNBUFFERED="1", NO_COLOR="1", COLUMNS="200")
    env.update(extra)
    return env


def run_imgfetch(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    lang: str = "en_US.UTF-8",
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m imgfetch ARGS` to the end and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "imgfetch", *args],
        cwd=cwd,
        env=env or imgfetch_env(lang),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_imgfetch(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    lang: str = "en_US.UTF-8",
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start `python -m imgfetch ARGS` in the background (stdout and stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "imgfetch", *args],
        cwd=cwd,
        env=env or imgfetch_env(lang),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def wait_for_progress(data_dir: Path, images: int, timeout: float = 30) -> None:
    """Block until at least `images` image files exist under the data directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        root = data_dir / "images"
        saved = [p for p in root.glob("*/*_*.*") if not p.name.startswith(".")]
        if len(saved) >= images:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {images} images appeared in {timeout}s")


def interrupt(
    proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 15
) -> tuple[int, str, str]:
    """Send `sig`, wait for the process to end; return (code, stdout, stderr)."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def make_catalog(
    server: ImageServer,
    count: int,
    *,
    main: int = 2,
    sku: int = 1,
    qc: int = 1,
    prefix: str = "p",
    **params: Any,
) -> list[dict[str, Any]]:
    """`count` products whose images the server serves; params go into every URL."""
    products = []
    for i in range(count):
        pid = f"{prefix}{i:04d}"
        product: dict[str, Any] = {"id": pid, "title": f"product {i}"}
        for category, n in (("main", main), ("sku", sku), ("qc", qc)):
            product[CATEGORY_FIELDS[category]] = [
                server.url(f"{pid}-{category}-{k}", size=1500 + 37 * k, **params)
                for k in range(1, n + 1)
            ]
        products.append(product)
    return products


def write_catalog(path: Path, products: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(products, ensure_ascii=False), encoding="utf-8")
    return path


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def urls_of(product: dict[str, Any], category: str) -> list[str]:
    """The URL strings of one category of a catalog product (test catalogs only)."""
    value = product.get(CATEGORY_FIELDS[category]) or []
    if isinstance(value, str):
        value = [value]
    return [v["url"] if isinstance(v, dict) else v for v in value]


def assert_consistent(
    data_dir: Path,
    catalog: list[dict[str, Any]],
    server: ImageServer,
    *,
    finished: bool,
) -> dict[str, Any]:
    """Check the invariants every run must leave behind, interrupted or not.

    - completed (mapping) and pending are disjoint and together are the catalog;
    - every mapped file exists inside the data directory and holds exactly the
      bytes the server serves for that URL;
    - no temporary file is left;
    - when `finished`, the pending file is gone and everything is mapped.
    Returns the mapping.
    """
    by_id = {str(p["id"]): p for p in catalog}
    mapping_file = data_dir / "image_mapping.json"
    mapping = load_json(mapping_file) if mapping_file.exists() else {}
    pending_file = data_dir / "pending_tasks.json"
    pending = load_json(pending_file) if pending_file.exists() else []
    pending_ids = [str(p["id"]) for p in pending]

    assert not set(mapping) & set(pending_ids), "a product is completed and pending"
    assert len(pending_ids) == len(set(pending_ids)), "a product is pending twice"
    assert set(mapping) | set(pending_ids) == set(by_id), "products were lost"
    for raw in pending:
        assert raw == by_id[str(raw["id"])], "pending dict differs from the input"
    if finished:
        assert not pending_file.exists()
        assert set(mapping) == set(by_id)

    root = data_dir.resolve()
    for pid, entry in mapping.items():
        assert set(entry) >= {"main", "sku", "qc"}
        for category, paths in entry.items():
            urls = urls_of(by_id[pid], category)
            for rel in paths:
                path = (data_dir / rel).resolve()
                assert path.is_relative_to(root), rel
                match = _INDEX.match(path.name)
                assert match and match["cat"] == category, rel
                url = urls[int(match["n"]) - 1]
                assert path.read_bytes() == server.expected_bytes(url), rel
    temps = list(data_dir.rglob(".imgfetch-*.tmp"))
    assert not temps, f"temporary files left: {temps}"
    return mapping
