"""Trying to break out: hostile ids, symlinks, categories, URLs, redirects, response
headers and sizes, file modes and credentials, against real `imgfetch` processes
and real servers on 127.0.0.1.

The promise checked here (issue #5): no id, category, URL, redirect or response
header makes imgfetch write outside the data directory or read a local file;
redirects go to http and https only; a body is capped at --max-bytes while it
streams; temporary and saved files get the user's normal modes (0666 less the
umask), never more; credentials appear in no output, log, failure reason or state
file. Two exceptions are the documented design (README, "Downloading from real
CDNs"): the pending records are the input dicts exactly as read (the spec's
contract for pending_tasks.json, which the markers and sqlite stores keep too), so
they hold whatever the input holds until the product is done; and a failure
record's URL keeps its query, so that --retry-failed can use a signed URL, while
its user and password become `***`.

Symlinks: the data directory, and its images/ folder, may be symlinks (the user's
choice, e.g. images on another disk). Inside images/ imgfetch follows none: a
symlink where a product's folder belongs is replaced by a real folder (only the
link goes), and a symlink where an image belongs is neither reused nor written
through.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    imgfetch_env,
    read_state,
    run_imgfetch,
    wait_for_progress,
    write_catalog,
)

from imgfetch.backends import backend_names, open_store
from imgfetch.backends.base import Failure
from imgfetch.fetch import SPILL_BYTES
from imgfetch.paths import product_dir_name
from imgfetch.testimages import image_bytes
from imgfetch.testserver import ImageServer

STORES = backend_names()
# Starts like a JPEG, so that a fetcher that read it would save it as an image.
CANARY = b"\xff\xd8\xff\xe0 canary-7f3a: a local file imgfetch must never read\n"
CANARY_MARK = b"canary-7f3a"
QUICK = ["--retries", "0", "--workers", "4", "--progress", "plain"]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy in the environment would capture requests to 127.0.0.1; children
    # inherit this process's environment (conftest.imgfetch_env).
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


# ------------------------------------------------- a server that misbehaves


@dataclass
class Route:
    """One canned answer of HostileServer."""

    head: bytes = b""  # the first bytes of the body, sent at once
    filler: int = 0  # zero bytes sent after the head
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    announce: bool = True  # Content-Length; otherwise chunked, length unknown
    hold: threading.Event | None = None  # the rest of the body waits for it
    sent: int = 0  # body bytes the socket accepted, all requests together
    hits: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked bodies need it
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path.partition("?")[0])
        if route is None:
            self.send_error(404)
            return
        route.hits += 1
        try:
            self._answer(route)
        except OSError:
            pass  # the client hung up: what it refused is what we want to see
        finally:
            self.close_connection = True
            route.done.set()

    def _answer(self, route: Route) -> None:
        self.send_response(route.status)
        for name, value in route.headers.items():
            self.send_header(name, value)
        if route.announce:
            self.send_header("Content-Length", str(len(route.head) + route.filler))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for piece in self._pieces(route):
            frame = b"%x\r\n%s\r\n" % (len(piece), piece)
            self.wfile.write(piece if route.announce else frame)
            route.sent += len(piece)
        if not route.announce:
            self.wfile.write(b"0\r\n\r\n")

    def _pieces(self, route: Route) -> Iterator[bytes]:
        if route.head:
            yield route.head
        if route.hold is not None:
            self.wfile.flush()
            route.hold.wait(60)
        left = route.filler
        zeros = bytes(64 * 1024)
        while left > 0:
            yield zeros[:left]
            left -= len(zeros)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: dict[str, Route]


class HostileServer:
    """127.0.0.1 answers ImageServer cannot give: chosen headers, bodies far over
    any limit (counting what got out), bodies held back until the test says."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.routes = self.routes
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for route in self.routes.values():
            if route.hold is not None:
                route.hold.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str, route: Route, userinfo: str = "") -> str:
        self.routes[path] = route
        port = self._httpd.server_address[1]
        return f"http://{userinfo}127.0.0.1:{port}{path}"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as srv:
        yield srv


# ------------------------------------------------------------------- helpers


def download(catalog: Path, data: Path, *extra: str) -> list[str]:
    return ["download", str(catalog), "-d", str(data), *QUICK, *extra]


