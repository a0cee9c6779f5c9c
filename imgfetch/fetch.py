"""Downloading one image over HTTP: retries, deadlines, validation, atomic save."""

from __future__ import annotations

import email.utils
import logging
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from .fsutil import commit, temp_file_beside
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
# Answers worth another try: the server or a proxy may recover.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 522, 524})


@dataclass(frozen=True)
class FetchConfig:
    """Network limits for every image; the CLI fills it from options."""

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
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Permanent(Exception):
    pass


class Fetcher:
    """Saves images into folders; shared by all worker threads."""

    def __init__(self, config: FetchConfig, abort: threading.Event) -> None:
        self.config = config
        self.abort = abort
        self.session = requests.Session()
        # One pool slot per worker, or urllib3 discards and reopens connections.
        adapter = HTTPAdapter(
            pool_connections=config.pool_size,
            pool_maxsize=config.pool_size,
            max_retries=0,
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.max_redirects = config.max_redirects
        self.session.headers["User-Agent"] = config.user_agent
        self.session.headers["Accept"] = "image/avif,image/webp,image/*,*/*;q=0.8"

    def close(self) -> None:
        self.session.close()

    def fetch(self, url: str, folder: Path, stem: str) -> SavedImage:
        """Download `url` to `folder/stem.<ext>`; raise ImageFailed or Aborted."""
        deadline = time.monotonic() + self.config.deadline
        attempt = 0
        last = "deadline exceeded"
        while True:
            attempt += 1
            if self.abort.is_set():
                raise Aborted
            if attempt > 1 and deadline - time.monotonic() <= 0:
                # The retry wait ended late (suspend, overload): no time is left,
                # and a request with a negative timeout would raise ValueError.
                raise ImageFailed(
                    f"{last} (deadline exceeded after {attempt - 1} attempts)",
                    attempt - 1,
                )
            try:
                return self._attempt(url, folder, stem, deadline)
            except _Permanent as exc:
                raise ImageFailed(str(exc), attempt) from None
            except _Transient as exc:
                last = exc.reason
                wait = self._backoff(attempt, exc.retry_after)
                left = deadline - time.monotonic()
                if attempt > self.config.retries or wait >= left:
                    raise ImageFailed(
                        f"{exc.reason} (gave up after {attempt} attempts)", attempt
                    ) from None
                log.info("retrying %s in %.1fs: %s", url, wait, exc.reason)
                if self.abort.wait(wait):
                    raise Aborted from None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.max_retry_wait)
        # Full jitter keeps many workers that failed together from retrying together.
        ceiling = self.config.backoff * 2 ** (attempt - 1)
        return min(random.uniform(ceiling / 2, ceiling), self.config.max_retry_wait)

    def _attempt(
        self, url: str, folder: Path, stem: str, deadline: float
    ) -> SavedImage:
        left = max(deadline - time.monotonic(), 0.001)
        timeout = (
            min(self.config.connect_timeout, left),
            min(self.config.read_timeout, left),
        )
        try:
            with self.session.get(url, stream=True, timeout=timeout) as response:
                _check_status(response)
                return self._save(response, folder, stem, deadline)
        except (
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
        ) as exc:
            raise _Permanent(f"cannot fetch this URL ({_first_line(exc)})") from None
        except requests.exceptions.TooManyRedirects:
            raise _Permanent(
                f"more than {self.config.max_redirects} redirects"
            ) from None
        except requests.exceptions.Timeout:
            raise _Transient("timed out") from None
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            raise _Transient(f"connection failed ({_short_cause(exc)})") from None

    def _save(
        self, response: requests.Response, folder: Path, stem: str, deadline: float
    ) -> SavedImage:
        expected = _expected_length(response)
        if expected is not None and expected > self.config.max_bytes:
            raise _Permanent(f"too large ({expected} bytes > --max-bytes)")
        chunks = self._body(response, deadline)
        head = _read_head(chunks)
        fmt = sniff_format(head)
        if fmt is None:
            kind = describe_non_image(head)
            ctype = response.headers.get("Content-Type", "none")
            raise _Permanent(f"not an image: {kind} (Content-Type {ctype})")
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"{stem}.{EXTENSIONS[fmt]}"
        with temp_file_beside(final) as (handle, temp):
            size = 0
            # The head is checked like any chunk: one read can hold the whole body.
            for chunk in _prepend(head, chunks):
                size += len(chunk)
                if size > self.config.max_bytes:
                    raise _Permanent(f"too large (over {self.config.max_bytes} bytes)")
                handle.write(chunk)
            if expected is not None and size != expected:
                raise _Transient(f"truncated body ({size} of {expected} bytes)")
            commit(handle, temp, final)
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
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Transient(DEADLINE_REASON)
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
                    raise _Transient(DEADLINE_REASON) from None
                raise _Transient("timed out") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Transient(f"connection failed ({_short_cause(exc)})") from None
            if not data:
                return
            yield data


def _socket_of(raw: object) -> socket.socket | None:
    """The socket under a streamed urllib3 response, if it can be reached."""
    connection = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _prepend(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from chunks


def _check_status(response: requests.Response) -> None:
    status = response.status_code
    if status == 200:
        return
    reason = f"HTTP {status}"
    if status in TRANSIENT_STATUS:
        raise _Transient(reason, _retry_after(response))
    raise _Permanent(reason)


def _retry_after(response: requests.Response) -> float | None:
    """Seconds the server asked us to wait: a number or an HTTP date."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _expected_length(response: requests.Response) -> int | None:
    # With Content-Encoding the header counts compressed bytes, not what we save.
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _read_head(chunks: object) -> bytes:
    head = b""
    iterator = iter(chunks)  # type: ignore[call-overload]
    while len(head) < SNIFF_BYTES:
        try:
            head += next(iterator)
        except StopIteration:
            break
    return head


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _short_cause(exc: BaseException) -> str:
    # requests wraps urllib3 wraps socket errors; the innermost says what happened.
    inner: BaseException = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    text = str(inner) or type(inner).__name__
    return text.splitlines()[0][:160]
