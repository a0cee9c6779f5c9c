"""Fetcher against a real local ImageServer: retries, deadlines, validation, saving.

Every test runs with small timeouts and backoff so the file stays fast; time is
only asserted as an upper bound with a wide margin, and only where the behaviour
itself is about time. Waits between retries are observed through a recording
abort Event instead of the clock wherever the exact wait is what matters.
"""

from __future__ import annotations

import email.utils
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from imgfetch import fetch as fetch_module
from imgfetch.exchange import wire_url
from imgfetch.fetch import Aborted, FetchConfig, Fetcher, ImageFailed, SavedImage
from imgfetch.testimages import IMAGE_FORMATS
from imgfetch.testserver import ImageServer

# Every test runs with both drivers of a download (see conftest.fetch_driver).
pytestmark = pytest.mark.usefixtures("fetch_driver", "no_proxy")

EXT = {
    "jpeg": "jpg",
    "png": "png",
    "gif": "gif",
    "webp": "webp",
    "avif": "avif",
    "bmp": "bmp",
    "heic": "heic",
    "tiff": "tif",
}

# Fast defaults: a real retry loop, but nothing waits long.
FAST = FetchConfig(
    connect_timeout=2.0,
    read_timeout=2.0,
    deadline=10.0,
    retries=3,
    backoff=0.01,
    max_retry_wait=0.05,
)


class RecordingEvent(threading.Event):
    """An abort Event that records every retry wait and does not really sleep.

    Fetcher sleeps between attempts with `abort.wait(seconds)`; recording the
    argument shows the exact wait chosen without making the test slow. `clock`
    is the Fetcher's clock: real time plus every wait skipped, so the host gate
    sees a pause as over once the worker has "waited" it.
    """

    def __init__(self, sleep: bool = False, oversleep: float = 0.0) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.sleep = sleep
        self.oversleep = oversleep
        self.skipped = 0.0

    def clock(self) -> float:
        return time.monotonic() + self.skipped

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            self.waits.append(timeout)
            if self.oversleep:
                # A suspended laptop or a starved scheduler: the wait ends late.
                time.sleep(timeout + self.oversleep)
                return self.is_set()
            if not self.sleep:
                self.skipped += timeout
                return self.is_set()
        return super().wait(timeout)


def make(config: FetchConfig = FAST, abort: threading.Event | None = None) -> Fetcher:
    if isinstance(abort, RecordingEvent):
        return Fetcher(config, abort, clock=abort.clock)
    return Fetcher(config, abort if abort is not None else threading.Event())


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def fetch_ok(
    server: ImageServer, folder: Path, url: str, config: FetchConfig = FAST
) -> SavedImage:
    """Fetch, then check the file holds exactly the bytes the server serves."""
    fetcher = make(config)
    try:
        saved = fetcher.fetch(url, folder, "main_1")
    finally:
        fetcher.close()
    expected = server.expected_bytes(url)
    assert (folder / saved.filename).read_bytes() == expected
    assert saved.size == len(expected)
    assert files_in(folder) == [saved.filename]
    return saved


def fetch_fails(
    url: str, folder: Path, config: FetchConfig = FAST, **kw: Any
) -> ImageFailed:
    fetcher = make(config, **kw)
    try:
        with pytest.raises(ImageFailed) as info:
            fetcher.fetch(url, folder, "main_1")
    finally:
        fetcher.close()
    return info.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ formats


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_each_format_saved_with_its_extension_and_exact_bytes(
    server: ImageServer, folder: Path, fmt: str
) -> None:
    # The server's bodies carry each format's real signature.
    url = server.url(f"prod-{fmt}", fmt, size=3000)
    saved = fetch_ok(server, folder, url)
    assert saved.filename == f"main_1.{EXT[fmt]}"
    assert saved.format == fmt
    assert server.requests_for(url) == 1