def tree(root: Path, skip: Path | None = None) -> dict[str, Any]:
    """Every entry under `root` (not following links): bytes, "dir" or the link."""
    found: dict[str, Any] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            if skip is not None and (path == skip or skip in path.parents):
                continue
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = path.read_bytes()
    return found


def data_files(data: Path) -> Iterator[Path]:
    for folder, _dirs, files in os.walk(data):
        for name in files:
            yield Path(folder, name)


def assert_inside(data: Path, mapping: dict[str, dict[str, list[str]]]) -> None:
    """Each product's images sit in one real folder of its own, directly under
    DATA_DIR/images, as regular files."""
    images = (data / "images").resolve()
    owners: dict[Path, str] = {}
    for pid, entry in mapping.items():
        for paths in entry.values():
            for relpath in paths:
                path = data / relpath
                assert not path.is_symlink() and path.is_file(), (pid, relpath)
                assert not path.parent.is_symlink(), (pid, relpath)
                assert path.resolve().parent.parent == images, (pid, relpath)
                assert owners.setdefault(path.parent, pid) == pid, (pid, relpath)


def failures_by_slot(data: Path, pid: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(f["category"], f["index"]): f for f in read_state(data).failures[pid]}


# ------------------------------------------------------------------- ids


HOSTILE_IDS = [
    "..",
    ".",
    "../../x",
    "/abs/path",
    "a/../../b",
    "nul\x00byte",
    "back\\slash\\..\\..\\x",
    "C:\\evil",
    "CON",
    "con",
    "lpt1.txt",
    "images",
    "x" * 300,
    "caf\u00e9",  # NFC: é as one code point
    "cafe\u0301",  # NFD: e + combining acute; the same word once normalised
]


@pytest.mark.parametrize("store", STORES)
def test_hostile_ids_each_get_a_folder_of_their_own_inside(
    tmp_path: Path, server: ImageServer, store: str
) -> None:
    assert unicodedata.normalize("NFC", HOSTILE_IDS[-1]) == HOSTILE_IDS[-2]
    records = [
        {"id": pid, "main_images": [server.url(f"id{n}", size=900 + n)]}
        for n, pid in enumerate(HOSTILE_IDS)
    ]
    catalog = write_catalog(tmp_path / "c.json", records)
    data = tmp_path / "data"
    before = tree(tmp_path, skip=data)

    result = run_imgfetch(download(catalog, data, "--backend", store))

    assert result.returncode == 0, result.stderr
    assert tree(tmp_path, skip=data) == before, "something changed outside"
    mapping = read_state(data).mapping
    assert sorted(mapping) == sorted(HOSTILE_IDS)
    assert_inside(data, mapping)
    for n, pid in enumerate(HOSTILE_IDS):
        (relpath,) = mapping[pid]["main"]
        assert relpath == f"images/{product_dir_name(pid)}/main_1.jpg"
        assert (data / relpath).read_bytes() == server.expected_bytes(
            records[n]["main_images"][0]
        )
    # ASCII folder names: a file system that normalises unicode (macOS) cannot
    # merge the NFC and NFD spellings into one folder.
    nfc, nfd = (product_dir_name(pid) for pid in HOSTILE_IDS[-2:])
    assert nfc != nfd and nfc.isascii() and nfd.isascii()
    assert len(list((data / "images").iterdir())) == len(HOSTILE_IDS)


# ------------------------------------------------------------------ symlinks


@pytest.mark.parametrize("store", STORES)
def test_symlinks_inside_images_are_never_followed(
    tmp_path: Path, server: ImageServer, store: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "main_1.jpg").write_bytes(CANARY)
    (outside / "secret.jpg").write_bytes(CANARY)
    data = tmp_path / "data"
    # p1's folder is a link to a folder outside, holding a "saved" main_1.jpg;
    # p2's folder is real, but its main_1.jpg is a link to a local file.
    (data / "images").mkdir(parents=True)
    (data / "images" / "p1").symlink_to(outside, target_is_directory=True)
    (data / "images" / "p2").mkdir()
    (data / "images" / "p2" / "main_1.jpg").symlink_to(outside / "secret.jpg")
    records = [
        {"id": pid, "main_images": [server.url(f"{pid}-{n}") for n in (1, 2)]}
        for pid in ("p1", "p2")
    ]
    catalog = write_catalog(tmp_path / "c.json", records)
    before = tree(tmp_path, skip=data)

    result = run_imgfetch(download(catalog, data, "--backend", store))

    assert result.returncode == 0, result.stderr
    assert tree(tmp_path, skip=data) == before, "written through a symlink"
    warned = [line for line in result.stderr.splitlines() if "symbolic link" in line]
    assert len(warned) == 1 and "p1" in warned[0], result.stderr
    mapping = read_state(data).mapping
    assert_inside(data, mapping)
    for record in records:
        paths = mapping[record["id"]]["main"]
        assert len(paths) == 2
        for relpath, url in zip(paths, record["main_images"], strict=True):
            assert (data / relpath).read_bytes() == server.expected_bytes(url)
    for path in data_files(data):
        assert CANARY_MARK not in path.read_bytes(), path


