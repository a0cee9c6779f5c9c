"""Downloading one image over HTTP: retries, politeness, validation, atomic save.

Every failure is classified. Permanent ones (404, 410, most other 4xx, a body that
is not an image, too large, a redirect to a non-HTTP URL) fail at once; transient
ones (timeouts, resets, truncated bodies, 5xx, 429) are retried with backoff until
`retries` or the image's deadline runs out. The reason stored in the failure
record starts with `permanent: ` or `transient: ` and never holds a credential.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from . import decode
from .access import HOST_BOUND_HEADERS, load_cookies, referer_for, same_host
from .classify import (
    PERMANENT,
    TRANSIENT,
    Forbidden,
    Permanent,
    Transient,
    check_fetchable,
    check_status,
    connection_reason,
    redirect_target,
    short_cause,
)
from .fsutil import BATCH_SYNC, commit, temp_file_beside
from .hosts import HostGate, host_key
from .redact import redact_text, redact_url
from .sniff import EXTENSIONS, SNIFF_BYTES, describe_non_image, sniff_format

log = logging.getLogger(__name__)

CHUNK = 64 * 1024  # the most one read returns; 1-byte reads would be a CPU sink
# Without HTTPResponse.read1 (old urllib3) a read blocks until it has this much or
# the body ends; small reads keep the deadline and the abort flag checked often.
FALLBACK_CHUNK = 1024
DEADLINE_REASON = "deadline exceeded while reading the body"
DEFAULT_USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36"
)


@dataclass(frozen=True)
class FetchConfig:
    """Network limits and identity for every image; the CLI fills it from options."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 180.0
    retries: int = 3
    backoff: float = 0.5
    max_retry_wait: float = 30.0
    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 10
    user_agent: str = DEFAULT_USER_AGENT
    pool_size: int = 8
    per_host: int = 4
    rate: float = 0.0  # requests per second per host; 0 is no limit
    headers: tuple[tuple[str, str], ...] = ()
    referer: str | None = None
    cookies: Path | None = None
    proxy: str | None = None
    verify_decode: bool = False


@dataclass(frozen=True, slots=True)
class SavedImage:
    filename: str
    size: int
    format: str


class Aborted(Exception):
    """The engine asked every download to stop now (shutdown past its grace)."""


class ImageFailed(Exception):
    """The image cannot be had; `reason` is what the failure record says."""

    def __init__(self, reason: str, attempts: int = 1) -> None:
        reason = redact_text(reason)
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


@dataclass
class _Image:
    """One image's way through its attempts."""

    url: str
    flipped: bool  # the Referer policy in use (see identity.referer_for)
    deadline: float | None = None  # set when its first request may start
    attempts: int = 0
    transient: int = 0
    undecodable: int = 0
    flip_tried: bool = False
    last: str = "deadline exceeded"


