"""Downloading one image over HTTP: retries, politeness, validation, atomic save.

Every failure is classified. Permanent ones (404, 410, most other 4xx, a body that
is not an image, too large, a redirect to a non-HTTP URL) fail at once; transient
ones (timeouts, resets, truncated bodies, 5xx, 429) are retried with backoff until
`retries` or the image's deadline runs out. The reason stored in the failure
record starts with `permanent: ` or `transient: ` and never holds a credential.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

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
    redirect_target,
)
from .exchange import (
    ACCEPT,
    DEADLINE_REASON,
    Answer,
    Client,
    Request,
    Sink,
    is_abort,
)
from .fsutil import BATCH_SYNC, create_temp_beside, write_all
from .hosts import HostGate, host_key
from .redact import redact_text, redact_url
from .sniff import EXTENSIONS, SNIFF_BYTES, describe_non_image, sniff_format

log = logging.getLogger(__name__)

# A body is kept in memory up to this size and written in one go (most product
# images); a larger one goes to its temporary file as it arrives, so 64 workers
# on 50 MB images do not hold 3 GB.
SPILL_BYTES = 1024 * 1024
_TIMER_SLACK = 0.1
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
    """Saves images into folders: one for the whole run, whoever drives it."""

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
        headers = dict(config.headers)
        self._referer = config.referer or _pop_header(headers, "Referer")
        self._headers = headers
        if config.cookies is not None:
            load_cookies(config.cookies)  # a bad file is a usage error, here
        if config.verify_decode:
            decode.require_pillow()
        self.client = Client(
            user_agent=config.user_agent,
            cookies=config.cookies,
            proxy=config.proxy,
            stopped=abort.is_set,
        )

    def close(self) -> None:
        self.client.close()

    def fetch(self, url: str, folder: Path, stem: str) -> SavedImage:
        """Download `url` to `folder/stem.<ext>` on this thread, blocking; raise
        ImageFailed or Aborted. The multiplexer runs `steps` instead."""
        steps = self.steps(url, folder, stem)
        reply: object = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            reply, error = None, None
            try:
                reply = self._block_on(step)
            except Exception as exc:  # noqa: BLE001 - handed to the steps
                error = exc

    def _block_on(self, step: Step) -> object:
        if isinstance(step, Request):
            return self.client.get(step)
        if isinstance(step, Offload):
            return step.call()
        if isinstance(step, Enter):
            if not self.gate.enter(step.host, self.abort):
                raise Aborted
        elif self.abort.wait(step.seconds):
            raise Aborted
        return None

    def steps(self, url: str, folder: Path, stem: str) -> Steps:
        """The download of one image as a generator of the steps it waits on:
        a request, a host's turn, a pause before a retry, saving the body.
        Whoever drives it sends back each step's outcome (an Answer for a
        request) or throws its error (Aborted when the run is stopping); it
        returns the SavedImage or raises ImageFailed."""
        host = host_key(url)  # of the first hop: the Referer policy is per host
        image = _Image(url, self.gate.referer_flipped(host))
        while True:
            image.attempts += 1
            if self.abort.is_set():
                raise Aborted
            self._check_time_left(image)
            referer = referer_for(url, self._referer, image.flipped)
            try:
                saved = yield from self._attempt(image, host, folder, stem, referer)
            except Forbidden as exc:
                self._flip_referer(image, str(exc))
                continue
            except Permanent as exc:
                raise ImageFailed(f"{PERMANENT}{exc}", image.attempts) from None
            except Transient as exc:
                wait = self._retry_wait(image, exc)
            else:
                self.gate.remember_referer(host, image.flipped)
                return saved
            yield Pause(wait)

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

    def _retry_wait(self, image: _Image, exc: Transient) -> float:
        """Seconds to wait before the next attempt; raises ImageFailed for none."""
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
        return wait

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.max_retry_wait)
        # Jitter keeps many workers that failed together from retrying together.
        ceiling = self.config.backoff * 2 ** (failures - 1)
        return min(random.uniform(ceiling / 2, ceiling), self.config.max_retry_wait)

    # -- one attempt: the request, its redirects, the body

    def _attempt(
        self,
        image: _Image,
        first_host: str,
        folder: Path,
        stem: str,
        referer: str | None,
    ) -> Generator[Step, object, SavedImage]:
        url = image.url
        headers = dict(self._headers)
        if referer:
            headers["Referer"] = referer
        # Redirects are followed here, not by libcurl, to check each hop's scheme
        # and to pass each hop through its host's gate.
        for hop in range(self.config.max_redirects + 1):
            check_fetchable(url)
            host = host_key(url) if hop else first_host
            target = yield from self._request(image, url, headers, host, folder, stem)
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
        image: _Image,
        url: str,
        headers: dict[str, str],
        host: str,
        folder: Path,
        stem: str,
    ) -> Generator[Step, object, SavedImage | str]:
        """The saved image, or the URL a redirect points to."""
        sink = _ImageSink(folder, stem, self.config.max_bytes)
        try:
            answer = yield from self._exchange(image, url, headers, host, sink)
            target = redirect_target(answer.status, answer.location)
            if target is not None:
                return target
            check_status(answer.status, answer.retry_after, host)
            try:
                if answer.sink_error is not None:
                    raise answer.sink_error
                saved = yield Offload(partial(self._save, sink))
            except _NotAnImage as exc:
                ctype = answer.content_type[:60]
                raise Permanent(
                    f"not an image: {exc.kind} (Content-Type {ctype})"
                ) from None
            assert isinstance(saved, SavedImage)
            return saved
        finally:
            sink.close()

    def _exchange(
        self,
        image: _Image,
        url: str,
        headers: dict[str, str],
        host: str,
        sink: _ImageSink,
    ) -> Generator[Step, object, Answer]:
        """The answer to one GET, with a slot of `host` held only while it runs:
        the connection is idle once the body is in, and saving the file must not
        keep the next request to that host waiting."""
        yield Enter(host)
        try:
            if image.deadline is None:  # it starts once the host lets us in
                image.deadline = self.clock() + self.config.deadline
            deadline = image.deadline
            left = deadline - self.clock()
            if left <= 0:
                raise Transient("deadline exceeded waiting for the host")
            config = self.config
            request = Request(
                url,
                _header_lines(headers),
                config.connect_timeout,
                config.read_timeout,
                left,
                sink,
            )
            try:
                answer = yield request
            except Transient as exc:
                # libcurl's timer may fire a little before ours says the time is
                # up.
                at_deadline = deadline - self.clock() < _TIMER_SLACK
                if exc.reason == "timed out" and sink.started and at_deadline:
                    raise Transient(DEADLINE_REASON) from None
                raise
            except Exception as exc:
                if is_abort(exc):
                    raise Aborted from None
                raise
            assert isinstance(answer, Answer)
            return answer
        finally:
            self.gate.leave(host)

    def _save(self, sink: _ImageSink) -> SavedImage:
        # File system calls only (and a decode with --verify-decode): run on an
        # I/O thread by the multiplexer, so a slow disk holds up no transfer.
        saved = sink.keep(self.config.verify_decode)
        if self.abort.is_set():
            # The shutdown swept temporary files already; a file renamed into
            # place now would be an image no state names.
            raise Aborted
        return sink.commit(saved)


@dataclass(frozen=True, slots=True)
class Enter:
    """Step: wait for a connection slot of `host` and for its turn (`--rate`, a
    pause it asked for); the slot is held until `HostGate.leave`."""

    host: str


@dataclass(frozen=True, slots=True)
class Pause:
    """Step: wait `seconds` before the next attempt."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Offload:
    """Step: run `call` (file system work) and reply with what it returns."""

    call: Callable[[], object]


