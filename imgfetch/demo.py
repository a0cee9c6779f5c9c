"""`imgfetch demo`: a generated catalog served on 127.0.0.1, downloaded for real."""

from __future__ import annotations

import json
import re
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
DEFAULT_PORT = 8765


def _start(server: ImageServer, port: int | None, catalog_path: Path) -> None:
    chosen = port if port is not None else _catalog_port(catalog_path)
    try:
        server.start(port=chosen if chosen is not None else DEFAULT_PORT)
        return
    except OSError as exc:
        if chosen is not None:
            raise UsageError(
                "demo_port", hint="demo_port", port=chosen, detail=exc.strerror or exc
            ) from None
    server.start(port=0)  # a fresh demo can live on any port


def _catalog_port(catalog_path: Path) -> int | None:
    """The port an earlier demo's catalog points at: pending URLs need it again."""
    try:
        text = catalog_path.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"//127\.0\.0\.1:(\d+)/", text)
    return int(match.group(1)) if match else None


def run_demo(
    folder: Path,
    *,
    products: int,
    delay: float,
    faults: float,
    port: int | None,
    workers: int,
    progress: str,
    msg: Messages,
) -> int:
    """Serve the demo catalog and download it; a rerun resumes where it stopped.

    `port` None: the port of an existing demo catalog (its URLs name it), else
    DEFAULT_PORT, else any free port.
    """
    server = ImageServer(delay=delay, fault_rate=faults, seed=DEMO_SEED)
    _start(server, port, folder / "catalog.json")
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