@pytest.mark.parametrize("fmt", ["webp", "png", "avif"])
def test_extension_comes_from_the_bytes_not_the_url(
    server: ImageServer, folder: Path, fmt: str
) -> None:
    # CDNs negotiate formats: a .jpg URL answering with WebP, PNG or AVIF bytes.
    url = f"{server.base_url}/img/negotiated.jpg?fmt={fmt}&size=2500"
    saved = fetch_ok(server, folder, url)
    assert saved.filename == f"main_1.{EXT[fmt]}"


def test_large_image_streams_to_the_exact_bytes(
    server: ImageServer, folder: Path
) -> None:
    # Several 64 KiB chunks: the body is written chunk by chunk, not held whole.
    url = server.url("big", "png", size=700_000)
    assert fetch_ok(server, folder, url).size == 700_000


# ------------------------------------------------------------------ retries


@pytest.mark.parametrize(
    ("fail", "failures"),
    [
        ("503:1", 1),  # one 503, then the image
        ("503:3", 3),  # as many 503s as there are retries, then the image
        ("500:2", 2),  # internal errors are worth another try
        ("502:1", 1),  # a proxy in front of the CDN failing
        ("504:1", 1),  # gateway timeout
        ("429:2", 2),  # rate limited without Retry-After: backoff, then the image
    ],
)
def test_transient_status_retried_then_success(
    server: ImageServer, folder: Path, fail: str, failures: int
) -> None:
    url = server.url(f"flaky-{fail}", fail=fail)
    fetch_ok(server, folder, url)
    assert server.requests_for(url) == failures + 1


def test_backoff_grows_exponentially_with_jitter(
    server: ImageServer, folder: Path
) -> None:
    # Full jitter within [ceiling/2, ceiling], the ceiling doubling each time.
    abort = RecordingEvent()
    url = server.url("backoff", fail="503:3")
    config = replace(FAST, backoff=0.1, max_retry_wait=10)
    fetcher = make(config, abort)
    fetcher.fetch(url, folder, "main_1")
    assert len(abort.waits) == 3
    for index, wait in enumerate(abort.waits):
        ceiling = 0.1 * 2**index
        assert ceiling / 2 <= wait <= ceiling, abort.waits


def test_backoff_capped_by_max_retry_wait(server: ImageServer, folder: Path) -> None:
    abort = RecordingEvent()
    url = server.url("backoff-cap", fail="503:3")
    fetcher = make(replace(FAST, backoff=100, max_retry_wait=0.25), abort)
    fetcher.fetch(url, folder, "main_1")
    assert abort.waits == [0.25, 0.25, 0.25]


@pytest.mark.parametrize(
    ("retry_after", "max_wait", "expected"),
    [
        ("3", 30.0, 3.0),  # honoured as asked
        ("120", 2.5, 2.5),  # capped by max_retry_wait
        ("0", 30.0, 0.0),  # "now" is a valid answer
    ],
)
def test_429_retry_after_seconds_honoured_but_capped(
    server: ImageServer,
    folder: Path,
    retry_after: str,
    max_wait: float,
    expected: float,
) -> None:
    abort = RecordingEvent()
    url = server.url(f"ra-{retry_after}", fail="429:1", retry_after=retry_after)
    fetcher = make(replace(FAST, backoff=0.01, max_retry_wait=max_wait), abort)
    saved = fetcher.fetch(url, folder, "main_1")
    assert abort.waits == [expected]
    assert server.requests_for(url) == 2
    assert (folder / saved.filename).read_bytes() == server.expected_bytes(url)


def test_503_retry_after_is_honoured_too(server: ImageServer, folder: Path) -> None:
    abort = RecordingEvent()
    url = server.url("ra-503", fail="503:1", retry_after="4")
    make(replace(FAST, max_retry_wait=30), abort).fetch(url, folder, "main_1")
    assert abort.waits == [4.0]


def test_retry_after_really_waits(server: ImageServer, folder: Path) -> None:
    # With a real Event the capped wait is really slept (a lower bound is safe).
    url = server.url("ra-real", fail="429:1", retry_after="60")
    config = replace(FAST, max_retry_wait=0.3)
    started = time.monotonic()
    fetch_ok(server, folder, url, config)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 10


