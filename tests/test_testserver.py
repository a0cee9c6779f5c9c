"""Tests for the local image server used by the demo and the test suite."""

from __future__ import annotations

import email.utils
import gzip
import http.client
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator

import pytest
import requests

from imgfetch.demo import demo_catalog
from imgfetch.testimages import IMAGE_FORMATS, image_bytes
from imgfetch.testserver import FAULT_KINDS, ImageServer

MAGIC = {
    "jpeg": (0, b"\xff\xd8\xff\xe0"),
    "png": (0, b"\x89PNG\r\n\x1a\n"),
    "gif": (0, b"GIF89a"),
    "bmp": (0, b"BM"),
    "tiff": (0, b"II*\x00"),
    "avif": (4, b"ftypavif"),
    "heic": (4, b"ftypheic"),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


def raw_get(
    server: ImageServer, url: str, timeout: float = 3.0
) -> tuple[dict[str, str], bytes, OSError | None]:
    """GET over a bare socket: (headers, body bytes received, error ending it)."""
    path = url.removeprefix(server.base_url)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    data = bytearray()
    error: OSError | None = None
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request.encode())
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            error = exc
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")[1:]
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return headers, body, error


# ------------------------------------------------------------------ bodies


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_magic_bytes_and_length(fmt: str) -> None:
    body = image_bytes("shoe", fmt, 4096)
    assert len(body) == 4096
    if fmt == "webp":
        assert body[:4] == b"RIFF" and body[8:16] == b"WEBPVP8 "
        assert struct.unpack("<I", body[4:8])[0] == len(body) - 8
    else:
        offset, magic = MAGIC[fmt]
        assert body[offset : offset + len(magic)] == magic
    assert image_bytes("shoe", fmt, 4096) == body
    assert image_bytes("boot", fmt, 4096) != body
    tiny = image_bytes("shoe", fmt, 1)
    assert 8 <= len(tiny) <= 200


def test_unknown_format_rejected() -> None:
    with pytest.raises(ValueError):
        image_bytes("x", "svg")


def test_png_is_a_real_picture() -> None:
    body = image_bytes("lamp", "png", 5000)
    assert len(body) == 5000
    pos, idat, chunks = 8, b"", []
    while pos < len(body):
        (length,) = struct.unpack(">I", body[pos : pos + 4])
        kind, data = body[pos + 4 : pos + 8], body[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", body[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        chunks.append(kind)
        idat += data if kind == b"IDAT" else b""
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    width, height, depth, colour = struct.unpack(">IIBB", body[16:26])
    assert (width, height, depth, colour) == (64, 64, 8, 2)
    rows = zlib.decompress(idat)
    assert len(rows) == 64 * (1 + 64 * 3)
    assert len(set(rows[1:193:3])) == 1  # solid colour: every red sample equal


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_served_body_matches_expected(server: ImageServer, fmt: str) -> None:
    url = server.url(f"item {fmt}", fmt, 3000)
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == f"image/{fmt}"
    assert response.headers["Content-Length"] == str(len(response.content))
    assert response.content == server.expected_bytes(url)
    assert response.content == image_bytes(f"item {fmt}", fmt, 3000)


def test_url_shape_and_expected_from_path(server: ImageServer) -> None:
    url = server.url("a", fail="503:2", stall=False)
    assert url == f"{server.base_url}/img/a.jpg?fmt=jpeg&size=2048&fail=503:2&stall=0"
    path = url.removeprefix("http:")
    assert server.expected_bytes(path) == image_bytes("a", "jpeg", 2048)
    assert server.expected_bytes("/img/b.gif?size=100") == image_bytes("b", "gif", 100)


def test_unknown_path_is_404_and_counted(server: ImageServer) -> None:
    before = server.total_requests
    response = requests.get(f"{server.base_url}/nothing?x=1", timeout=5)
    assert response.status_code == 404
    assert server.requests_for("/nothing?x=1") == 1
    assert server.total_requests == before + 1


def test_keep_alive_reuses_connection(server: ImageServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/img/k1.jpg?size=100")
        assert conn.getresponse().read() == image_bytes("k1", "jpeg", 100)
        first = conn.sock
        conn.request("GET", "/img/k2.jpg?size=100")
        assert conn.getresponse().read() == image_bytes("k2", "jpeg", 100)
        assert conn.sock is first
    finally:
        conn.close()


# ------------------------------------------------------------------ errors


def test_fail_then_succeed_and_counts(server: ImageServer) -> None:
    url = server.url("flaky", fail="503:2", retry_after=7)
    codes = []
    for _ in range(3):
        response = requests.get(url, timeout=5)
        codes.append(response.status_code)
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "7"
    assert codes == [503, 503, 200]
    assert server.requests_for(url) == 3
    server.reset_counts()
    assert server.requests_for(url) == 0
    assert requests.get(url, timeout=5).status_code == 503


def test_permanent_status(server: ImageServer) -> None:
    url = server.url("gone", status=410)
    for _ in range(3):
        response = requests.get(url, timeout=5)
        assert response.status_code == 410
        assert b"<html>" in response.content


def test_html_lies_about_content_type(server: ImageServer) -> None:
    url = server.url("trap", html=1)
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.content.startswith(b"<!DOCTYPE html><html>")
    assert response.content == server.expected_bytes(url)


def test_bad_parameter_is_400(server: ImageServer) -> None:
    response = requests.get(f"{server.base_url}/img/x.jpg?size=lots", timeout=5)
    assert response.status_code == 400


def test_truncate(server: ImageServer) -> None:
    url = server.url("cut", size=4000, truncate=2)
    headers, body, error = raw_get(server, url)
    assert error is None
    assert headers["content-length"] == "4000"
    assert body == server.expected_bytes(url)[:2000]
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=5)
    assert requests.get(url, timeout=5).content == server.expected_bytes(url)


def test_reset(server: ImageServer) -> None:
    url = server.url("rst", size=4000, reset=2)
    headers, body, error = raw_get(server, url)
    assert isinstance(error, ConnectionResetError)
    assert len(body) < int(headers["content-length"])
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url, timeout=5)
    assert requests.get(url, timeout=5).content == server.expected_bytes(url)


