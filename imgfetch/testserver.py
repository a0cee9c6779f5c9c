"""Local 127.0.0.1 image server with deterministic bodies and fault injection."""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import json
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .testimages import IMAGE_FORMATS, image_bytes

HOST = "127.0.0.1"
MAX_SIZE = 64 * 1024 * 1024
STALL_SECONDS = 600.0

_HTML_PAGE = (
    b'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Security check'
    b"</title></head><body><h1>Please verify you are human</h1><p>Enable "
    b"JavaScript and cookies to continue.</p></body></html>\n"
)

_JSON_PAGE = json.dumps({"code": 40001, "message": "image not found"}).encode()

_REFERER_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
    b"  <Code>AccessDenied</Code>\n"
    b"  <Message>You are denied by bucket referer policy.</Message>\n"
    b"  <RequestId>00000000000000000000000000000000</RequestId>\n"
    b"  <HostId>img.example-cdn.test</HostId>\n</Error>\n"
)

# ----------------------------------------------------------- request parsing


class _NotFound(Exception):
    pass


@dataclass(frozen=True)
class _Spec:
    """What one request target asks the server to do."""

    path: str
    query: str
    name: str
    fmt: str
    size: int
    delay: float = 0.0
    fail: tuple[int, int] | None = None
    retry_after: str | None = None
    status: int | None = None
    stall: bool = False
    html: bool = False
    truncate: int = 0
    reset: int = 0
    drip: float = 0.0
    fast: int = 0  # with drip: bytes sent at once before the drip starts
    redirect: int = 0
    location: str | None = None
    referer: str | None = None
    gzip: bool = False
    page: str | None = None
    cut: tuple[int, int] | None = None


def _target(url_or_path: str) -> str:
    """path?query of a URL, protocol-relative URL or request target."""
    parts = urlsplit(url_or_path)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def _status_code(text: str) -> int:
    code = int(text)
    if not 200 <= code <= 599:
        raise ValueError(f"status {code} out of range")
    return code


def _fail_param(text: str) -> tuple[int, int]:
    code, _, count = text.partition(":")
    return _status_code(code), int(count or "1")


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= STALL_SECONDS:
        raise ValueError(f"duration {value} out of range")
    return value


def _cut_param(text: str) -> tuple[int, int]:
    """LEN[:N]: the first LEN bytes as the whole answer, for N attempts (or all)."""
    length, _, count = text.partition(":")
    return int(length), int(count) if count else 2**31


def _page_param(text: str) -> str:
    if text not in _PAGES:
        raise ValueError(f"unknown page {text!r}")
    return text


def _fmt_for(params: dict[str, str], ext: str) -> str:
    fmt = params.get("fmt") or {"jpg": "jpeg", "tif": "tiff"}.get(ext, ext)
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"unknown image format {fmt!r}")
    return fmt


def _size_for(params: dict[str, str]) -> int:
    size = int(params.get("size", "2048"))
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"size {size} out of range")
    return size


def _parse_target(target: str) -> _Spec:
    """Raises _NotFound for unknown paths and ValueError for bad parameters."""
    path, _, query = target.partition("?")
    if not path.startswith("/img/") or len(path) <= len("/img/"):
        raise _NotFound(path)
    stem, _, ext = path[len("/img/") :].rpartition(".")
    if not stem:
        stem, ext = ext, "jpg"
    params = dict(parse_qsl(query, keep_blank_values=True))
    get = params.get
    return _Spec(
        path=path,
        query=query,
        name=unquote(stem),
        fmt=_fmt_for(params, ext.lower()),
        size=_size_for(params),
        delay=_seconds(get("delay", "0")),
        fail=_fail_param(params["fail"]) if "fail" in params else None,
        retry_after=get("retry_after"),
        status=_status_code(params["status"]) if "status" in params else None,
        stall=get("stall", "0") not in ("", "0"),
        html=get("html", "0") not in ("", "0"),
        truncate=int(get("truncate", "0")),
        reset=int(get("reset", "0")),
        drip=_seconds(get("drip", "0")),
        fast=int(get("fast", "0")),
        redirect=int(get("redirect", "0")),
        location=get("location"),
        referer=get("referer"),
        gzip=get("gzip", "0") not in ("", "0"),
        page=_page_param(params["page"]) if "page" in params else None,
        cut=_cut_param(params["cut"]) if "cut" in params else None,
    )