def test_retry_after_http_date(server: ImageServer, folder: Path) -> None:
    # An HTTP date 20 s ahead means about 20 s (dates have 1 s resolution).
    abort = RecordingEvent()
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    url = server.url("ra-date", fail="429:1", retry_after=when)
    make(replace(FAST, max_retry_wait=60, deadline=120), abort).fetch(
        url, folder, "main_1"
    )
    assert len(abort.waits) == 1
    assert 15 < abort.waits[0] <= 20.5


def test_retry_after_http_date_capped_and_past(
    server: ImageServer, folder: Path
) -> None:
    # A far date is capped; a date in the past means retry now.
    abort = RecordingEvent()
    future = email.utils.formatdate(time.time() + 3600, usegmt=True)
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    fetcher = make(replace(FAST, max_retry_wait=7), abort)
    fetcher.fetch(server.url("far", fail="429:1", retry_after=future), folder, "a")
    fetcher.fetch(server.url("past", fail="429:1", retry_after=past), folder, "b")
    assert abort.waits == [7.0, 0.0]


def test_retry_after_garbage_falls_back_to_backoff(
    server: ImageServer, folder: Path
) -> None:
    abort = RecordingEvent()
    url = server.url("ra-junk", fail="429:1", retry_after="soon-ish")
    make(replace(FAST, backoff=0.2, max_retry_wait=30), abort).fetch(
        url, folder, "main_1"
    )
    assert len(abort.waits) == 1 and 0.1 <= abort.waits[0] <= 0.2


def test_retry_after_beyond_the_deadline_gives_up_at_once(
    server: ImageServer, folder: Path
) -> None:
    # Waiting 30 s with 5 s left cannot end in an image: fail now, not later.
    abort = RecordingEvent()
    url = server.url("ra-long", fail="429:5", retry_after="30")
    error = fetch_fails(
        url, folder, replace(FAST, deadline=5, max_retry_wait=30), abort=abort
    )
    assert abort.waits == []
    assert error.attempts == 1
    assert "HTTP 429" in error.reason
    assert server.requests_for(url) == 1


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"status": 404}, "permanent: HTTP 404"),  # gone for good: no retry
        ({"status": 410}, "permanent: HTTP 410"),  # explicitly gone
        ({"status": 401}, "permanent: HTTP 401"),  # needs credentials we lack
        ({"status": 400}, "permanent: HTTP 400"),  # the request itself is wrong
        ({"status": 451}, "permanent: HTTP 451"),  # blocked for legal reasons
        ({"status": 204}, "permanent: HTTP 204"),  # no content is no image
    ],
)
def test_permanent_status_fails_at_once(
    server: ImageServer, folder: Path, params: dict[str, Any], reason: str
) -> None:
    abort = RecordingEvent()
    url = server.url("perm", **params)
    error = fetch_fails(url, folder, abort=abort)
    assert error.reason == reason
    assert error.attempts == 1
    assert abort.waits == []
    assert server.requests_for(url) == 1
    assert files_in(folder) == []


def test_unknown_path_is_a_permanent_404(server: ImageServer, folder: Path) -> None:
    url = f"{server.base_url}/nothing/here.jpg"
    error = fetch_fails(url, folder)
    assert (error.reason, error.attempts) == ("permanent: HTTP 404", 1)
    assert server.requests_for(url) == 1


@pytest.mark.parametrize("code", [503, 500, 429])
def test_retries_exhausted(server: ImageServer, folder: Path, code: int) -> None:
    # The server keeps failing: retries+1 attempts, then a reason saying so.
    config = replace(FAST, retries=2)
    url = server.url(f"down-{code}", fail=f"{code}:99")
    error = fetch_fails(url, folder, config)
    assert error.attempts == 3
    assert server.requests_for(url) == 3
    assert f"HTTP {code}" in error.reason
    assert "gave up after 3 attempts" in error.reason
    assert files_in(folder) == []


