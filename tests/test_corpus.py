"""The bad-input corpus (tests/corpus/), every case run through the real CLI.

`tests/corpus/cases.json` lists the cases; tests/corpus/README.md explains its
fields. A case is either refused or downloaded safely:

- refused: the documented exit code (2), nothing on stdout, exactly one line on
  stderr (no traceback) naming the bad file or value, and every file that existed
  before, catalog and data directory alike, byte-for-byte unchanged; a data
  directory that did not exist is not created.
- works (odd but valid input: hostile ids, non-http schemes, credentials in URLs):
  the documented exit code, the expected warnings only, every image inside its own
  folder under `DATA_DIR/images/` with the served bytes, nothing written outside
  the data directory, the expected failures, and no credential anywhere.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import imgfetch_env, read_state, run_imgfetch

from imgfetch.backends import open_store
from imgfetch.backends.base import Failure
from imgfetch.catalog import product_id
from imgfetch.paths import LOCK_FILE
from imgfetch.testserver import ImageServer

CORPUS = Path(__file__).parent / "corpus"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "cases.json").read_text())["cases"]
REFUSED = [case for case in CASES if "works" not in case]
WORKS = [case for case in CASES if "works" in case]

# Corpus files hold `@SERVER@` for the test server's host:port (refused cases get
# a port nothing listens on) and `@C*N@` for N copies of the character C, so that
# huge values stay small on disk.
NO_SERVER = "127.0.0.1:9"
_REPEAT = re.compile(r"@(.)\*(\d+)@")

# The state every seeded data directory starts from, written through the store's
# own API so that it always matches the store's current format: p1 completed with
# one image and one failed image, p2 pending, a stale temporary file.
P1_ENTRY = {"main": ["images/p1/main_1.jpg"], "sku": [], "qc": []}
P1_FAILURE = Failure("sku", 1, "http://127.0.0.1:9/p1-sku-1.jpg", "HTTP 404", 1)
P2_RECORD = {"id": "p2", "main_images": []}
SEED_FILES = {
    "images/p1/main_1.jpg": b"\xff\xd8\xff\xe0 seeded image",
    "images/p1/.imgfetch-sku_1.jpg.k9.tmp": b"partial",
}

# A 1 GiB catalog must be read as a stream: a reader that loads it whole needs
# more than a gigabyte. The limit leaves room for the interpreter and one record.
HUGE_FILE_BYTES = 1024**3
HUGE_FILE_MAX_RSS = 512 * 1024**2


def case_id(case: dict[str, Any]) -> str:
    return str(case["name"])


def expand(text: str, server: str) -> str:
    text = text.replace("@SERVER@", server)
    return _REPEAT.sub(lambda m: m[1] * int(m[2]), text)


def expand_bytes(data: bytes, server: str) -> bytes:
    """`expand` for file contents, which need not be UTF-8 (and often are not)."""
    if b"@" not in data:
        return data
    return expand(data.decode("latin-1"), server).encode("latin-1")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under `root`, by relative path."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def seed_data_dir(data: Path, seed: str) -> None:
    """A data directory of an interrupted run of the store `seed` names.

    `<store>-identity`: only `.imgfetch-store`; `json-legacy`: the JSON files of
    the original download_images.py, without `.imgfetch-store`.
    """
    store_name = seed.split("-")[0]
    data.mkdir(parents=True)
    if not seed.endswith("-identity"):
        store = open_store(store_name, data)
        store.open(lambda record: str(record["id"]))
        store.add_pending([("p1", {"id": "p1"}), ("p2", P2_RECORD)])
        store.record_product("p1", P1_ENTRY, [P1_FAILURE])
        store.flush()
        store.close()
        for relpath, content in SEED_FILES.items():
            (data / relpath).parent.mkdir(parents=True, exist_ok=True)
            (data / relpath).write_bytes(content)
    if not seed.endswith("-legacy"):
        (data / ".imgfetch-store").write_text(json.dumps({"store": store_name}) + "\n")


def place(source: Path, target: Path, server: str) -> None:
    """Put a corpus file at `target`; a `.sql` file is run against the database
    there instead (creating it, or damaging the seeded one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix != ".sql":
        target.write_bytes(expand_bytes(source.read_bytes(), server))
        return
    conn = sqlite3.connect(target)
    try:
        conn.executescript(source.read_text(encoding="utf-8"))
    finally:
        conn.close()


def prepare(case: dict[str, Any], tmp_path: Path, server: str) -> list[str]:
    """Lay out the case's catalog and data directory; return the command line."""
    data = tmp_path / "data"
    catalog = tmp_path / Path(case.get("catalog", "none")).name
    if "catalog" in case:
        place(CORPUS / case["catalog"], catalog, server)
    if "seed" in case:
        seed_data_dir(data, case["seed"])
    for relpath, source in case.get("files", {}).items():
        place(CORPUS / source, data / relpath, server)
    args = [fill(arg, catalog, data) for arg in case["args"]]
    return [*args, "--data-dir", str(data)]


def fill(text: str, catalog: Path, data: Path) -> str:
    return text.replace("{catalog}", str(catalog)).replace("{data}", str(data))


# ------------------------------------------------------------------ refused


@pytest.mark.parametrize("case", REFUSED, ids=case_id)
def test_bad_input_is_refused(tmp_path: Path, case: dict[str, Any]) -> None:
    args = prepare(case, tmp_path, NO_SERVER)
    data = tmp_path / "data"
    before = snapshot(tmp_path)

    result = run_imgfetch(args, timeout=60)

    assert result.returncode == case["exit"], (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("imgfetch: error: "), lines[0]
    catalog = tmp_path / Path(case.get("catalog", "none")).name
    for fragment in case["message"]:
        assert fill(fragment, catalog, data) in lines[0], (fragment, lines[0])
    assert result.stdout == "", result.stdout
    after = snapshot(tmp_path)
    if data.is_dir() and "data" in before:
        # Taking the lock is allowed; it is documented as harmless.
        after.pop(f"data/{LOCK_FILE}", None)
    assert sorted(after) == sorted(before), "files appeared or disappeared"
    changed = [name for name, content in before.items() if after[name] != content]
    assert not changed, f"changed: {changed}"


# ------------------------------------------------------------------- works


def image_urls(record: dict[str, Any], field: str) -> list[str]:
    """The URLs of one image field as the README defines them: null and blank
    entries are no image; objects hold the URL under url, image or src."""
    value = record.get(field)
    items = [value] if isinstance(value, str) else value or []
    urls = []
    for item in items:
        if isinstance(item, dict):
            item = next(
                (item[k] for k in ("url", "image", "src") if item.get(k) is not None),
                None,
            )
        if isinstance(item, str) and item.strip():
            urls.append(item.strip())
    return urls


def source_records(case: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The input records by product id, the first of each id."""
    if "catalog" in case:
        path = tmp_path / Path(case["catalog"]).name
    else:
        path = tmp_path / "pending-input.json"
    records: dict[str, dict[str, Any]] = {}
    for record in json.loads(path.read_text(encoding="utf-8-sig")):
        records.setdefault(product_id(record, None), record)
    return records


def files_under(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        assert not path.is_symlink(), f"a symlink was written: {path}"
        if path.is_file():
            yield path


@pytest.mark.parametrize("case", WORKS, ids=case_id)
def test_odd_input_is_downloaded_safely(
    tmp_path: Path, server: ImageServer, case: dict[str, Any]
) -> None:
    host = f"127.0.0.1:{server.port}"
    args = prepare(case, tmp_path, host)
    data = tmp_path / "data"
    if "catalog" not in case:
        # `resume` consumes the pending file: keep what it held to check against.
        pending = (data / "pending_tasks.json").read_bytes()
        (tmp_path / "pending-input.json").write_bytes(pending)
    before = snapshot(tmp_path)
    expected = case["works"]

    result = run_imgfetch([*args, "--workers", "4", "--retries", "0"], timeout=60)

    assert result.returncode == case["exit"], (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert_stderr_lines(result.stderr, expected["stderr"])
    # Nothing outside the data directory appeared or changed.
    assert outside(snapshot(tmp_path)) == outside(before)

    ids = [expand(pid, host) for pid in expected["ids"]]
    state = read_state(data)
    assert sorted(state.mapping) == sorted(ids)
    assert not state.has_pending
    assert_images_inside(data, state.mapping, source_records(case, tmp_path), server)
    assert_failures(state.failures, expected["failed"])
    secrets = expected.get("secrets", [])
    if secrets:
        assert_no_secret(data, secrets, [result.stdout, result.stderr])


def outside(files: dict[str, bytes | None]) -> dict[str, bytes | None]:
    return {k: v for k, v in files.items() if k != "data" and not k.startswith("data/")}


def assert_stderr_lines(stderr: str, fragments: list[str]) -> None:
    """Exactly one stderr line per fragment, in any order (workers race)."""
    lines = stderr.splitlines()
    assert len(lines) == len(fragments), stderr
    for fragment in fragments:
        found = [line for line in lines if fragment in line]
        assert found, (fragment, stderr)
        lines.remove(found[0])


def assert_images_inside(
    data: Path,
    mapping: dict[str, dict[str, list[str]]],
    records: dict[str, dict[str, Any]],
    server: ImageServer,
) -> None:
    """Every product's images are in one folder of its own directly under
    DATA_DIR/images, and hold the bytes the server serves for their URL."""
    images = (data / "images").resolve()
    folders: dict[Path, str] = {}
    for pid, entry in mapping.items():
        for category, paths in entry.items():
            urls = image_urls(records[pid], f"{category}_images")
            for relpath in paths:
                path = (data / relpath).resolve()
                assert path.parent.parent == images, (pid, relpath)
                assert folders.setdefault(path.parent, pid) == pid, (
                    f"{pid!r} and {folders[path.parent]!r} share {path.parent}"
                )
                stem = path.name.rsplit(".", 1)[0]
                assert stem.rsplit("_", 1)[0] == category, relpath
                url = urls[int(stem.rsplit("_", 1)[1]) - 1]
                assert path.read_bytes() == server.expected_bytes(url), relpath
    saved = {p.resolve() for p in files_under(data / "images")}
    mapped = {
        (data / relpath).resolve()
        for entry in mapping.values()
        for paths in entry.values()
        for relpath in paths
    }
    assert saved == mapped, f"files no mapping names: {saved - mapped}"


def assert_failures(
    stored: dict[str, list[dict[str, Any]]], expected: dict[str, list[list[Any]]]
) -> None:
    """The failed images are exactly the expected ones, each with its reason; an
    "internal error" reason is a bug whatever the input."""
    found = {
        pid: sorted((f["category"], f["index"]) for f in items)
        for pid, items in stored.items()
    }
    wanted = {
        pid: sorted((category, index) for category, index, _ in items)
        for pid, items in expected.items()
    }
    assert found == wanted
    for pid, items in expected.items():
        reasons = {(f["category"], f["index"]): f["reason"] for f in stored[pid]}
        for category, index, fragment in items:
            reason = reasons[(category, index)]
            assert fragment in reason, (pid, category, index, reason)
    for items in stored.values():
        for failure in items:
            assert "internal error" not in failure["reason"], failure


def assert_no_secret(data: Path, secrets: list[str], outputs: list[str]) -> None:
    """No password from the catalog in the output, in `imgfetch failures`, or in
    any file of the data directory."""
    report = run_imgfetch(["failures", "--json", "--data-dir", str(data)])
    outputs = [*outputs, report.stdout, report.stderr]
    leaks = [
        (secret, where)
        for secret in secrets
        for where, text in [("output", "\n".join(outputs))]
        + [(str(p), p.read_bytes().decode("latin-1")) for p in files_under(data)]
        if secret in text
    ]
    assert not leaks, f"credentials leaked: {leaks}"


# ---------------------------------------------------------------- 1 GiB


def test_a_one_gigabyte_line_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    # A scraper killed mid-write: the array and its first URL never end. Read whole,
    # the file alone would take a gigabyte of memory.
    catalog = tmp_path / "huge.json"
    head = b'[{"id": "p1", "main_images": ["http://127.0.0.1:9/'
    chunk = b"a" * (1024 * 1024)
    with catalog.open("wb") as out:
        out.write(head)
        for _ in range((HUGE_FILE_BYTES - len(head)) // len(chunk)):
            out.write(chunk)
    size = catalog.stat().st_size
    data = tmp_path / "data"

    try:
        code, stdout, stderr, peak = run_measured(
            ["download", str(catalog), "--data-dir", str(data)], tmp_path
        )
        assert catalog.stat().st_size == size
    finally:
        catalog.unlink()  # pytest keeps the last runs' folders: free the gigabyte

    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgfetch: error: "), stderr
    assert str(catalog) in lines[0]
    assert stdout == ""
    assert peak < HUGE_FILE_MAX_RSS, f"peak memory {peak >> 20} MiB"
    assert not data.exists()


def run_measured(args: list[str], tmp_path: Path) -> tuple[int, str, str, int]:
    """Run imgfetch; return its exit code, stdout, stderr and peak RSS in bytes."""
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imgfetch", *args],
            env=imgfetch_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        # wait4 reports the resource use of this one child (Linux: ru_maxrss in
        # KiB); it has no timeout of its own, so a hung child is killed.
        watchdog = threading.Timer(90, proc.kill)
        watchdog.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    return (
        proc.returncode,
        out_path.read_text(),
        err_path.read_text(),
        usage.ru_maxrss * 1024,
    )