class Fetcher:
    """Saves images into folders; shared by all worker threads."""

    def __init__(
        self,
        config: FetchConfig,
        abort: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.abort = abort
        self.clock = clock
        self.gate = HostGate(config.per_host, config.rate, clock)
        self.session = requests.Session()
        # A pool slot per worker and per connection the gate lets through to one
        # host, or urllib3 discards connections and opens new ones.
        size = max(config.pool_size, config.per_host)
        adapter = HTTPAdapter(pool_connections=size, pool_maxsize=size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = config.user_agent
        self.session.headers["Accept"] = "image/avif,image/webp,image/*,*/*;q=0.8"
        headers = dict(config.headers)
        self._referer = config.referer or _pop_header(headers, "Referer")
        self._headers = headers
        # requests looks at the environment on every request: ~/.netrc (which
        # would send a login to any host named there, redirects included), proxy
        # variables and CA bundle variables. That cost a fifth of the loopback
        # rate, so it is switched off; proxies and the CA bundle are read here,
        # once, and ~/.netrc not at all.
        self.session.trust_env = False
        self.session.verify = _ca_bundle_from_environment()
        self._proxy = config.proxy
        self._env_proxies: dict[tuple[str, str], dict[str, str]] = {}
        if config.cookies is not None:
            self.session.cookies.update(load_cookies(config.cookies))
        if config.verify_decode:
            decode.require_pillow()

    def close(self) -> None:
        self.session.close()

    def _proxies_for(self, url: str) -> dict[str, str]:
        """--proxy for every URL, else the environment's (HTTP_PROXY, NO_PROXY...),
        looked up once per scheme and host."""
        if self._proxy:
            return {"http": self._proxy, "https": self._proxy}
        parts = urllib.parse.urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self._env_proxies.get(key)
        if found is None:
            found = self._env_proxies[key] = requests.utils.get_environ_proxies(url)
        return found

    def fetch(self, url: str, folder: Path, stem: str) -> SavedImage:
        """Download `url` to `folder/stem.<ext>`; raise ImageFailed or Aborted."""
        image = _Image(url, self.gate.referer_flipped(host_key(url)))
        while True:
            image.attempts += 1
            if self.abort.is_set():
                raise Aborted
            self._check_time_left(image)
            referer = referer_for(url, self._referer, image.flipped)
            try:
                saved = self._attempt(image, folder, stem, referer)
            except Forbidden as exc:
                self._flip_referer(image, str(exc))
            except Permanent as exc:
                raise ImageFailed(f"{PERMANENT}{exc}", image.attempts) from None
            except Transient as exc:
                self._wait_before_retry(image, exc)
            else:
                self.gate.remember_referer(host_key(url), image.flipped)
                return saved

    def _check_time_left(self, image: _Image) -> None:
        if image.deadline is None or image.deadline - self.clock() > 0:
            return
        # The retry wait ended late (suspend, overload): no time is left, and a
        # request with a negative timeout would raise ValueError.
        done = image.attempts - 1
        raise ImageFailed(
            f"{TRANSIENT}{image.last} (deadline exceeded after {done} attempts)", done
        )

    def _flip_referer(self, image: _Image, reason: str) -> None:
        if image.flip_tried:
            raise ImageFailed(
                f"{PERMANENT}{reason} (with either Referer policy)", image.attempts
            )
        image.flip_tried = True
        image.flipped = not image.flipped
        log.info(
            "%s: %s, trying the other Referer policy", redact_url(image.url), reason
        )

    def _wait_before_retry(self, image: _Image, exc: Transient) -> None:
        image.last = exc.reason
        image.transient += 1
        image.undecodable += exc.undecodable
        if image.undecodable > 1:
            # The same bytes twice: the server holds a broken file, not a cut one.
            raise ImageFailed(f"{PERMANENT}{exc.reason} (twice)", image.attempts)
        wait = self._backoff(image.transient, exc.retry_after)
        if exc.throttle is not None:
            self.gate.pause(exc.throttle, wait)
            log.info("%s asked to slow down: pausing it %.1fs", exc.throttle, wait)
        deadline = image.deadline if image.deadline is not None else self.clock()
        if image.transient > self.config.retries or wait >= deadline - self.clock():
            raise ImageFailed(
                f"{TRANSIENT}{exc.reason} (gave up after {image.attempts} attempts)",
                image.attempts,
            )
        log.info("retrying %s in %.1fs: %s", redact_url(image.url), wait, exc.reason)
        if self.abort.wait(wait):
            raise Aborted

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.max_retry_wait)
        # Jitter keeps many workers that failed together from retrying together.
        ceiling = self.config.backoff * 2 ** (failures - 1)
        return min(random.uniform(ceiling / 2, ceiling), self.config.max_retry_wait)

    # -- one attempt: the request, its redirects, the body

    def _attempt(
        self, image: _Image, folder: Path, stem: str, referer: str | None
    ) -> SavedImage:
        url = image.url
        headers = dict(self._headers)
        if referer:
            headers["Referer"] = referer
        # Redirects are followed here, not by requests, to check each hop's scheme
        # and to pass each hop through its host's gate.
        for _hop in range(self.config.max_redirects + 1):
            check_fetchable(url)
            host = host_key(url)
            if not self.gate.enter(host, self.abort):
                raise Aborted
            try:
                if image.deadline is None:
                    image.deadline = self.clock() + self.config.deadline
                target = self._request(url, headers, host, image.deadline, folder, stem)
            finally:
                self.gate.leave(host)
            if isinstance(target, SavedImage):
                return target
            log.debug("%s redirects to %s", redact_url(url), redact_url(target))
            if not same_host(url, target):
                headers = {
                    k: v
                    for k, v in headers.items()
                    if k.lower() not in HOST_BOUND_HEADERS
                }
            url = target
        raise Permanent(f"more than {self.config.max_redirects} redirects")

    def _request(
        self,
        url: str,
        headers: dict[str, str],
        host: str,
        deadline: float,
        folder: Path,
        stem: str,
    ) -> SavedImage | str:
        """The saved image, or the URL a redirect points to."""
        left = deadline - self.clock()
        if left <= 0:
            raise Transient("deadline exceeded waiting for the host")
        timeout = (
            min(self.config.connect_timeout, left),
            min(self.config.read_timeout, left),
        )
        with self._get(url, headers, timeout) as response:
            target = redirect_target(response, url)
            if target is not None:
                return target
            check_status(response, host)
            return self._save(response, folder, stem, deadline)

    def _get(
        self, url: str, headers: dict[str, str], timeout: tuple[float, float]
    ) -> requests.Response:
        try:
            return self.session.get(
                url,
                headers=headers,
                stream=True,
                timeout=timeout,
                allow_redirects=False,
                proxies=self._proxies_for(url),
            )
        # Fixed reasons: these exceptions quote the whole URL, which may be huge
        # or carry credentials.
        except requests.exceptions.InvalidSchema:
            raise Permanent("cannot fetch this URL (scheme not supported)") from None
        except requests.exceptions.InvalidHeader:
            raise Permanent("cannot send a request header (invalid value)") from None
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            # urllib3 raises this past requests for a host it cannot parse (a DNS
            # label over 63 characters).
            urllib3.exceptions.LocationParseError,
        ):
            raise Permanent("cannot fetch this URL (malformed)") from None
        except requests.exceptions.Timeout:
            raise Transient("timed out") from None
        except requests.exceptions.SSLError as exc:
            cause = short_cause(exc)
            if "CERTIFICATE_VERIFY_FAILED" in cause:
                raise Permanent(f"TLS certificate rejected ({cause})") from None
            raise Transient(f"TLS failed ({cause})") from None
        except requests.exceptions.ProxyError as exc:
            raise Transient(f"proxy failed ({short_cause(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise Transient(connection_reason(exc)) from None

    def _save(
        self, response: requests.Response, folder: Path, stem: str, deadline: float
    ) -> SavedImage:
        expected = _expected_length(response)
        if expected is not None and expected > self.config.max_bytes:
            raise Permanent(f"too large ({expected} bytes > --max-bytes)")
        chunks = self._body(response, deadline)
        head = _read_head(chunks)
        fmt = sniff_format(head)
        if fmt is None:
            kind = describe_non_image(head)
            ctype = response.headers.get("Content-Type", "none")
            raise Permanent(f"not an image: {kind} (Content-Type {ctype[:60]})")
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{stem}.{EXTENSIONS[fmt]}"
        with temp_file_beside(final) as (handle, temp):
            size = 0
            # The head is checked like any chunk: one read can hold the whole body.
            for chunk in _prepend(head, chunks):
                size += len(chunk)
                if size > self.config.max_bytes:
                    raise Permanent(f"too large (over {self.config.max_bytes} bytes)")
                handle.write(chunk)
            if expected is not None and size != expected:
                raise Transient(f"truncated body ({size} of {expected} bytes)")
            if self.config.verify_decode:
                handle.flush()
                _verify(temp, fmt)
            commit(handle, temp, final, sync=not BATCH_SYNC)
        return SavedImage(final.name, size, fmt)

    def _body(self, response: requests.Response, deadline: float) -> Iterator[bytes]:
        """The decoded body in chunks, within the deadline and until an abort.

        `iter_content` blocks until a whole chunk has arrived, so a server dripping
        a byte at a time is never interrupted there: read1 returns what one socket
        read brings, and the socket's timeout shrinks to what the deadline leaves.
        """
        raw = response.raw
        read1 = getattr(raw, "read1", None)
        sock = _socket_of(raw)
        while True:
            if self.abort.is_set():
                raise Aborted
            left = deadline - self.clock()
            if left <= 0:
                raise Transient(DEADLINE_REASON)
            # The timeout the deadline imposes, when shorter than the read timeout.
            by_deadline = left < self.config.read_timeout
            if sock is not None:
                try:
                    sock.settimeout(min(self.config.read_timeout, left))
                except OSError:
                    sock = None  # closed under us; the read will say why
            try:
                if read1 is not None:
                    data = read1(CHUNK, decode_content=True)
                else:
                    data = raw.read(FALLBACK_CHUNK, decode_content=True)
            except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
                if by_deadline and sock is not None:
                    raise Transient(DEADLINE_REASON) from None
                raise Transient("timed out") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise Transient(connection_reason(exc)) from None
            if not data:
                return
            yield data


def _pop_header(headers: dict[str, str], name: str) -> str | None:
    for key in list(headers):
        if key.lower() == name.lower():
            return headers.pop(key) or None
    return None


def _verify(path: Path, fmt: str) -> None:
    if not decode.can_verify(fmt):
        return  # no decoder for it in this Pillow (HEIC without pillow-heif)
    try:
        decode.verify(path, fmt)
    except decode.DecodeFailed as exc:
        reason = f"cannot decode the image ({exc.detail})"
        if exc.permanent:
            raise Permanent(reason) from None
        # Once transient: a CDN edge may have cached a cut upload and heal.
        raise Transient(reason, undecodable=True) from None


def _socket_of(raw: object) -> socket.socket | None:
    """The socket under a streamed urllib3 response, if it can be reached."""
    connection = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _prepend(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from chunks


def _expected_length(response: requests.Response) -> int | None:
    # With Content-Encoding the header counts compressed bytes, not what we save.
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _read_head(chunks: Iterator[bytes]) -> bytes:
    head = b""
    while len(head) < SNIFF_BYTES:
        try:
            head += next(chunks)
        except StopIteration:
            break
    return head


def _ca_bundle_from_environment() -> bool | str:
    """What requests itself would verify TLS against when trusting the environment."""
    return (
        os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    )