def test_retries_zero_means_one_attempt(server: ImageServer, folder: Path) -> None:
    url = server.url("once", fail="503:1")
    error = fetch_fails(url, folder, replace(FAST, retries=0))
    assert error.attempts == 1
    assert server.requests_for(url) == 1


def test_connection_refused_retried_then_fails(folder: Path) -> None:
    # Nothing listens on the port: a connection error, retried, then given up.
    url = f"http://127.0.0.1:{free_port()}/img/x.jpg"
    error = fetch_fails(url, folder, replace(FAST, retries=2))
    assert error.attempts == 3
    assert "connection failed" in error.reason
    assert "gave up after 3 attempts" in error.reason


@pytest.mark.parametrize(
    ("params", "config", "reason"),
    [
        # permanent: one request, no retry
        ({"status": 404}, {}, "permanent: HTTP 404"),
        ({"html": 1}, {}, "permanent: not an image: an HTML page"),
        ({"size": 9000}, {"max_bytes": 8000}, "permanent: too large"),
        ({"location": "ftp://x.example/a.jpg"}, {}, "permanent: redirect to a ftp:"),
        # transient: retried until the budget is spent
        ({"fail": "503:9"}, {}, "transient: HTTP 503 (gave up after 2 attempts)"),
        ({"fail": "429:9"}, {}, "transient: HTTP 429 (gave up after 2 attempts)"),
        ({"fail": "408:9"}, {}, "transient: HTTP 408 (gave up after 2 attempts)"),
        ({"truncate": 9}, {}, "transient: truncated body (1024 bytes missing)"),
        ({"reset": 9}, {}, "transient: connection failed ("),
        ({"stall": 1}, {"read_timeout": 0.2}, "transient: timed out (gave up after 2"),
    ],
)
def test_every_reason_says_whether_it_was_permanent_or_transient(
    server: ImageServer,
    folder: Path,
    params: dict[str, Any],
    config: dict[str, Any],
    reason: str,
) -> None:
    url = server.url("classified", **params)
    error = fetch_fails(url, folder, replace(FAST, retries=1, **config))
    assert error.reason.startswith(reason), error.reason
    expected_attempts = 1 if reason.startswith("permanent") else 2
    assert error.attempts == expected_attempts
    assert server.requests_for(url) == expected_attempts


# ------------------------------------------------------- broken bodies


@pytest.mark.parametrize(
    ("params", "failures"),
    [
        ({"truncate": 1}, 1),  # half the body, then a clean close
        ({"truncate": 2}, 2),  # twice in a row
        ({"reset": 1}, 1),  # half the body, then a TCP reset
        ({"reset": 2}, 2),
        ({"truncate": 1, "size": 400_000}, 1),  # cut after the temp file exists
        ({"reset": 1, "size": 400_000}, 1),
    ],
)
def test_broken_body_retried_then_success(
    server: ImageServer, folder: Path, params: dict[str, Any], failures: int
) -> None:
    url = server.url("broken", **params)
    fetch_ok(server, folder, url)
    assert server.requests_for(url) == failures + 1


@pytest.mark.parametrize("params", [{"truncate": 99}, {"reset": 99}])
def test_broken_body_every_time_fails_without_a_file(
    server: ImageServer, folder: Path, params: dict[str, Any]
) -> None:
    # A half image is never saved, not even after the last attempt.
    url = server.url("always-broken", size=300_000, **params)
    error = fetch_fails(url, folder, replace(FAST, retries=1))
    assert error.attempts == 2
    assert "gave up after 2 attempts" in error.reason
    assert files_in(folder) == []


# --------------------------------------------------------- not an image


def test_html_answered_200_is_a_failure(server: ImageServer, folder: Path) -> None:
    # A "security check" page with status 200 and Content-Type image/jpeg.
    url = server.url("captcha", html=1)
    error = fetch_fails(url, folder)
    assert "HTML" in error.reason
    assert error.attempts == 1
    assert server.requests_for(url) == 1
    assert files_in(folder) == []