def _decrement_redirect(query: str) -> str:
    """The query with redirect=N replaced by N-1, everything else kept verbatim."""
    items = query.split("&")
    for index, item in enumerate(items):
        key, _, value = item.partition("=")
        if key == "redirect":
            items[index] = f"redirect={int(value) - 1}"
    return "&".join(items)


def _body_for(spec: _Spec) -> bytes:
    """The decoded body a successful 200 answer carries."""
    if spec.html:
        return _HTML_PAGE
    if spec.page is not None:
        return _PAGES[spec.page]
    return image_bytes(spec.name, spec.fmt, spec.size)


# ------------------------------------------------------------------- handler

_PAGES = {"html": _HTML_PAGE, "xml": _REFERER_DENIED, "json": _JSON_PAGE}
# The faults `fault_rate` injects by default, and every kind it can inject: each
# is transient, so a client that retries ends with every image.
DEFAULT_FAULTS = ("503", "500", "reset", "truncate")
FAULT_KINDS = ("503", "500", "429", "429-date", "reset", "truncate", "stall")
_QUIET_ERRORS = (ConnectionError, TimeoutError)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Bursts from a concurrent downloader must not overflow the accept backlog,
    # which would cost the client a one-second SYN retry.
    request_queue_size = 128

    def __init__(self, owner: ImageServer, port: int) -> None:
        self.owner = owner
        self.stop_event = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.opened = 0  # connections accepted since start
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup we neither need nor want.
        socketserver.TCPServer.server_bind(self)
        self.server_name = HOST
        self.server_port = self.server_address[1]

    def track(self, conn: socket.socket, active: bool) -> None:
        with self._connections_lock:
            if active:
                self._connections.add(conn)
                self.opened += 1
            else:
                self._connections.discard(conn)

    def drop_connections(self) -> None:
        """Wake handlers blocked reading idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _QUIET_ERRORS) or self.stop_event.is_set():
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo and the tests own the terminal

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def handle(self) -> None:
        try:
            super().handle()
        except _QUIET_ERRORS:
            self.close_connection = True
        except OSError:
            if not self.server.stop_event.is_set():
                raise

    # -- dispatch

    def do_GET(self) -> None:
        owner = self.server.owner
        owner._track_concurrency(+1)
        self._answering = True
        try:
            self._answer(owner)
        finally:
            self._done_answering()

    def _done_answering(self) -> None:
        # Before the last write of a whole body: once it is sent, a fast client
        # has the answer and may send its next request before this thread runs
        # again, which would count as two requests answered at once.
        if self._answering:
            self._answering = False
            self.server.owner._track_concurrency(-1)

    def _answer(self, owner: ImageServer) -> None:
        target = _target(self.path)
        # A request target in absolute form ("GET http://host/...") is what a
        # client sends to a proxy: the server then plays the proxy too.
        proxied = not self.path.startswith("/")
        attempt = owner._record(target, dict(self.headers.items()), proxied)
        try:
            spec = _parse_target(target)
        except _NotFound:
            return self._send_simple(404, "text/plain", b"404 Not Found\n")
        except ValueError as exc:
            return self._send_simple(400, "text/plain", f"{exc}\n".encode())
        if not self._pause(owner.delay + spec.delay):
            return
        if spec.stall:
            return self._hang()
        fault = owner._fault_for(target, attempt)
        if fault == "stall":
            return self._hang()
        if self._refuse(spec, attempt, fault) or self._redirect(spec):
            return
        self._send_image(spec, attempt, fault)

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds`; False (and the connection dropped) if stop() came first."""
        if seconds > 0 and self.server.stop_event.wait(seconds):
            self.close_connection = True
            return False
        return True

    def _hang(self) -> None:
        # A stalled answer stops counting as in flight: the client gives up on it
        # at its read timeout, while this thread only ends when the server stops.
        self.server.owner._track_concurrency(-1)
        try:
            self.server.stop_event.wait(STALL_SECONDS)
        finally:
            self.server.owner._track_concurrency(+1, peak=False)
        self.close_connection = True

    def _refuse(self, spec: _Spec, attempt: int, fault: str | None) -> bool:
        """Answer with an error if the URL or the fault dice say so."""
        if spec.status is not None:
            page = f"<html><body><h1>{spec.status}</h1></body></html>\n"
            self._send_simple(spec.status, "text/html", page.encode())
        elif spec.referer is not None and not self._referer_allowed(spec.referer):
            self._send_simple(403, "application/xml", _REFERER_DENIED)
        elif spec.fail is not None and attempt <= spec.fail[1]:
            extra = {"Retry-After": spec.retry_after} if spec.retry_after else {}
            code = spec.fail[0]
            self._send_simple(code, "text/plain", f"{code} injected\n".encode(), extra)
        elif fault in ("503", "500"):
            self._send_simple(int(fault), "text/plain", f"{fault} injected\n".encode())
        elif fault in ("429", "429-date"):
            wait = "1" if fault == "429" else _http_date(time.time() + 1)
            self._send_simple(429, "text/plain", b"slow down\n", {"Retry-After": wait})
        else:
            return False
        return True

    def _referer_allowed(self, wanted: str) -> bool:
        """`self`: only from this server's own origin; `none`: only without one;
        anything else: a Referer containing that text."""
        sent = self.headers.get("Referer", "")
        if wanted == "self":
            return sent.startswith(f"{self.server.owner.base_url}/")
        if wanted == "none":
            return not sent
        return wanted in sent

    def _redirect(self, spec: _Spec) -> bool:
        if spec.location is not None:
            location = spec.location
        elif spec.redirect > 0:
            query = _decrement_redirect(spec.query)
            location = f"{self.server.owner.base_url}{spec.path}?{query}"
        else:
            return False
        self._send_simple(302, "text/plain", b"", {"Location": location})
        return True

    # -- answers

    def _send_simple(
        self,
        code: int,
        content_type: str,
        body: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        self._send_head(code, headers | (extra or {}))
        self.wfile.write(body)

    def _send_head(self, code: int, headers: dict[str, str]) -> None:
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send_image(self, spec: _Spec, attempt: int, fault: str | None) -> None:
        body = _body_for(spec)
        if spec.cut is not None and attempt <= spec.cut[1]:
            # A cut image framed as a whole one: the length matches what is sent.
            body = body[: spec.cut[0]]
        headers = {"Content-Type": "image/jpeg" if spec.html else f"image/{spec.fmt}"}
        if spec.gzip:
            body = gzip.compress(body, mtime=0)
            headers["Content-Encoding"] = "gzip"
        headers["Content-Length"] = str(len(body))
        self._send_head(200, headers)
        if attempt <= spec.truncate or fault == "truncate":
            self._send_truncated(body)
        elif attempt <= spec.reset or fault == "reset":
            self._send_then_reset(body)
        elif spec.drip > 0:
            self.wfile.write(body[: spec.fast])
            self._drip(body[spec.fast :], spec.drip)
        else:
            self._done_answering()
            self.wfile.write(body)

    def _send_truncated(self, body: bytes) -> None:
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def _send_then_reset(self, body: bytes) -> None:
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True
        # Linger 0 turns close() into an RST, so the client sees ECONNRESET rather
        # than a clean EOF. rfile holds a reference that would defer the close.
        linger = struct.pack("ii", 1, 0)
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.rfile.close()
        self.connection.close()

    def _drip(self, body: bytes, interval: float) -> None:
        for index in range(len(body)):
            self.wfile.write(body[index : index + 1])
            if index + 1 < len(body) and self.server.stop_event.wait(interval):
                self.close_connection = True
                return


# -------------------------------------------------------------------- server


class ImageServer:
    """Threaded HTTP image server bound to 127.0.0.1 only.

    `delay` is added before every answer. `fault_rate` is the chance that each of
    the first two attempts at a URL fails transiently, in one of `faults` (by
    default 503, 500, reset mid-body or truncated body; FAULT_KINDS adds 429 with
    Retry-After in seconds or as an HTTP date, and a stall), decided from (seed,
    path?query, attempt) so reruns repeat.

    Query parameters of /img/<name>.<ext> (all optional, freely combined):
    fmt, size, delay=S, fail=CODE:N, retry_after=V, status=CODE, stall=1, html=1,
    page=html|xml|json (200 with that page, Content-Type image/jpeg), truncate=N,
    reset=N, cut=LEN[:N] (the first LEN bytes, announced as the whole body),
    drip=S, fast=N (with drip: the first N bytes at once), redirect=N,
    location=URL, referer=SUBSTR|self|none, gzip=1. Any other parameter is
    ignored, so `v=1`, `v=2` serve the same image under several URLs.
    The server also answers as an HTTP proxy for absolute-form requests.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        fault_rate: float = 0.0,
        seed: int = 0,
        faults: Sequence[str] = DEFAULT_FAULTS,
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        unknown = set(faults) - set(FAULT_KINDS)
        if unknown or not faults:
            raise ValueError(f"faults must be some of {FAULT_KINDS}")
        self.delay = delay
        self.fault_rate = fault_rate
        self.seed = seed
        self.faults = tuple(faults)
        self._counts: dict[str, int] = {}
        self._headers: dict[str, list[dict[str, str]]] = {}
        self._proxied = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._counts_lock = threading.Lock()
        self._lifecycle_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle

    def start(self, port: int = 0) -> Self:
        """Listen on 127.0.0.1:`port` (0 picks a free one); OSError if it is busy."""
        with self._lifecycle_lock:
            if self._httpd is not None:
                raise RuntimeError("ImageServer is already running")
            httpd = _HTTPServer(self, port)
            self._port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"imgfetch-testserver-{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Release waiting handlers, close the socket and connections; idempotent."""
        with self._lifecycle_lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.stop_event.set()
        httpd.shutdown()
        httpd.server_close()
        httpd.drop_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self if self._httpd is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ImageServer has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- URLs

    def url(self, name: str, fmt: str = "jpeg", size: int = 2048, **params: Any) -> str:
        """URL of image `name`; extra keyword params become query parameters."""
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f"unknown image format {fmt!r}")
        ext = "jpg" if fmt == "jpeg" else fmt
        query = {"fmt": fmt, "size": str(size)}
        for key, value in params.items():
            if value is not None:
                query[key] = _param_text(value)
        path = f"/img/{quote(name, safe='')}.{ext}"
        return f"{self.base_url}{path}?{urlencode(query, safe=':/')}"

    def expected_bytes(self, url_or_path: str) -> bytes:
        """The body a successful 200 answer for this URL carries (gzip decoded)."""
        try:
            return _body_for(_parse_target(_target(url_or_path)))
        except _NotFound:
            raise ValueError(f"not an image URL: {url_or_path!r}") from None

    # -- counting

    def requests_for(self, url_or_path: str) -> int:
        """How many requests arrived for this exact path and query."""
        with self._counts_lock:
            return self._counts.get(_target(url_or_path), 0)

    @property
    def total_requests(self) -> int:
        with self._counts_lock:
            return sum(self._counts.values())

    def headers_for(self, url_or_path: str) -> list[dict[str, str]]:
        """The request headers of every request for this path and query, in order."""
        with self._counts_lock:
            return list(self._headers.get(_target(url_or_path), []))

    @property
    def proxied_requests(self) -> int:
        """How many requests came in proxy (absolute) form."""
        with self._counts_lock:
            return self._proxied

    @property
    def connections_opened(self) -> int:
        """How many TCP connections clients opened since start (keep-alive reuse
        keeps this below the request count)."""
        httpd = self._httpd
        return 0 if httpd is None else httpd.opened

    @property
    def max_concurrency(self) -> int:
        """The most requests ever being answered at the same time (a stalled one
        counts only until it starts to stall)."""
        with self._counts_lock:
            return self._max_in_flight

    def reset_counts(self) -> None:
        """Forget all counts, which also restarts fail=/truncate=/reset= budgets."""
        with self._counts_lock:
            self._counts.clear()
            self._headers.clear()
            self._proxied = 0
            self._max_in_flight = self._in_flight

    def _record(
        self, target: str, headers: dict[str, str] | None = None, proxied: bool = False
    ) -> int:
        """Count a request and return its 1-based attempt number for the target."""
        with self._counts_lock:
            attempt = self._counts.get(target, 0) + 1
            self._counts[target] = attempt
            self._headers.setdefault(target, []).append(headers or {})
            self._proxied += proxied
        return attempt

    def _track_concurrency(self, change: int, peak: bool = True) -> None:
        with self._counts_lock:
            self._in_flight += change
            if peak:
                self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def planned_failures(self, url_or_path: str) -> int:
        """How many attempts at this URL `fault_rate` fails before one is served
        (0, 1 or 2): what a retrying client's extra requests are explained by."""
        target = _target(url_or_path)
        count = 0
        while count < 2 and self._fault_for(target, count + 1) is not None:
            count += 1
        return count

    def _fault_for(self, target: str, attempt: int) -> str | None:
        """The transient fault, if any, injected into this attempt.

        Hash-based rather than a shared RNG so the outcome for a URL does not depend
        on the order in which concurrent clients happen to arrive.
        """
        if attempt > 2 or self.fault_rate <= 0:
            return None
        key = f"{self.seed}\0{target}\0{attempt}".encode()
        digest = hashlib.sha256(key).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 >= self.fault_rate:
            return None
        return self.faults[digest[8] % len(self.faults)]


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