def test_a_symlinked_data_directory_and_images_folder_are_followed(
    tmp_path: Path, server: ImageServer
) -> None:
    # The user's own choice (a bigger disk): both links are used, not replaced.
    real_data, real_images = tmp_path / "disk1" / "data", tmp_path / "disk2" / "img"
    real_data.mkdir(parents=True)
    real_images.mkdir(parents=True)
    data = tmp_path / "data"
    data.symlink_to(real_data, target_is_directory=True)
    (real_data / "images").symlink_to(real_images, target_is_directory=True)
    records = [{"id": "p1", "main_images": [server.url("linked")]}]
    catalog = write_catalog(tmp_path / "c.json", records)

    result = run_imgfetch(download(catalog, data))

    assert result.returncode == 0, result.stderr
    assert data.is_symlink() and (real_data / "images").is_symlink()
    saved = real_images / "p1" / "main_1.jpg"
    assert saved.read_bytes() == server.expected_bytes(records[0]["main_images"][0])
    assert read_state(data).mapping["p1"]["main"] == ["images/p1/main_1.jpg"]


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(
    tmp_path: Path, server: ImageServer
) -> None:
    # Opening the lock through a link could truncate or create the target.
    target = tmp_path / "precious.txt"
    target.write_bytes(CANARY)
    data = tmp_path / "data"
    data.mkdir()
    (data / ".imgfetch.lock").symlink_to(target)
    catalog = write_catalog(tmp_path / "c.json", [{"id": "p", "main_images": []}])
    before = tree(tmp_path)

    result = run_imgfetch(download(catalog, data))

    assert result.returncode == 4, result.stderr
    assert "cannot lock" in result.stderr and "Traceback" not in result.stderr
    assert tree(tmp_path) == before


@pytest.mark.parametrize("name", backend_names())
def test_a_symlink_in_place_of_a_stores_files_is_refused(
    tmp_path: Path, name: str
) -> None:
    # A planted markers/ folder or imgfetch.sqlite3 link would make the store
    # write wherever it points.
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    owned = open_store(name, data).owned_paths(data)[0]
    owned.symlink_to(outside / owned.name)
    catalog = write_catalog(tmp_path / "c.json", [{"id": "p", "main_images": []}])
    before = tree(tmp_path)

    result = run_imgfetch([*download(catalog, data), "--backend", name])

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "symbolic link" in result.stderr
    assert str(owned.name) in result.stderr
    after = tree(tmp_path)
    assert after.pop("data/.imgfetch.lock", b"") == b""  # the lock, taken first
    assert after == before


# ---------------------------------------------------------------- categories


@pytest.mark.parametrize("category", ["../../x", "a/b", "..", "x\\..\\y", "/abs"])
def test_a_category_that_is_a_path_is_refused(tmp_path: Path, category: str) -> None:
    catalog = write_catalog(tmp_path / "c.json", [{"id": "p", "pics": ["http://h/"]}])
    data = tmp_path / "data"

    result = run_imgfetch(download(catalog, data, "--field", f"{category}=pics"))

    assert result.returncode == 2
    assert repr(category) in result.stderr and "Traceback" not in result.stderr
    assert not data.exists()