Step = Request | Enter | Pause | Offload
Steps = Generator[Step, object, SavedImage]


class _ImageSink(Sink):
    """The body of one response, checked and saved as `folder/stem.<ext>`.

    Chunks stay in memory up to SPILL_BYTES and are written with one call; past
    that the head must already look like an image, and the rest streams into the
    temporary file. Plain descriptors: this runs once per image.
    """

    def __init__(self, folder: Path, stem: str, max_bytes: int) -> None:
        self.folder = folder
        self.prefix = f"{os.fspath(folder)}{os.sep}{stem}."  # strings: once per image
        self.stem = stem
        self.max_bytes = max_bytes
        self.chunks: list[bytes] = []
        self.size = 0
        self.started = False
        self.format: str | None = None
        self._fd = -1
        self._temp = ""

    def write(self, chunk: bytes) -> bool:
        self.started = True
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise Permanent(f"too large (over {self.max_bytes} bytes)")
        if self._fd >= 0:
            write_all(self._fd, chunk)
            return True
        self.chunks.append(chunk)
        if self.size >= SPILL_BYTES:
            self._write_buffered()
        return True

    def _write_buffered(self) -> None:
        body = b"".join(self.chunks)
        self.chunks = []
        self.format = sniff_format(body[:SNIFF_BYTES])
        if self.format is None:
            raise _NotAnImage(describe_non_image(body[:SNIFF_BYTES]))
        final = self.prefix + EXTENSIONS[self.format]
        try:
            self._fd, self._temp = create_temp_beside(final)
        except FileNotFoundError:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd, self._temp = create_temp_beside(final)
        write_all(self._fd, body)

    def keep(self, verify: bool) -> SavedImage:
        """Check what arrived for a 200 and have it whole in its temporary file."""
        if self._fd < 0:
            self._write_buffered()
        assert self.format is not None
        if verify:
            _verify(Path(self._temp), self.format)
        return SavedImage(
            f"{self.stem}.{EXTENSIONS[self.format]}", self.size, self.format
        )

    def commit(self, saved: SavedImage) -> SavedImage:
        if not BATCH_SYNC:
            os.fsync(self._fd)
        os.replace(self._temp, self.prefix + EXTENSIONS[saved.format])
        self._temp = ""
        return saved

    def close(self) -> None:
        self.chunks = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._temp:
            # Not renamed into place: an unfinished file must not stay behind.
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
            self._temp = ""


class _NotAnImage(Permanent):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _header_lines(headers: dict[str, str]) -> list[str]:
    lines = [f"Accept: {ACCEPT}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return lines


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