def test_redirect_chain(server: ImageServer) -> None:
    url = server.url("moved", redirect=2)
    response = requests.get(url, timeout=5)
    assert [r.status_code for r in response.history] == [302, 302]
    assert response.url.endswith("redirect=0")
    assert response.content == server.expected_bytes(url)
    for hop in [url, *(r.headers["Location"] for r in response.history)]:
        assert server.requests_for(hop) == 1


def test_location_redirect(server: ImageServer) -> None:
    url = server.url("evil", location="file:///etc/passwd")
    response = requests.get(url, timeout=5, allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"] == "file:///etc/passwd"


def test_referer(server: ImageServer) -> None:
    url = server.url("hotlink", referer="shop.example")
    denied = requests.get(url, timeout=5)
    assert denied.status_code == 403
    assert denied.content.startswith(b"<?xml")
    allowed = requests.get(
        url, timeout=5, headers={"Referer": "https://shop.example/item/1"}
    )
    assert allowed.status_code == 200
    assert allowed.content == server.expected_bytes(url)


@pytest.mark.parametrize(
    ("referer", "allowed", "denied"),
    [
        # self: only a Referer from the server's own origin
        ("self", ["{base}/", "{base}/shop/item"], ["", "https://other.example/"]),
        # none: only without a Referer (refuses hotlinking pages)
        ("none", [""], ["{base}/", "https://shop.example/"]),
    ],
)
def test_referer_modes(
    server: ImageServer, referer: str, allowed: list[str], denied: list[str]
) -> None:
    url = server.url(f"guarded-{referer}", referer=referer)
    sent = [(a, 200) for a in allowed] + [(d, 403) for d in denied]
    for template, status in sent:
        value = template.format(base=server.base_url)
        headers = {"Referer": value} if value else {}
        response = requests.get(url, timeout=5, headers=headers)
        assert response.status_code == status, value
    seen = [h.get("Referer", "") for h in server.headers_for(url)]
    assert seen == [t.format(base=server.base_url) for t, _ in sent]


@pytest.mark.parametrize(
    ("page", "start"), [("html", b"<!DOCTYPE"), ("xml", b"<?xml"), ("json", b"{")]
)
def test_error_page_served_as_an_image(
    server: ImageServer, page: str, start: bytes
) -> None:
    url = server.url("page", page=page)
    response = requests.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.content.startswith(start)
    assert response.content == server.expected_bytes(url)


def test_cut_is_a_short_body_with_a_matching_length(server: ImageServer) -> None:
    url = server.url("half", "png", 3000, cut="1500:1")
    first = requests.get(url, timeout=5)  # no error: the framing is right
    assert first.headers["Content-Length"] == "1500"
    assert first.content == server.expected_bytes(url)[:1500]
    second = requests.get(url, timeout=5)
    assert second.content == server.expected_bytes(url)
    always = server.url("halved", "png", 3000, cut="100")
    for _ in range(3):
        assert (
            requests.get(always, timeout=5).content
            == image_bytes("halved", "png", 3000)[:100]
        )


def test_same_image_under_several_urls(server: ImageServer) -> None:
    urls = [server.url("shared", "webp", 4000, v=n) for n in range(3)]
    assert len(set(urls)) == 3
    bodies = {requests.get(u, timeout=5).content for u in urls}
    assert bodies == {image_bytes("shared", "webp", 4000)}
    assert all(server.requests_for(u) == 1 for u in urls)


def test_headers_are_recorded_per_request(server: ImageServer) -> None:
    url = server.url("seen")
    requests.get(url, timeout=5, headers={"X-Probe": "1"})
    requests.get(url, timeout=5, headers={"X-Probe": "2"})
    assert [h["X-Probe"] for h in server.headers_for(url)] == ["1", "2"]


def test_answers_as_a_proxy_too(server: ImageServer) -> None:
    # A client told to use the server as its proxy sends absolute URLs for a host
    # that need not exist; the server answers them as its own.
    proxies = {"http": server.base_url}
    url = "http://img.example-cdn.invalid/img/via.png?fmt=png&size=900"
    before = server.proxied_requests
    response = requests.get(url, timeout=5, proxies=proxies)
    assert response.status_code == 200
    assert response.content == image_bytes("via", "png", 900)
    assert server.proxied_requests == before + 1
    assert server.requests_for(url) == 1


def test_max_concurrency_counts_overlapping_requests() -> None:
    with ImageServer() as srv:
        urls = [srv.url(f"cc{n}", delay=0.3) for n in range(3)]
        threads = [
            threading.Thread(target=requests.get, args=(u,), kwargs={"timeout": 5})
            for u in urls
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert 1 <= srv.max_concurrency <= 3
        srv.reset_counts()
        requests.get(srv.url("alone"), timeout=5)
        assert srv.max_concurrency == 1


def test_gzip(server: ImageServer) -> None:
    url = server.url("packed", "bmp", 5000, gzip=1)
    response = requests.get(url, timeout=5, stream=True)
    wire = response.raw.read(decode_content=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert int(response.headers["Content-Length"]) == len(wire)
    assert wire.startswith(b"\x1f\x8b")
    assert gzip.decompress(wire) == server.expected_bytes(url)
    assert requests.get(url, timeout=5).content == server.expected_bytes(url)


# ------------------------------------------------------------------ timing


def test_delay_param(server: ImageServer) -> None:
    started = time.monotonic()
    response = requests.get(server.url("slow", delay=0.3), timeout=5)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drip(server: ImageServer) -> None:
    url = server.url("drop", "tiff", 20, drip=0.02)
    started = time.monotonic()
    response = requests.get(url, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert response.content == server.expected_bytes(url)


def test_drip_after_a_fast_head(server: ImageServer) -> None:
    # 4,000 bytes at once, then 20 bytes one at a time: the head is not dripped
    # (4,020 bytes at 20 ms each would take 80 s, past the read timeout).
    url = server.url("drop-fast", "jpeg", 4020, drip=0.02, fast=4000)
    started = time.monotonic()
    response = requests.get(url, timeout=5)
    assert time.monotonic() - started >= 0.3
    assert response.content == server.expected_bytes(url)


def test_stall_times_out_and_stop_is_prompt() -> None:
    srv = ImageServer().start()
    url = srv.url("hung", stall=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(url, timeout=(2, 0.5))
    results: list[tuple[bytes, OSError | None]] = []
    dripping = srv.url("forever", drip=5)
    threads = [
        threading.Thread(target=lambda u=u: results.append(raw_get(srv, u, 10)[1:]))
        for u in (url, dripping)
    ]
    for thread in threads:
        thread.start()
    while srv.requests_for(url) < 2 or srv.requests_for(dripping) < 1:
        time.sleep(0.01)
    time.sleep(0.1)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2
    for thread in threads:
        thread.join(timeout=2)
        assert not thread.is_alive()
    assert len(results) == 2
    srv.stop()  # idempotent


def test_port_reuse_and_busy_port() -> None:
    first = ImageServer().start()
    port = first.port
    try:
        with pytest.raises(OSError):
            ImageServer().start(port=port)
        requests.get(first.url("p"), timeout=5)
        first.stop()
        first.start(port=port)
        assert first.base_url == f"http://127.0.0.1:{port}"
        assert requests.get(first.url("p"), timeout=5).status_code == 200
    finally:
        first.stop()


def test_global_delay() -> None:
    with ImageServer(delay=0.2) as srv:
        started = time.monotonic()
        assert requests.get(srv.url("d"), timeout=5).status_code == 200
        assert time.monotonic() - started >= 0.2


# ------------------------------------------------------------------ faults


def _outcome(url: str, expected: bytes) -> str:
    try:
        response = requests.get(url, timeout=5)
    except requests.exceptions.RequestException:
        return "broken"
    if response.status_code == 200 and response.content != expected:
        return "short"
    return str(response.status_code)


def _fault_table(seed: int) -> list[list[str]]:
    with ImageServer(fault_rate=0.5, seed=seed) as srv:
        urls = [srv.url(f"f{i}", size=3000) for i in range(12)]
        return [[_outcome(u, srv.expected_bytes(u)) for _ in range(3)] for u in urls]


def test_fault_rate_is_deterministic() -> None:
    table = _fault_table(seed=1)
    assert _fault_table(seed=1) == table
    assert _fault_table(seed=2) != table
    assert all(row[2] == "200" for row in table)
    outcomes = {cell for row in table for cell in row[:2]}
    assert {"200", "503", "500", "broken"} <= outcomes
    assert "short" not in outcomes


def test_every_fault_kind_can_be_injected() -> None:
    # fault_rate=1 with a single kind: both first attempts fail that way, and the
    # third is served.
    for kind in FAULT_KINDS:
        with ImageServer(fault_rate=1.0, faults=[kind]) as srv:
            url = srv.url(f"k-{kind}", size=3000)
            expected = srv.expected_bytes(url)
            for _ in range(2):
                assert _fault_seen(url, expected) == _FAULT_LOOK[kind], kind
            assert requests.get(url, timeout=5).content == expected


_FAULT_LOOK = {
    "503": "503",
    "500": "500",
    "429": "429 seconds",
    "429-date": "429 date",
    "reset": "broken",
    "truncate": "broken",
    "stall": "stalled",
}


def _fault_seen(url: str, expected: bytes) -> str:
    try:
        response = requests.get(url, timeout=(5, 0.3))
    except requests.exceptions.ReadTimeout:
        return "stalled"
    except requests.exceptions.RequestException:
        return "broken"
    if response.status_code == 429:
        wait = response.headers["Retry-After"]
        if wait.isdigit():
            return "429 seconds"
        assert email.utils.parsedate_to_datetime(wait).timestamp() > 0
        return "429 date"
    assert response.content != expected or response.status_code != 200
    return str(response.status_code)


def test_unknown_fault_kind_rejected() -> None:
    with pytest.raises(ValueError):
        ImageServer(faults=["teapot"])
    with pytest.raises(ValueError):
        ImageServer(faults=[])


# ------------------------------------------------------------------ catalog


def test_demo_catalog_shape(server: ImageServer) -> None:
    catalog = demo_catalog(server)
    assert catalog == demo_catalog(server)
    assert len(catalog) == 60
    ids = [str(p["id"]) for p in catalog]
    assert len(set(ids)) == 60 and all(len(i) == 12 and i.isdigit() for i in ids)
    assert any(isinstance(p["id"], int) for p in catalog)
    urls: list[str] = []
    for product in catalog:
        assert set(product) == {
            "id",
            "title",
            "main_images",
            "sku_images",
            "qc_images",
        }
        assert product["title"]
        assert 1 <= len(product["main_images"]) <= 4
        assert 0 <= len(product["sku_images"]) <= 4
        qc = product["qc_images"]
        assert isinstance(qc, str) or 0 <= len(qc) <= 3
        urls += product["main_images"] + ([qc] if isinstance(qc, str) else qc)
        urls += [s["url"] if isinstance(s, dict) else s for s in product["sku_images"]]
    assert any(isinstance(p["qc_images"], str) for p in catalog)
    assert any(
        p["sku_images"] and isinstance(p["sku_images"][0], dict) for p in catalog
    )
    assert any(u.startswith("//127.0.0.1:") for u in urls)
    assert {u.split("fmt=")[1].split("&")[0] for u in urls} == {
        "jpeg",
        "png",
        "webp",
        "gif",
    }
    for url in urls[:8]:
        full = "http:" + url if url.startswith("//") else url
        response = requests.get(full, timeout=5)
        assert response.status_code == 200
        assert response.content == server.expected_bytes(url)
        assert 2048 <= len(response.content) <= 40 * 1024
