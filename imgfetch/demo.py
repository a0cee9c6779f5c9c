"""`imgfetch demo`: a generated catalog served on 127.0.0.1, downloaded for real."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from .catalog import CatalogOptions
from .engine import EngineConfig
from .errors import UsageError
from .fetch import FetchConfig
from .messages import Messages
from .progress import line_writer
from .runner import Reporter, RunOptions, run_download
from .testserver import ImageServer

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
    backend: str | None = None,
) -> int:
    """Serve the demo catalog and download it; a rerun resumes where it stopped.

    `port` None: the port of an existing demo catalog (its URLs name it), else
    DEFAULT_PORT, else any free port.
    """
    server = ImageServer(delay=delay, fault_rate=faults, seed=DEMO_SEED)
    _start(server, port, folder / "catalog.json")
    try:
        return _download(folder, server, products, workers, progress, msg, backend)
    finally:
        server.stop()


def _download(
    folder: Path,
    server: ImageServer,
    products: int,
    workers: int,
    progress: str,
    msg: Messages,
    backend: str | None,
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
        backend=backend,
        # The demo server speaks plain HTTP; its catalog has //host/... URLs too.
        catalog=CatalogOptions(default_scheme="http"),
        engine=EngineConfig(workers=workers),
        # One local server: as many connections to it as workers.
        fetch=FetchConfig(per_host=workers, retries=4, backoff=0.2),
        progress=progress,
    )
    return run_download(options, report, catalog_path)


_ADJECTIVES = (
    "Vintage",
    "Wireless",
    "Oversized",
    "Minimalist",
    "Waterproof",
    "Retro",
    "Slim",
    "Handmade",
    "Foldable",
    "Classic",
)
_PRODUCTS = (
    "Leather Tote Bag",
    "Bluetooth Earbuds",
    "Cotton Hoodie",
    "Desk Lamp",
    "Running Shoes",
    "Ceramic Mug",
    "Phone Case",
    "Canvas Backpack",
    "Wrist Watch",
    "Sunglasses",
)
_DEMO_FORMATS = ("jpeg", "png", "webp", "gif")
_DEMO_WEIGHTS = (70, 10, 10, 10)


def demo_catalog(
    server: ImageServer, products: int = 60, seed: int = 7
) -> list[dict[str, Any]]:
    """A deterministic scraped-shop catalog whose images all live on `server`.

    Mixes the shapes real scrapes have: integer ids, {"url": ...} sku objects, a
    lone qc URL string instead of a list, and protocol-relative URLs.
    """
    rng = random.Random(seed)
    ids: list[str] = []
    while len(ids) < products:
        candidate = str(rng.randrange(10**11, 10**12))
        if candidate not in ids:
            ids.append(candidate)
    return [_demo_product(server, rng, pid) for pid in ids]


def _demo_image(server: ImageServer, rng: random.Random, name: str) -> str:
    fmt = rng.choices(_DEMO_FORMATS, weights=_DEMO_WEIGHTS)[0]
    url = server.url(name, fmt, rng.randint(2 * 1024, 40 * 1024))
    return url.removeprefix("http:") if rng.random() < 0.15 else url


def _demo_product(server: ImageServer, rng: random.Random, pid: str) -> dict[str, Any]:
    def images(role: str, low: int, high: int) -> list[str]:
        count = rng.randint(low, high)
        return [_demo_image(server, rng, f"{pid}-{role}-{k}") for k in range(count)]

    title = f"{rng.choice(_ADJECTIVES)} {rng.choice(_PRODUCTS)}"
    main, sku, qc = images("main", 1, 4), images("sku", 0, 4), images("qc", 0, 3)
    sku_field: list[Any] = [{"url": u} for u in sku] if rng.random() < 0.3 else sku
    qc_field: Any = qc[0] if len(qc) == 1 and rng.random() < 0.5 else qc
    return {
        "id": int(pid) if rng.random() < 0.1 else pid,
        "title": title,
        "main_images": main,
        "sku_images": sku_field,
        "qc_images": qc_field,
    }