@pytest.mark.parametrize(
    ("page", "kind"),
    [("xml", "an XML document"), ("json", "JSON"), ("html", "an HTML page")],
)
def test_error_pages_served_as_images_are_named(
    server: ImageServer, folder: Path, page: str, kind: str
) -> None:
    # Status 200 and Content-Type image/jpeg, but the body is an error page.
    url = server.url("liar", page=page)
    error = fetch_fails(url, folder)
    assert error.reason.startswith(f"permanent: not an image: {kind}"), error.reason
    assert "image/jpeg" in error.reason
    assert error.attempts == 1
    assert files_in(folder) == []


def test_html_status_page_with_200_is_a_failure(
    server: ImageServer, folder: Path
) -> None:
    # status=200 answers an HTML page with Content-Type text/html.
    error = fetch_fails(server.url("page", status=200), folder)
    assert "HTML" in error.reason
    assert "text/html" in error.reason
    assert files_in(folder) == []


# ------------------------------------------------------------- time


def test_stall_with_short_read_timeout_fails_in_bounded_time(
    server: ImageServer, folder: Path
) -> None:
    config = replace(FAST, read_timeout=0.3, retries=1)
    url = server.url("stalled", stall=1)
    started = time.monotonic()
    error = fetch_fails(url, folder, config)
    elapsed = time.monotonic() - started
    assert "timed out" in error.reason
    assert error.attempts == 2
    assert server.requests_for(url) == 2
    assert elapsed < 8  # two 0.3 s timeouts; generous for slow machines


def test_stall_bounded_by_the_deadline_not_the_read_timeout(
    server: ImageServer, folder: Path
) -> None:
    # The read timeout is long, but the image's deadline is not.
    config = replace(FAST, read_timeout=60, deadline=0.5)
    started = time.monotonic()
    error = fetch_fails(server.url("stalled-deadline", stall=1), folder, config)
    assert time.monotonic() - started < 8
    assert "timed out" in error.reason or "deadline" in error.reason


def test_drip_slower_than_the_deadline_fails_with_the_deadline_reason(
    server: ImageServer, folder: Path
) -> None:
    # One byte every 20 ms never trips the read timeout, but 2000 bytes take
    # 40 s: only the total deadline per image stops it.
    config = replace(FAST, read_timeout=5, deadline=1.0)
    url = server.url("drip", size=2000, drip=0.02)
    started = time.monotonic()
    error = fetch_fails(url, folder, config)
    elapsed = time.monotonic() - started
    assert "deadline" in error.reason
    assert elapsed < 8  # the deadline is 1 s; the whole body would take 40 s
    assert files_in(folder) == []


def test_stall_mid_body_bounded_by_the_deadline(
    server: ImageServer, folder: Path
) -> None:
    # A byte, then 20 s of silence: the read timeout (60 s) would wait it out,
    # the deadline (1 s) must not.
    config = replace(FAST, read_timeout=60, deadline=1.0)
    started = time.monotonic()
    error = fetch_fails(server.url("gap", size=100, drip=20), folder, config)
    assert "deadline" in error.reason
    assert time.monotonic() - started < 10


def test_drip_within_the_deadline_succeeds(server: ImageServer, folder: Path) -> None:
    # Slow but steady and done in time: a good image.
    url = server.url("slow-ok", size=40, drip=0.005)
    fetch_ok(server, folder, url, replace(FAST, read_timeout=5, deadline=30))


def test_late_wakeup_past_the_deadline_is_an_image_failure(
    server: ImageServer, folder: Path
) -> None:
    # The retry wait ends after the deadline (suspend, overloaded machine): the
    # next attempt must not start with a negative timeout and blow up with a
    # ValueError; the image fails with a normal reason.
    abort = RecordingEvent(oversleep=0.6)
    url = server.url("late", fail="503:5")
    config = replace(FAST, deadline=0.5, backoff=0.02, max_retry_wait=0.02)
    error = fetch_fails(url, folder, config, abort=abort)
    assert "deadline" in error.reason
    assert error.attempts == 1
    assert server.requests_for(url) == 1