@pytest.mark.parametrize("store", STORES)
def test_a_stored_failure_with_a_path_for_category_is_refused_on_retry(
    tmp_path: Path, server: ImageServer, store: str
) -> None:
    # A hand-edited (or planted) failure record: --retry-failed would name the
    # file "<category>_<index>.<ext>", here images/p1/../../x_1.jpg.
    data = tmp_path / "data"
    data.mkdir()
    state = open_store(store, data)
    state.open(lambda record: str(record["id"]))
    state.add_pending([("p1", {"id": "p1"})])
    url = server.url("escape")
    bad = Failure("../../x", 1, url, "permanent: HTTP 404", 1)
    state.record_product("p1", {"main": [], "sku": [], "qc": []}, [bad])
    state.flush()
    state.close()
    (data / ".imgfetch-store").write_text(json.dumps({"store": store}) + "\n")
    before = tree(tmp_path)

    result = run_imgfetch(["download", "--retry-failed", "-d", str(data), *QUICK])

    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "../../x" in lines[0], result.stderr
    assert server.total_requests == 0
    # Only the lock appeared (taken before the state is read; see the README).
    after = tree(tmp_path)
    assert after.pop("data/.imgfetch.lock") == b""
    assert after == before


# ------------------------------------------------------ URLs and redirects


@pytest.mark.parametrize("store", STORES)
def test_no_url_redirect_or_header_reads_a_local_file_or_names_a_file(
    tmp_path: Path, server: ImageServer, hostile: HostileServer, store: str
) -> None:
    canary = tmp_path / "canary.jpg"
    canary.write_bytes(CANARY)
    landing = server.url("landing", "png", size=700)
    disposition = image_bytes("disposition", "jpeg", 1500)
    evil_headers = {
        "Content-Type": "application/octet-stream",
        "Content-Disposition": (
            "attachment; filename=\"../../evil.jpg\"; filename*=UTF-8''..%2F..%2Fevil"
        ),
        "Content-Location": canary.as_uri(),
        "Link": f"<{canary.as_uri()}>; rel=canonical",
    }
    dots = server.url("dots").replace("/img/", "/img/../img/")
    # (URL, None when it must be saved, else a fragment of its failure reason)
    cases: list[tuple[str, str | None]] = [
        (canary.as_uri(), "'file'"),
        (f"file://localhost{canary}", "'file'"),
        ("ftp://127.0.0.1:1/a.jpg", "'ftp'"),
        ("data:image/jpeg;base64," + base64.b64encode(CANARY).decode(), "'data'"),
        ("javascript:alert(1)", "'javascript'"),
        ("gopher://127.0.0.1:1/_x", "'gopher'"),
        ("http://127.0.0.1:1/refused.jpg", "transient: connection failed"),
        (dots, None),  # `..` in the path is the server's business
        (f"{server.base_url}/img/..%2F..%2Fevil.jpg?size=999", None),
        (hostile.url("/disposition", Route(disposition, headers=evil_headers)), None),
        (server.url("r-file", location=canary.as_uri()), "redirect to a file: URL"),
        (server.url("r-local", location=f"file://localhost{canary}"), "a file: URL"),
        (server.url("r-ftp", location="ftp://127.0.0.1:1/x.jpg"), "a ftp: URL"),
        (server.url("r-rel", location=landing.removeprefix(server.base_url)), None),
        (hostile.url("/loop", Route(status=302, headers={"Location": "/loop"})), "10"),
        (server.url("r-11", redirect=11), "more than 10 redirects"),
        (server.url("r-10", redirect=10), None),
    ]
    catalog = write_catalog(
        tmp_path / "c.json", [{"id": "u", "main_images": [u for u, _ in cases]}]
    )
    data = tmp_path / "data"
    before = tree(tmp_path, skip=data)

    result = run_imgfetch(download(catalog, data, "--backend", store))

    assert result.returncode == 1, result.stderr
    assert tree(tmp_path, skip=data) == before
    failed = failures_by_slot(data, "u")
    assert sorted(i for _, i in failed) == [
        n for n, (_, why) in enumerate(cases, 1) if why is not None
    ]
    for n, (_url, why) in enumerate(cases, 1):
        if why is not None:
            assert why in failed[("main", n)]["reason"], (n, failed[("main", n)])
    saved = read_state(data).mapping["u"]["main"]
    assert_inside(data, {"u": {"main": saved}})
    # File names come from the slot and the bytes, never from the URL or headers.
    folder = data / "images" / "u"
    names = {p.name for p in folder.iterdir()}
    assert names == {Path(p).name for p in saved}
    wanted = {8: "jpg", 9: "jpg", 10: "jpg", 14: "png", 17: "jpg"}
    assert names == {f"main_{n}.{ext}" for n, ext in wanted.items()}
    assert (folder / "main_10.jpg").read_bytes() == disposition
    assert (folder / "main_14.png").read_bytes() == server.expected_bytes(landing)
    assert hostile.routes["/loop"].hits == 11
    everything = [result.stdout.encode(), result.stderr.encode()]
    everything += [p.read_bytes() for p in data_files(data)]
    assert not [text for text in everything if CANARY_MARK in text]
    assert not list(tmp_path.rglob("*evil*"))


