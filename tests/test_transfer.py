"""Which store owns a data directory, `imgfetch export` and `imgfetch migrate`.

Everything here runs the real CLI; state is either downloaded from a local server
or written through the stores' own API.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    imgfetch_env,
    load_json,
    make_catalog,
    run_imgfetch,
    start_imgfetch,
    write_catalog,
)

from imgfetch.backends import backend_names, open_store
from imgfetch.backends.base import Failure
from imgfetch.backends.identity import STORE_FILE, Identity, write_identity
from imgfetch.catalog import product_id
from imgfetch.testserver import ImageServer

STORES = backend_names()
PAIRS = list(itertools.permutations(STORES, 2))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".imgfetch.lock"
    }


def make_state(name: str, data: Path, count: int = 30) -> None:
    """Completed, pending and failed products written through store `name`."""
    data.mkdir(parents=True, exist_ok=True)
    store = open_store(name, data)
    store.open(lambda record: product_id(record, None))
    store.add_pending([(f"s{n}", {"id": f"s{n}", "n": n}) for n in range(count)])
    done = [
        (
            f"s{n}",
            {"main": [f"images/s{n}/main_1.jpg"], "sku": [], "qc": []},
            [Failure("qc", 1, f"http://x/{n}", "permanent: HTTP 404", 1)]
            if n % 4 == 0
            else [],
        )
        for n in range(0, count, 2)
    ]
    store.record_many(done)
    store.flush()
    store.close()
    write_identity(data, Identity(name))


def export(data: Path, out: Path, *args: str) -> dict[str, Any]:
    result = run_imgfetch(["export", "--data-dir", str(data), "--to", str(out), *args])
    assert result.returncode == 0, result.stderr
    files = {}
    for name in ("image_mapping.json", "pending_tasks.json", "failed_images.json"):
        path = out / name
        files[name] = load_json(path) if path.exists() else None
    return files


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_a_folder_is_refused_by_another_store_and_left_unchanged(
    server: ImageServer, tmp_path: Path, first: str, second: str
) -> None:
    catalog = write_catalog(tmp_path / "c.json", make_catalog(server, 3))
    data = tmp_path / "data"
    args = ["download", str(catalog), "--data-dir", str(data)]
    assert run_imgfetch([*args, "--backend", first]).returncode == 0
    before = snapshot(data)

    result = run_imgfetch([*args, "--backend", second])

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"written by the {first} store, not by {second}" in result.stderr
    assert f"imgfetch migrate --from {first} --to {second}" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(data) == before


@pytest.mark.parametrize("name", STORES)
def test_without_backend_the_folders_own_store_is_used(
    server: ImageServer, tmp_path: Path, name: str
) -> None:
    products = make_catalog(server, 4)
    catalog = write_catalog(tmp_path / "c.json", products)
    data = tmp_path / "data"
    first = run_imgfetch(
        ["download", str(catalog), "--data-dir", str(data)],
        env=imgfetch_env(IMGFETCH_BACKEND=name),
    )
    assert first.returncode == 0, first.stderr
    assert json.loads((data / STORE_FILE).read_text()) == {"store": name}

    products += make_catalog(server, 2, prefix="q")
    write_catalog(catalog, products)
    again = run_imgfetch(["download", str(catalog), "--data-dir", str(data)])
    assert again.returncode == 0, again.stderr
    files = export(data, tmp_path / "out")
    assert set(files["image_mapping.json"]) == {p["id"] for p in products}
    if name != "json":
        assert not (data / "image_mapping.json").exists()


def test_a_folder_of_the_original_program_is_json(tmp_path: Path) -> None:
    # download_images.py wrote no .imgfetch-store, only the spec's files.
    data = tmp_path / "data"
    data.mkdir()
    (data / "image_mapping.json").write_text('{"a": {"main": []}}')
    (data / "pending_tasks.json").write_text('[{"id": "b"}]')
    before = snapshot(data)

    refused = run_imgfetch(["resume", "--data-dir", str(data), "--backend", "sqlite"])
    assert refused.returncode == 2
    assert "written by the json store, not by sqlite" in refused.stderr
    assert snapshot(data) == before

    shown = run_imgfetch(["inspect-pending", "--data-dir", str(data), "--json"])
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["products"] == 1


@pytest.mark.parametrize("content", ["", "{", '{"store": 3}', '{"store": "nosql"}'])
def test_a_damaged_store_file_is_a_one_line_error(tmp_path: Path, content: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / STORE_FILE).write_text(content)
    result = run_imgfetch(["resume", "--data-dir", str(data)])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and STORE_FILE in result.stderr
    assert (data / STORE_FILE).read_text() == content


@pytest.mark.parametrize("name", STORES)
def test_export_names_only_files_on_disk_with_the_served_bytes(
    server: ImageServer, tmp_path: Path, name: str
) -> None:
    products = make_catalog(server, 5)
    products[1]["main_images"].append(server.url("gone", status=404))
    catalog = write_catalog(tmp_path / "c.json", products)
    data = tmp_path / "data"
    args = ["download", str(catalog), "--data-dir", str(data), "--backend", name]
    assert run_imgfetch(args).returncode == 1

    files = export(data, tmp_path / "out", "--backend", name)

    mapping = files["image_mapping.json"]
    assert set(mapping) == {p["id"] for p in products}
    named = sorted(
        path for entry in mapping.values() for v in entry.values() for path in v
    )
    on_disk = sorted(
        str(p.relative_to(data)) for p in (data / "images").rglob("*") if p.is_file()
    )
    assert named == on_disk
    for product in products:
        for category, field in (("main", "main_images"), ("qc", "qc_images")):
            urls = [u for u in product.get(field, []) if "gone" not in u]
            paths = mapping[product["id"]][category]
            assert [(data / p).read_bytes() for p in paths] == [
                server.expected_bytes(u) for u in urls
            ]
    assert files["pending_tasks.json"] is None
    [failure] = files["failed_images.json"][products[1]["id"]]
    assert failure["url"].endswith(products[1]["main_images"][-1].rpartition("/")[2])


@pytest.mark.parametrize("name", STORES)
def test_export_of_a_running_state_matches_across_stores(
    tmp_path: Path, name: str
) -> None:
    make_state(name, tmp_path / name)
    make_state("json", tmp_path / "ref")
    assert export(tmp_path / name, tmp_path / "out") == export(
        tmp_path / "ref", tmp_path / "out-ref"
    )


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_migrate_keeps_everything_and_removes_the_old_store(
    tmp_path: Path, source: str, target: str
) -> None:
    data = tmp_path / "data"
    make_state(source, data)
    before = export(data, tmp_path / "before")

    result = run_imgfetch(
        ["migrate", "--from", source, "--to", target, "--data-dir", str(data)]
    )

    assert result.returncode == 0, result.stderr
    assert f"from {source} to {target}" in result.stdout
    assert json.loads((data / STORE_FILE).read_text()) == {"store": target}
    assert export(data, tmp_path / "after", "--backend", target) == before
    store = open_store(source, data)
    assert not any(path.exists() for path in store.owned_paths(data))
    shown = run_imgfetch(["inspect-pending", "--data-dir", str(data), "--json"])
    assert json.loads(shown.stdout)["products"] == 15


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "json", "--to", "json"], "--from and --to are both 'json'"),
        (["--from", "sqlite", "--to", "json"], "written by the markers store"),
        (["--from", "markers", "--to", "sqlit"], "did you mean 'sqlite'?"),
    ],
)
def test_migrate_refuses_bad_requests_without_changes(
    tmp_path: Path, args: list[str], message: str
) -> None:
    data = tmp_path / "data"
    make_state("markers", data)
    before = snapshot(data)
    result = run_imgfetch(["migrate", *args, "--data-dir", str(data)])
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert snapshot(data) == before


@pytest.mark.parametrize(("source", "target"), PAIRS)
def test_a_killed_migration_leaves_one_usable_store(
    tmp_path: Path, source: str, target: str
) -> None:
    seed = int(os.environ.get("STORE_SEED", random.randrange(10**9)))
    why = f"{source}->{target}, seed {seed} (replay: STORE_SEED={seed})"
    data = tmp_path / "data"
    make_state(source, data, count=800)
    before = export(data, tmp_path / "before")

    proc = start_imgfetch(
        ["migrate", "--from", source, "--to", target, "--data-dir", str(data)]
    )
    # Killed while it copies (once the store file names the target) or a little
    # later, at a moment the seed picks.
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        if "migrating_to" in _read(data / STORE_FILE):
            break
        time.sleep(0.005)
    time.sleep(random.Random(seed).uniform(0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()

    # Whichever store the folder names now holds all of it, and the next command
    # removes the other's leftovers.
    assert export(data, tmp_path / "mid") == before, why
    finish = run_imgfetch(
        ["migrate", "--from", source, "--to", target, "--data-dir", str(data)]
    )
    assert finish.returncode == 0, (why, finish.stderr)
    assert export(data, tmp_path / "after", "--backend", target) == before, why
    store = open_store(source, data)
    assert not any(path.exists() for path in store.owned_paths(data)), why


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
