"""`imgfetch demo`: a generated catalog served on 127.0.0.1, downloaded for real."""

from __future__ import annotations

import json
from pathlib import Path

from .backends import DEFAULT_BACKEND
from .catalog import CatalogOptions
from .engine import EngineConfig
from .errors import UsageError
from .fetch import FetchConfig
from .messages import Messages
from .progress import line_writer
from .runner import Reporter, RunOptions, run_download
from .testserver import ImageServer, demo_catalog

DEMO_SEED = 7


def run_demo(
    folder: Path,
    *,
    products: int,
    delay: float,
    faults: float,
    port: int,
    workers: int,
    progress: str,
    msg: Messages,
) -> int:
    """Serve the demo catalog and download it; a rerun resumes where it stopped."""
    server = ImageServer(delay=delay, fault_rate=faults, seed=DEMO_SEED)
    try:
        server.start(port=port)
    except OSError as exc:
        raise UsageError(
            "demo_port", hint="demo_port", port=port, detail=exc.strerror or exc
        ) from None
    try:
        return _download(folder, server, products, workers, progress, msg)
    finally:
        server.stop()


def _download(
    folder: Path,
    server: ImageServer,
    products: int,
    workers: int,
    progress: str,
    msg: Messages,
) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    catalog_path = folder / "catalog.json"
    if not catalog_path.exists():
        catalog = demo_catalog(server, products=products, seed=DEMO_SEED)
        catalog_path.write_text(
            json.dumps(catalog, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    data_dir = folder / "data_clean"
    write = line_writer()
    report = Reporter(msg, write)
    report("demo_folder", catalog=catalog_path, data_dir=data_dir)
    report("demo_server", url=server.base_url)
    options = RunOptions(
        data_dir=data_dir,
        backend=DEFAULT_BACKEND,
        # The demo server speaks plain HTTP; its catalog has //host/... URLs too.
        catalog=CatalogOptions(default_scheme="http"),
        engine=EngineConfig(workers=workers),
        fetch=FetchConfig(pool_size=workers, retries=4, backoff=0.2),
        progress=progress,
    )
    return run_download(options, report, catalog_path)