# ----------------------------------------------------------- response size

BIG = 256 * 1024 * 1024  # what the server would send if nobody stopped it
CAP = 1024 * 1024


def _gzip_bomb(head: bytes, size: int) -> bytes:
    """A gzip body of `head` and then zeros, `size` bytes once decoded."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [packer.compress(head)]
    block = bytes(1024 * 1024)
    for _ in range(size // len(block)):
        parts.append(packer.compress(block))
    parts.append(packer.flush())
    return b"".join(parts)


def test_bodies_over_max_bytes_stop_early_and_leave_no_file(
    tmp_path: Path, hostile: HostileServer
) -> None:
    head = image_bytes("big", "jpeg", 4096)
    bomb = _gzip_bomb(head, 128 * 1024 * 1024)
    assert len(bomb) < CAP  # announced as small: only streaming can catch it
    routes = {
        "/announced": Route(head, BIG - len(head)),
        "/chunked": Route(head, BIG - len(head), announce=False),
        "/bomb": Route(bomb, headers={"Content-Encoding": "gzip"}),
    }
    urls = [hostile.url(path, route) for path, route in routes.items()]
    catalog = write_catalog(tmp_path / "c.json", [{"id": "big", "main_images": urls}])
    data = tmp_path / "data"

    args = download(catalog, data, "--max-bytes", str(CAP), "--retries", "3")
    result = run_imgfetch(args)

    assert result.returncode == 1, result.stderr
    failed = failures_by_slot(data, "big")
    assert sorted(failed) == [("main", 1), ("main", 2), ("main", 3)]
    for failure in failed.values():
        assert failure["reason"].startswith("permanent: too large"), failure
        assert failure["attempts"] == 1
    for path, route in routes.items():
        assert route.done.wait(30), f"{path}: the server is still sending"
        assert route.hits == 1, path
    # What got out is what the socket buffers took, not the body: reading stopped.
    assert routes["/announced"].sent < BIG // 4
    assert routes["/chunked"].sent < BIG // 4
    assert not list(data.rglob(".imgfetch-*.tmp")), "a temporary file was left"
    assert not (data / "images" / "big").exists() or not any(
        (data / "images" / "big").iterdir()
    )


# ------------------------------------------------------------- file modes

UMASK = 0o027
FILE_MODE = 0o666 & ~UMASK  # 0640: neither a private 0600 nor a fixed 0644


def _find_temp(data: Path, proc: subprocess.Popen[str]) -> Path:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((data / "images").rglob(".imgfetch-*.tmp"))
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("no temporary file appeared while the body was held")


@pytest.mark.parametrize("store", STORES)
def test_files_in_flight_and_at_rest_get_the_umasks_mode(
    tmp_path: Path, server: ImageServer, hostile: HostileServer, store: str
) -> None:
    release = threading.Event()
    held = hostile.url(
        # A head over fetch.SPILL_BYTES streams into its temporary file, which
        # is then caught in flight while the rest is held.
        "/held",
        Route(image_bytes("held", "jpeg", SPILL_BYTES + 8192), 1024, hold=release),
    )
    records = [
        {"id": "p1", "main_images": [held, server.url("m1")]},
        {"id": "p2", "main_images": [server.url("m2")], "qc_images": [server.url("q")]},
    ]
    catalog = write_catalog(tmp_path / "c.json", records)
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgfetch",
            *download(catalog, data, "--backend", store),
        ],
        env=imgfetch_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        umask=UMASK,
    )
    try:
        temp = _find_temp(data, proc)
        in_flight = stat.S_IMODE(temp.stat().st_mode)
    finally:
        release.set()
        out, err = proc.communicate(timeout=60)

    # Created with the umask's mode from the start (no window with another one).
    assert in_flight == FILE_MODE, oct(in_flight)
    assert proc.returncode == 0, err
    images = {p for p in data_files(data) if p.parent.parent == data / "images"}
    assert len(images) == 4
    for path in data_files(data):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path in images or path.suffix == ".json":
            assert mode == FILE_MODE, (path, oct(mode))
        # Nothing imgfetch (or SQLite, or filelock) makes is more open than the
        # umask allows.
        assert mode & ~FILE_MODE == 0, (path, oct(mode))
    for folder, _dirs, _files in os.walk(data):
        mode = stat.S_IMODE(os.lstat(folder).st_mode)
        assert mode & ~(0o777 & ~UMASK) == 0, (folder, oct(mode))


# ------------------------------------------------------------ credentials

URL_PASS = "urlpass-5e1"
PROXY_PASS = "proxypass-5e2"
DEAD_PROXY_PASS = "deadproxypass-5e3"
BEARER = "bearer-5e4"
COOKIE = "cookie-5e5"
REDIRECT_PASS = "redirectpass-5e6"
TOKEN = "token-5e7"  # signed queries of images that are saved
AMZ_SIGNATURE = "amzsig-5e8"
KEPT_SIGNATURE = "keptsig-5e9"  # signed query of images that fail: kept, by design
SECRETS = (URL_PASS, PROXY_PASS, DEAD_PROXY_PASS, BEARER, COOKIE, REDIRECT_PASS)
NAMES = ("alice", "carol", "proxyuser")  # user names are hidden with the password
PRODUCTS = 30  # enough for SQLite to leave freed records in its file, if it did


def _credential_catalog(
    server: ImageServer, hostile: HostileServer
) -> list[dict[str, Any]]:
    user = f"alice:{URL_PASS}@"
    base = server.base_url.replace("http://", f"http://{user}") + "/img"
    moved = server.base_url.replace("http://", f"http://carol:{REDIRECT_PASS}@")
    hop = Route(status=302, headers={"Location": f"{moved}/img/moved.png?fmt=png"})
    hop404 = Route(status=302, headers={"Location": f"{moved}/img/x.jpg?status=404"})
    records: list[dict[str, Any]] = [
        {"id": f"p{n:02d}", "main_images": [f"{base}/ok{n}.jpg?token={TOKEN}"]}
        for n in range(PRODUCTS)
    ]
    records[0]["main_images"] += [
        f"{base}/flaky.png?fmt=png&fail=503:1&X-Amz-Signature={AMZ_SIGNATURE}",
        hostile.url("/hop", hop, user) + f"?token={TOKEN}",
    ]
    records[1]["main_images"] += [
        f"{base}/gone.jpg?status=404&sig={KEPT_SIGNATURE}",
        f"{base}/down.jpg?fail=503:99&sig={KEPT_SIGNATURE}",
        f"{base}/page.jpg?html=1&sig={KEPT_SIGNATURE}",
        hostile.url("/hop404", hop404, user) + f"?sig={KEPT_SIGNATURE}",
    ]
    return records


def _leaks(texts: dict[str, bytes], secrets: tuple[str, ...]) -> list[str]:
    return [
        f"{s} in {at}" for at, t in texts.items() for s in secrets if s.encode() in t
    ]


def _everything(
    data: Path, *results: subprocess.CompletedProcess[str]
) -> dict[str, bytes]:
    texts = {str(p.relative_to(data)): p.read_bytes() for p in data_files(data)}
    for n, result in enumerate(results):
        texts[f"output {n}"] = (result.stdout + result.stderr).encode()
    return texts


@pytest.mark.parametrize("store", STORES)
def test_credentials_reach_no_output_log_reason_or_state_file(
    tmp_path: Path, server: ImageServer, hostile: HostileServer, store: str
) -> None:
    catalog = write_catalog(tmp_path / "c.json", _credential_catalog(server, hostile))
    data = tmp_path / "data"
    jar = tmp_path / "cookies.txt"
    jar.write_text(
        f"# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsid\t{COOKIE}\n",
        encoding="utf-8",
    )
    secret_options = [
        *("--cookies", str(jar), "--header", f"Authorization: Bearer {BEARER}"),
        *("--retries", "1", "--max-retry-wait", "0.05", "--verbose"),
    ]
    proxy = server.base_url.replace("http://", f"http://proxyuser:{PROXY_PASS}@")
    dead = f"http://proxyuser:{DEAD_PROXY_PASS}@127.0.0.1:1"
    retry = ["download", "--retry-failed", "-d", str(data), *QUICK, "-v"]

    first = run_imgfetch(download(catalog, data, "--backend", store, *secret_options))
    state = read_state(data)
    # The failure path again, through a proxy with a password, then one that is down.
    proxied = run_imgfetch([*retry, "--proxy", proxy, *secret_options])
    through_proxy = server.proxied_requests
    refused = run_imgfetch([*retry, "--proxy", dead])
    listed = run_imgfetch(["failures", "-d", str(data)])

    assert first.returncode == 1, first.stderr
    assert "retrying" in first.stderr and "redirects to" in first.stderr  # -v logs
    assert len(state.mapping) == PRODUCTS and not state.pending
    assert len(state.mapping["p00"]["main"]) == 3
    assert sorted(state.failures) == ["p01"] and len(state.failures["p01"]) == 4
    assert proxied.returncode == 1 and through_proxy >= 4, proxied.stderr
    assert refused.returncode == 1 and listed.returncode == 0, refused.stderr
    failures = read_state(data).failures["p01"]
    assert len(failures) == 4
    for failure in failures:
        assert failure["reason"].startswith("transient: proxy failed"), failure
        # The URL keeps the signed query (--retry-failed needs it), not the user.
        assert failure["url"].startswith("http://***@127.0.0.1:"), failure
        assert failure["url"].endswith(f"sig={KEPT_SIGNATURE}"), failure
    texts = _everything(data, first, proxied, refused, listed)
    assert not _leaks(texts, (*SECRETS, *NAMES, TOKEN, AMZ_SIGNATURE))
    # The kept signature is in the failure records only: the `imgfetch failures`
    # table (output 3) masks it like every other printed URL.
    records = {k for k, v in texts.items() if KEPT_SIGNATURE.encode() in v}
    assert records, "the failure records lost the signed query"
    assert not records & {"output 0", "output 1", "output 2", "output 3"}
    assert "image_mapping.json" not in records


@pytest.mark.parametrize("store", STORES)
def test_an_interrupted_run_keeps_credentials_only_in_the_pending_record(
    tmp_path: Path, server: ImageServer, hostile: HostileServer, store: str
) -> None:
    release = threading.Event()
    held = Route(image_bytes("slow", "jpeg", 4096), 4096, hold=release)
    userinfo = f"alice:{URL_PASS}@"
    fast = server.url("fast").replace("http://", f"http://{userinfo}")
    records = [
        {"id": "slow", "main_images": [fast, hostile.url("/slow", held, userinfo)]},
        {"id": "later", "main_images": [fast + "&n=2"]},
    ]
    catalog = write_catalog(tmp_path / "c.json", records)
    data = tmp_path / "data"
    args = download(catalog, data, "--backend", store, "--workers", "1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "imgfetch", *args, "--grace-period", "0.2", "-v"],
        env=imgfetch_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for_progress(data, 1)
        deadline = time.monotonic() + 30
        while hostile.routes["/slow"].sent == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()

    assert proc.returncode == 130, err
    state = read_state(data)
    assert state.pending_records == records  # verbatim: the spec's contract
    texts = _everything(data)
    texts["output"] = (out + err).encode()
    where = sorted(k for k, v in texts.items() if URL_PASS.encode() in v)
    if store == "json":
        assert where == ["pending_tasks.json"]
    elif store == "markers":
        assert where and all(k.startswith("markers/pending/") for k in where), where
    else:
        # The log too, if the interrupted run left one; the database reads it.
        assert "imgfetch.sqlite3" in where, where
        assert set(where) <= {"imgfetch.sqlite3", "imgfetch.sqlite3-wal"}, where
        _assert_only_pending_records_hold(data / "imgfetch.sqlite3", URL_PASS)

    # Finished, the product's records are gone, and so are their credentials.
    resumed = run_imgfetch(["resume", "-d", str(data), *QUICK])

    assert resumed.returncode == 0, resumed.stderr
    assert not _leaks(_everything(data, resumed), (URL_PASS, "alice"))


def _assert_only_pending_records_hold(db: Path, secret: str) -> None:
    conn = sqlite3.connect(db)
    try:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        ]
        saved = conn.execute("SELECT url FROM images").fetchall()
        assert saved, "the saved image of the unfinished product is not recorded"
        assert all(url.startswith("http://***@127.0.0.1:") for (url,) in saved), saved
        for table in tables:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            for column in columns:
                if (table, column) == ("products", "record"):
                    continue
                hits = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE CAST({column} AS TEXT) LIKE ?",
                    (f"%{secret}%",),
                ).fetchone()[0]
                assert hits == 0, (table, column)
    finally:
        conn.close()