# ------------------------------------------------------------ redirects


def test_redirect_chain_followed(server: ImageServer, folder: Path) -> None:
    url = server.url("hop", "webp", redirect=3)
    saved = fetch_ok(server, folder, url, replace(FAST, max_redirects=5))
    assert saved.filename == "main_1.webp"
    assert server.total_requests == 4


def test_redirect_to_a_file_url_fails_and_reads_nothing(
    server: ImageServer, folder: Path, tmp_path: Path
) -> None:
    # A file: Location must never be opened, even if it points at an image.
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 100)
    for location in ("file:///etc/passwd", secret.as_uri()):
        url = server.url("evil", location=location)
        error = fetch_fails(url, folder)
        assert error.attempts == 1
        assert error.reason == "permanent: redirect to a file: URL refused"
        assert server.requests_for(url) == 1
    assert files_in(folder) == []


def test_more_than_max_redirects_fails(server: ImageServer, folder: Path) -> None:
    config = replace(FAST, max_redirects=2)
    fetch_ok(server, folder, server.url("two-hops", redirect=2), config)
    error = fetch_fails(server.url("three-hops", redirect=3), folder / "x", config)
    assert error.attempts == 1
    assert "more than 2 redirects" in error.reason
    assert files_in(folder / "x") == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "data:image/png;base64,"]
)
def test_non_http_url_fails_at_once(folder: Path, url: str) -> None:
    error = fetch_fails(url, folder)
    assert error.attempts == 1
    scheme = url.partition(":")[0]
    assert error.reason == f"permanent: cannot fetch a {scheme}: URL"
    assert files_in(folder) == []


@pytest.mark.parametrize(
    "location",
    [
        "ftp://mallory:hunter2@ftp.example/a.jpg",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "gopher://x.example/",
    ],
)
def test_redirect_to_another_scheme_names_it_but_no_credentials(
    server: ImageServer, folder: Path, location: str
) -> None:
    url = server.url("elsewhere", location=location)
    error = fetch_fails(url, folder)
    scheme = location.partition(":")[0]
    assert error.reason == f"permanent: redirect to a {scheme}: URL refused"
    assert "hunter2" not in error.reason and "mallory" not in error.reason
    assert error.attempts == 1


def test_relative_redirect_is_resolved_against_the_current_url(
    server: ImageServer, folder: Path
) -> None:
    target = server.url("landing", "png")
    relative = target.removeprefix(server.base_url)
    saved = make().fetch(server.url("rel", location=relative), folder, "main_1")
    assert saved.filename == "main_1.png"
    assert (folder / saved.filename).read_bytes() == server.expected_bytes(target)


# ---------------------------------------------------------- content coding


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_gzip_body_saved_decompressed(
    server: ImageServer, folder: Path, fmt: str
) -> None:
    # Content-Length counts compressed bytes; the saved file is the image.
    url = server.url("zipped", fmt, size=150_000, gzip=1)
    saved = fetch_ok(server, folder, url)
    assert saved.filename == f"main_1.{EXT[fmt]}"


# --------------------------------------------------------------- size


@pytest.mark.parametrize(
    ("params", "max_bytes"),
    [
        ({"size": 5000}, 4000),  # Content-Length says too large: no body read
        ({"size": 200_000}, 100_000),  # the same, bigger
        ({"size": 200_000, "gzip": 1}, 100_000),  # no usable length: while streaming
        ({"size": 20_000, "gzip": 1}, 10_000),  # ... even when it is one chunk
    ],
)
def test_max_bytes_exceeded_fails_as_too_large(
    server: ImageServer, folder: Path, params: dict[str, Any], max_bytes: int
) -> None:
    url = server.url("huge", **params)
    error = fetch_fails(url, folder, replace(FAST, max_bytes=max_bytes))
    assert "too large" in error.reason
    assert error.attempts == 1
    assert server.requests_for(url) == 1
    assert files_in(folder) == []


