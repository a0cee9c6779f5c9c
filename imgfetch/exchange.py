"""One HTTP request over libcurl (pycurl): status, redirect target, body to a sink.

libcurl does the connection, TLS, decoding and framing in C, and Python sees only
the body chunks it hands over. That is why it replaced requests, which cost 1.7
CPU ms per image in 32 threads (benchmarks/RESULTS.md, #6). Easy handles are
pooled and keep their connections; they share DNS answers, TLS sessions and
cookies. `get` performs one request on the calling thread; the multiplexer runs
many at once with `prepare` and `conclude` around libcurl's multi interface.

A failed transfer becomes a `Permanent` or `Transient` from classify.py, with a
reason that names neither the URL nor a header.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

import pycurl

from .classify import Permanent, Transient

DEADLINE_REASON = "deadline exceeded while reading the body"
ACCEPT = "image/avif,image/webp,image/*,*/*;q=0.8"
# What requests asked for, and what CDNs are used to; libcurl decodes both.
ACCEPT_ENCODING = "gzip, deflate"
# Characters a URL may hold as they are; anything else is percent-encoded, the way
# browsers send a catalog's raw spaces and Chinese file names. `%` stays, so URLs
# already encoded are not encoded twice.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"

# libcurl error numbers (curl/curl.h) grouped by what they mean for a retry.
_UNSUPPORTED = {pycurl.E_UNSUPPORTED_PROTOCOL}
_MALFORMED = {pycurl.E_URL_MALFORMAT}
_TIMED_OUT = {pycurl.E_OPERATION_TIMEDOUT}
_TRUNCATED = {pycurl.E_PARTIAL_FILE}
_TLS_REJECTED = {getattr(pycurl, "E_PEER_FAILED_VERIFICATION", 60)}
_TLS_FAILED = {pycurl.E_SSL_CONNECT_ERROR, getattr(pycurl, "E_SSL_CACERT_BADFILE", 77)}
_PROXY_FAILED = {pycurl.E_COULDNT_RESOLVE_PROXY, getattr(pycurl, "E_PROXY", 97)}
_TOO_LARGE = {pycurl.E_FILESIZE_EXCEEDED}
# Stopped by the sink (its own reason) or by the abort check.
_STOPPED = {pycurl.E_WRITE_ERROR, pycurl.E_ABORTED_BY_CALLBACK}


class Sink:
    """Where a body goes; `write` returns False (or raises) to stop the transfer."""

    def write(self, chunk: bytes) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        """Drop whatever is held (idempotent)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one request got: HTTP status and what a caller decides on."""

    status: int
    location: str | None  # absolute; set for a redirect with a Location
    retry_after: float | None
    content_type: str
    # Why the sink stopped the body (too large, not an image...), if it did:
    # the reason for a 200, beside the point for an error status.
    sink_error: Exception | None


@dataclass(frozen=True, slots=True)
class Request:
    """One GET: what `Client.get` and the multiplexer are asked to perform."""

    url: str
    headers: list[str]  # whole lines, "Name: value"
    connect_timeout: float
    read_timeout: float
    time_left: float  # until the image's deadline
    sink: Sink


class _Handle:
    """A libcurl easy handle and the options last set on it."""

    __slots__ = ("curl", "last")

    def __init__(self, curl: pycurl.Curl) -> None:
        self.curl = curl
        self.last: dict[int, object] = {}


@dataclass(frozen=True, slots=True)
class Exchange:
    """A request set up on a handle, between `prepare` and `conclude`."""

    handle: _Handle
    body: _Body
    header_lines: list[bytes]
    proxied: bool


class Client:
    """libcurl handles, with the options shared by all of them.

    `get` performs a request on the calling thread with a pooled handle; the
    multiplexer takes handles with `pooled` and drives many at once
    (imgfetch/multiplex.py).
    """

    def __init__(
        self,
        *,
        user_agent: str,
        cookies: Path | None,
        proxy: str | None,
        stopped: Callable[[], bool],
    ) -> None:
        self.user_agent = user_agent
        self.cookies = cookies
        self.proxy = proxy
        self.stopped = stopped
        self.ca_bundle = _ca_bundle()
        self._handles: list[pycurl.Curl] = []
        self._spare: list[_Handle] = []
        self._lock = threading.Lock()
        self._env_proxies: dict[tuple[str, str], str] = {}
        self._share = pycurl.CurlShare()
        # The share locks itself (pycurl gives libcurl its lock callbacks).
        self._share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_DNS)
        self._share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_SSL_SESSION)
        self._share.setopt(pycurl.SH_SHARE, pycurl.LOCK_DATA_COOKIE)

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            # A worker still in a transfer (stuck on a silent server at exit)
            # keeps its handle: pycurl refuses to close one in use.
            with contextlib.suppress(pycurl.error):
                handle.close()

    def get(self, request: Request) -> Answer:
        """GET once on a pooled handle, blocking this thread; see `conclude`."""
        handle = self.pooled()
        try:
            exchange = self.prepare(handle, request)
            error = None
            try:
                handle.curl.perform()
            except pycurl.error as exc:
                error = exc.args
            return self.conclude(exchange, error)
        finally:
            self.release(handle)

    def pooled(self) -> _Handle:
        """A handle nobody is using: a spare one, else a new one."""
        with self._lock:
            if self._spare:
                return self._spare.pop()
        handle = _Handle(self._new_curl())
        with self._lock:
            self._handles.append(handle.curl)
        return handle

    def release(self, handle: _Handle) -> None:
        """Give back a handle from `pooled`; its connections stay open for reuse."""
        with self._lock:
            self._spare.append(handle)

    def prepare(self, handle: _Handle, request: Request) -> Exchange:
        """Set `handle` up to GET `request.url` once, without following redirects;
        the body goes to `request.sink`. The caller then performs it (alone or in
        a multi) and hands the outcome to `conclude`."""
        curl = handle.curl
        url = request.url
        curl.setopt(pycurl.URL, wire_url(url))
        proxy = self._proxy_for(url)
        # Options that rarely change are set only when they do (this runs once
        # per request).
        last = handle.last
        headers = request.headers
        if last.get(pycurl.HTTPHEADER) != headers:
            curl.setopt(pycurl.HTTPHEADER, headers)
            last[pycurl.HTTPHEADER] = headers
        if last.get(pycurl.PROXY) != proxy:
            curl.setopt(pycurl.PROXY, proxy)
            last[pycurl.PROXY] = proxy
        # libcurl has no per-read timeout: "under 1 byte/s for this long" is one.
        slow = max(1, math.ceil(request.read_timeout))
        if last.get(pycurl.LOW_SPEED_TIME) != slow:
            curl.setopt(pycurl.LOW_SPEED_TIME, slow)
            last[pycurl.LOW_SPEED_TIME] = slow
        left = request.time_left
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, _ms(min(request.connect_timeout, left)))
        curl.setopt(pycurl.TIMEOUT_MS, _ms(left))
        body = _Body(request.sink, self.stopped)
        curl.setopt(pycurl.WRITEFUNCTION, body.write)
        # Every header line, raw: only Retry-After is read from them, and only for
        # a 429 or 503 (libcurl's own RETRY_AFTER says 0 for "no header" too).
        lines: list[bytes] = []
        curl.setopt(pycurl.HEADERFUNCTION, lines.append)
        return Exchange(handle, body, lines, bool(proxy))

    def conclude(self, exchange: Exchange, error: tuple[int, str] | None) -> Answer:
        """What a performed exchange got; `error` is libcurl's (code, message)
        when the transfer failed. Raises Permanent or Transient (after closing
        the sink) when no whole answer came; else the caller keeps or closes the
        sink by the status."""
        body = exchange.body
        sink = body.sink
        curl = exchange.handle.curl
        try:
            if error is not None:
                body.fail(error[0], error[1], curl, exchange.proxied)
            status = curl.getinfo(pycurl.RESPONSE_CODE)
            location = curl.getinfo(pycurl.REDIRECT_URL)
            lines = exchange.header_lines
            wait = retry_after(lines) if status in (429, 503) else None
            content_type = curl.getinfo(pycurl.CONTENT_TYPE) or "none"
        except BaseException:
            sink.close()
            raise
        if body.error is not None:
            sink.close()
            raise body.error
        return Answer(status, location, wait, content_type, body.sink_error)

    def _new_curl(self) -> pycurl.Curl:
        curl = pycurl.Curl()
        curl.setopt(pycurl.NOSIGNAL, 1)  # no SIGALRM for timeouts: we own signals
        curl.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        curl.setopt(pycurl.FOLLOWLOCATION, 0)  # fetch.py follows, hop by hop
        curl.setopt(pycurl.ACCEPT_ENCODING, ACCEPT_ENCODING)
        curl.setopt(pycurl.USERAGENT, self.user_agent)
        curl.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        curl.setopt(pycurl.SHARE, self._share)
        if self.ca_bundle is not None:
            curl.setopt(pycurl.CAINFO, self.ca_bundle)
        # The cookie engine is on even without --cookies: a CDN that sets a
        # cookie on the first image gets it back on the next ones, from any
        # handle (the share holds one jar), as a browser would send it.
        curl.setopt(
            pycurl.COOKIEFILE, "" if self.cookies is None else str(self.cookies)
        )
        return curl

    def _proxy_for(self, url: str) -> str:
        """--proxy for every URL, else the environment's (http_proxy, no_proxy...),
        looked up once per scheme and host; "" is no proxy."""
        if self.proxy:
            return self.proxy
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self._env_proxies.get(key)
        if found is None:
            found = self._env_proxies[key] = _environment_proxy(parts.scheme, parts)
        return found


class _Body:
    """The write callback of one transfer: every chunk goes to the sink.

    pycurl refuses getinfo during a transfer, so the status is not known here; the
    caller looks at it afterwards and keeps or drops what the sink holds. A
    callback must not raise (pycurl would print the traceback and report a write
    error), so what stopped the transfer is kept in `error`.
    """

    __slots__ = ("sink", "stopped", "error", "sink_error")

    def __init__(self, sink: Sink, stopped: Callable[[], bool]) -> None:
        self.sink = sink
        self.stopped = stopped
        self.error: Exception | None = None
        self.sink_error: Exception | None = None

    def write(self, chunk: bytes) -> int | None:
        if self.stopped():
            self.error = _Aborted()
            return 0
        try:
            if self.sink.write(chunk):
                return None
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            self.sink_error = exc
        return 0

    def fail(self, code: int, message: str, curl: pycurl.Curl, proxied: bool) -> None:
        if code in _STOPPED and (self.error is not None or self.sink_error):
            return  # the abort's or the sink's own reason says it better
        if proxied and code == pycurl.E_COULDNT_CONNECT:
            # The proxy is what could not be reached.
            self.error = Transient(f"proxy failed ({_short(message)})")
            return
        self.error = _classify(code, message, curl)


class _Aborted(Exception):
    """The stop check said stop; fetch.py turns it into its own Aborted."""


def is_abort(error: BaseException) -> bool:
    return isinstance(error, _Aborted)


def _classify(code: int, message: str, curl: pycurl.Curl) -> Exception:
    if code in _UNSUPPORTED:
        return Permanent("cannot fetch this URL (scheme not supported)")
    if code in _MALFORMED:
        return Permanent("cannot fetch this URL (malformed)")
    if code in _TIMED_OUT:
        return Transient("timed out")
    if code in _TRUNCATED:
        expected = int(curl.getinfo(pycurl.CONTENT_LENGTH_DOWNLOAD_T))
        received = int(curl.getinfo(pycurl.SIZE_DOWNLOAD_T))
        if expected > received:
            return Transient(f"truncated body ({expected - received} bytes missing)")
        return Transient("truncated body")
    if code in _TOO_LARGE:
        announced = int(curl.getinfo(pycurl.CONTENT_LENGTH_DOWNLOAD_T))
        return Permanent(f"too large ({announced} bytes > --max-bytes)")
    detail = _short(message)
    if code in _TLS_REJECTED:
        return Permanent(f"TLS certificate rejected ({detail})")
    if code in _TLS_FAILED:
        return Transient(f"TLS failed ({detail})")
    if code in _PROXY_FAILED:
        return Transient(f"proxy failed ({detail})")
    if code in _STOPPED:
        return Transient(f"transfer stopped ({detail})")
    return Transient(f"connection failed ({detail})")


def retry_after(lines: list[bytes]) -> float | None:
    """Seconds the last header block's Retry-After asks for: a number or an HTTP
    date (a past date is 0); None without one or when it cannot be read."""
    value = None
    for line in lines:
        if line[:5].upper() == b"HTTP/":
            value = None  # a new block: an interim (1xx) or a proxy's CONNECT answer
        name, colon, rest = line.partition(b":")
        if colon and name.strip().lower() == b"retry-after":
            value = rest.strip().decode("latin-1")
    if not value:
        return None
    if value.isdigit():
        return float(value)
    import email.utils  # rarely needed; a start-up cost at the top

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(message: str) -> str:
    # libcurl's messages name hosts and ports, never a path or a query.
    return (message or "no detail").splitlines()[0][:160]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def wire_url(url: str) -> str:
    """`url` as it goes on the wire: percent-encoded, with an IDNA host name."""
    if url.isascii() and " " not in url:
        return url  # the common case, and nothing to do
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        host = parts.hostname or ""
        if not host.isascii():
            userinfo, at, hostport = netloc.rpartition("@")
            ascii_host = host.encode("idna").decode("ascii")
            netloc = userinfo + at + hostport.lower().replace(host, ascii_host, 1)
        return urlunsplit(
            (
                parts.scheme,
                quote(netloc, safe=_URL_SAFE),
                quote(parts.path, safe=_URL_SAFE),
                quote(parts.query, safe=_URL_SAFE),
                "",
            )
        )
    except (ValueError, UnicodeError):
        raise Permanent("cannot fetch this URL (malformed)") from None


def _environment_proxy(scheme: str, parts: SplitResult) -> str:
    import urllib.request  # once per host; a start-up cost at the top

    authority = parts.netloc.rpartition("@")[2] or parts.hostname or ""
    if urllib.request.proxy_bypass(authority):
        return ""
    proxies = urllib.request.getproxies_environment()
    return proxies.get(scheme.lower()) or proxies.get("all") or ""


def _ca_bundle() -> str | None:
    """What TLS is verified against: the variables requests honoured, then certifi's
    bundle (libcurl's built-in path is the build machine's, not this one's)."""
    configured = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get(
        "CURL_CA_BUNDLE"
    )
    if configured:
        return configured
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())