@pytest.mark.parametrize("gz", [0, 1])
def test_max_bytes_exactly_reached_is_fine(
    server: ImageServer, folder: Path, gz: int
) -> None:
    url = server.url("exact", size=70_000, gzip=gz)
    fetch_ok(server, folder, url, replace(FAST, max_bytes=70_000))


# ------------------------------------------------------------- abort


def test_abort_set_before_fetch_raises_aborted(
    server: ImageServer, folder: Path
) -> None:
    abort = threading.Event()
    abort.set()
    url = server.url("never")
    with pytest.raises(Aborted):
        make(FAST, abort).fetch(url, folder, "main_1")
    assert server.requests_for(url) == 0
    assert files_in(folder) == []


def _fetch_in_thread(
    fetcher: Fetcher, url: str, folder: Path
) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fetcher.fetch(url, folder, "main_1")
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _wait_until(predicate: Any, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def test_abort_while_downloading_raises_aborted_and_removes_the_temp_file(
    server: ImageServer, folder: Path
) -> None:
    # The body drips for ~40 s; abort a moment after it started arriving. (A
    # body this small is held in memory, and one over SPILL_BYTES goes to its
    # temporary file: the next test.)
    abort = threading.Event()
    url = server.url("abort-mid", size=4000, drip=0.01)
    fetcher = make(replace(FAST, read_timeout=5, deadline=60), abort)
    thread, result = _fetch_in_thread(fetcher, url, folder)
    _wait_until(lambda: server.requests_for(url) == 1)
    time.sleep(0.3)  # some of the body has arrived
    started = time.monotonic()
    abort.set()
    thread.join(timeout=10)
    assert not thread.is_alive(), "fetch ignored the abort"
    assert time.monotonic() - started < 5
    assert isinstance(result.get("error"), Aborted), result
    assert files_in(folder) == []


def test_abort_while_streaming_a_large_body_removes_its_temp_file(
    server: ImageServer, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past SPILL_BYTES the body streams into its temporary file; an abort then
    # must remove that file.
    monkeypatch.setattr(fetch_module, "SPILL_BYTES", 1024)
    abort = threading.Event()
    url = server.url("abort-big", size=4000, drip=0.001)
    fetcher = make(replace(FAST, read_timeout=5, deadline=60), abort)
    thread, result = _fetch_in_thread(fetcher, url, folder)
    _wait_until(lambda: list(folder.glob(".imgfetch-*.tmp")) if folder.exists() else [])
    abort.set()
    thread.join(timeout=10)
    assert not thread.is_alive(), "fetch ignored the abort"
    assert isinstance(result.get("error"), Aborted), result
    assert files_in(folder) == []


def test_abort_during_retry_wait_raises_aborted(
    server: ImageServer, folder: Path
) -> None:
    # Waiting 60 s before the next try; the abort ends the wait at once.
    abort = threading.Event()
    url = server.url("abort-wait", fail="503:5", retry_after="60")
    fetcher = make(replace(FAST, max_retry_wait=60, deadline=120), abort)
    thread, result = _fetch_in_thread(fetcher, url, folder)
    _wait_until(lambda: server.requests_for(url) == 1)
    time.sleep(0.1)
    abort.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert isinstance(result.get("error"), Aborted), result
    assert server.requests_for(url) == 1


# ----------------------------------------------------- files on disk


def test_no_temp_file_after_success_and_failures(
    server: ImageServer, folder: Path
) -> None:
    # One folder through many outcomes; only the good images remain.
    fetcher = make(replace(FAST, retries=1, max_bytes=100_000))
    outcomes = {
        "ok": server.url("ok", size=90_000),
        "html": server.url("html", html=1),
        "trunc": server.url("trunc", size=90_000, truncate=9),
        "reset": server.url("reset", size=90_000, reset=9),
        "big": server.url("big", size=300_000, gzip=1),
        "404": server.url("gone", status=404),
    }
    for stem, url in outcomes.items():
        try:
            fetcher.fetch(url, folder, stem)
        except ImageFailed:
            pass
    assert files_in(folder) == ["ok.jpg"]


def test_existing_file_replaced_whole(server: ImageServer, folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "main_1.jpg").write_bytes(b"old")
    fetch_ok(server, folder, server.url("fresh", size=5000))


_MODE_SCRIPT = """
import os, sys, threading
from pathlib import Path
os.umask(int(sys.argv[1], 8))
from imgfetch.fetch import Fetcher, FetchConfig
saved = Fetcher(FetchConfig(), threading.Event()).fetch(
    sys.argv[2], Path(sys.argv[3]), "main_1")
print(oct(os.stat(Path(sys.argv[3]) / saved.filename).st_mode & 0o777))
"""


@pytest.mark.parametrize(("umask", "mode"), [("022", 0o644), ("077", 0o600)])
def test_saved_file_mode_follows_umask(
    server: ImageServer, folder: Path, umask: str, mode: int
) -> None:
    # mkstemp makes 0600 files; images must get the user's normal mode. The
    # umask is read when imgfetch is imported, so each case is a fresh process.
    url = server.url("mode")
    out = subprocess.run(
        [sys.executable, "-c", _MODE_SCRIPT, umask, url, str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert int(out.strip(), 8) == mode
    saved = folder / "main_1.jpg"
    assert stat.S_IMODE(os.stat(saved).st_mode) == mode
    assert saved.read_bytes() == server.expected_bytes(url)


# ------------------------------------------------------------ connections


def test_a_worker_reuses_its_connection(server: ImageServer, folder: Path) -> None:
    fetcher = make(FAST)
    for n in range(5):
        fetcher.fetch(server.url(f"reuse{n}"), folder, f"main_{n}")
    fetcher.close()
    assert server.total_requests == 5
    assert server.connections_opened == 1


def test_concurrent_workers_keep_one_connection_each(
    server: ImageServer, tmp_path: Path
) -> None:
    workers, rounds = 6, 3
    fetcher = make(replace(FAST, per_host=workers))

    def work(n: int) -> None:
        for r in range(rounds):
            url = server.url(f"c{n}-{r}", size=4000, delay=0.05)
            fetcher.fetch(url, tmp_path / "c", f"i{n}_{r}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    fetcher.close()
    assert len(list((tmp_path / "c").iterdir())) == workers * rounds
    assert server.total_requests == workers * rounds
    assert server.connections_opened <= workers


# ------------------------------------------------------------ URLs on the wire


@pytest.mark.parametrize(
    ("url", "wire"),
    [
        ("http://h.test/a.jpg?x=1", "http://h.test/a.jpg?x=1"),
        ("http://h.test/a b.jpg", "http://h.test/a%20b.jpg"),
        (
            "http://h.test/图片/1.jpg?k=值",
            "http://h.test/%E5%9B%BE%E7%89%87/1.jpg?k=%E5%80%BC",
        ),
        # Already encoded: not encoded twice.
        ("http://h.test/a%20b.jpg", "http://h.test/a%20b.jpg"),
        ("http://例子.测试/a.jpg", "http://xn--fsqu00a.xn--0zwm56d/a.jpg"),
        ("http://u:p@例子.测试:81/a b", "http://u:p@xn--fsqu00a.xn--0zwm56d:81/a%20b"),
    ],
)
def test_wire_url_encodes_what_a_browser_would(url: str, wire: str) -> None:
    assert wire_url(url) == wire


def test_a_url_with_spaces_and_chinese_is_fetched(
    server: ImageServer, folder: Path
) -> None:
    # server.url encodes the name; a catalog holds it raw.
    url = server.url("产品 图").replace("%E4%BA%A7%E5%93%81%20%E5%9B%BE", "产品 图")
    assert "产品 图" in url
    saved = fetch_ok(server, folder, url)
    assert server.requests_for(wire_url(url)) == 1
    assert (folder / saved.filename).read_bytes() == server.expected_bytes(url)
