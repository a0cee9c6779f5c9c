"""The real web's habits, against a real local server: hotlink protection, identity
headers, cookies, proxies, credentials that must stay secret, images that are cut
inside, and a whole run through mixed faults, interrupted and resumed.

Fetcher-level tests come first; the ones at the end run the `imgfetch` CLI as a
process, the way a user does.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    assert_consistent,
    imgfetch_env,
    interrupt,
    make_catalog,
    read_state,
    run_imgfetch,
    start_imgfetch,
    urls_of,
    wait_for_progress,
    write_catalog,
)

from imgfetch.access import load_cookies, parse_header
from imgfetch.errors import UsageError
from imgfetch.fetch import FetchConfig, Fetcher, ImageFailed, SavedImage
from imgfetch.testimages import image_bytes
from imgfetch.testserver import FAULT_KINDS, ImageServer

# Every test runs with both drivers of a download (see conftest.fetch_driver).
pytestmark = pytest.mark.usefixtures("fetch_driver")

FAST = FetchConfig(
    connect_timeout=2.0,
    read_timeout=2.0,
    deadline=10.0,
    retries=2,
    backoff=0.01,
    max_retry_wait=0.05,
)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy in the environment would capture requests to 127.0.0.1.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def fetch(url: str, folder: Path, config: FetchConfig = FAST, stem: str = "m") -> Any:
    """The SavedImage, or the ImageFailed raised, of one fetch."""
    fetcher = Fetcher(config, threading.Event())
    try:
        return fetcher.fetch(url, folder, stem)
    except ImageFailed as exc:
        return exc
    finally:
        fetcher.close()


def referers(server: ImageServer, url: str) -> list[str | None]:
    return [h.get("Referer") for h in server.headers_for(url)]


# ------------------------------------------------------------ hotlinking


def test_403_retried_with_the_images_own_origin(
    server: ImageServer, tmp_path: Path
) -> None:
    # The CDN wants a Referer from its own site; none was configured.
    url = server.url("own", referer="self")
    saved = fetch(url, tmp_path)
    assert isinstance(saved, SavedImage)
    assert (tmp_path / saved.filename).read_bytes() == server.expected_bytes(url)
    assert referers(server, url) == [None, f"{server.base_url}/"]


def test_403_retried_without_the_configured_referer(
    server: ImageServer, tmp_path: Path
) -> None:
    # The CDN refuses foreign Referers; the configured one was foreign.
    url = server.url("foreign", referer="none")
    config = replace(FAST, referer="https://shop.example/item/1")
    assert isinstance(fetch(url, tmp_path, config), SavedImage)
    assert referers(server, url) == ["https://shop.example/item/1", None]


def test_configured_referer_that_works_costs_one_request(
    server: ImageServer, tmp_path: Path
) -> None:
    url = server.url("shop", referer="shop.example")
    config = replace(FAST, referer="https://shop.example/item/1")
    assert isinstance(fetch(url, tmp_path, config), SavedImage)
    assert referers(server, url) == ["https://shop.example/item/1"]


def test_403_with_either_policy_is_a_permanent_failure(
    server: ImageServer, tmp_path: Path
) -> None:
    url = server.url("locked", status=403)
    error = fetch(url, tmp_path)
    assert isinstance(error, ImageFailed)
    assert error.reason == "permanent: HTTP 403 (with either Referer policy)"
    assert error.attempts == 2
    assert referers(server, url) == [None, f"{server.base_url}/"]
    assert not list(tmp_path.iterdir())


def test_the_policy_that_worked_is_kept_for_the_host(
    server: ImageServer, tmp_path: Path
) -> None:
    # The second image of a hotlink-protected host does not spend a 403 again.
    fetcher = Fetcher(FAST, threading.Event())
    first, second = server.url("h1", referer="self"), server.url("h2", referer="self")
    fetcher.fetch(first, tmp_path, "a")
    fetcher.fetch(second, tmp_path, "b")
    fetcher.close()
    assert server.requests_for(first) == 2
    assert referers(server, second) == [f"{server.base_url}/"]


def test_referer_given_as_a_header_is_the_configured_referer(
    server: ImageServer, tmp_path: Path
) -> None:
    url = server.url("via-header", referer="none")
    config = replace(FAST, headers=(("Referer", "https://shop.example/"),))
    assert isinstance(fetch(url, tmp_path, config), SavedImage)
    assert referers(server, url) == ["https://shop.example/", None]


# ---------------------------------------------------------------- identity


def test_default_identity_is_a_browser(server: ImageServer, tmp_path: Path) -> None:
    url = server.url("ua")
    fetch(url, tmp_path)
    (headers,) = server.headers_for(url)
    assert headers["User-Agent"].startswith("Mozilla/5.0")
    assert "image/webp" in headers["Accept"]
    assert "Referer" not in headers


def test_user_agent_and_extra_headers_are_sent(
    server: ImageServer, tmp_path: Path
) -> None:
    url = server.url("custom")
    config = replace(
        FAST,
        user_agent="imgfetch-test/1",
        headers=(("Accept-Language", "zh-CN"), ("X-Probe", "42")),
    )
    fetch(url, tmp_path, config)
    (headers,) = server.headers_for(url)
    assert headers["User-Agent"] == "imgfetch-test/1"
    assert headers["Accept-Language"] == "zh-CN"
    assert headers["X-Probe"] == "42"


def test_credentials_stay_with_their_host_across_redirects(
    server: ImageServer, tmp_path: Path
) -> None:
    # Same host: the Authorization header follows. Another host ("localhost" is
    # the same server under another name): it is dropped.
    secret = (("Authorization", "Bearer s3cret"), ("Cookie", "sid=abc"))
    config = replace(FAST, headers=secret)
    same = server.url("same-target")
    other = server.url("other-target").replace("127.0.0.1", "localhost")
    for name, target in (("same", same), ("other", other)):
        start = server.url(f"from-{name}", location=target)
        assert isinstance(fetch(start, tmp_path / name, config), SavedImage)
        (first,) = server.headers_for(start)
        assert first["Authorization"] == "Bearer s3cret"
    (kept,) = server.headers_for(same)
    (dropped,) = server.headers_for(other)
    assert kept["Authorization"] == "Bearer s3cret" and kept["Cookie"] == "sid=abc"
    assert "Authorization" not in dropped and "Cookie" not in dropped


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def fetch_log() -> Any:
    """Every line imgfetch.fetch logs, DEBUG included. Its own handler, because
    the CLI's setup_logging (run in-process by other tests) stops propagation."""
    logger = logging.getLogger("imgfetch.fetch")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_user_and_password_in_the_url_are_sent_but_never_told(
    server: ImageServer, tmp_path: Path, fetch_log: list[str]
) -> None:
    base = server.base_url.replace("http://", "http://alice:s3cret@")
    good = base + "/img/private.png?fmt=png&size=900&fail=503:1&token=t0ken"
    gone = base + "/img/gone.jpg?status=404&token=t0ken"
    flaky = base + "/img/flaky.jpg?fail=503:9&token=t0ken"
    assert isinstance(fetch(good, tmp_path), SavedImage)
    (_, served) = server.headers_for(good)
    expected = base64.b64encode(b"alice:s3cret").decode()
    assert served["Authorization"] == f"Basic {expected}"
    reasons = [fetch(url, tmp_path).reason for url in (gone, flaky)]
    assert reasons[0] == "permanent: HTTP 404"
    assert reasons[1].startswith("transient: HTTP 503")
    logged = "\n".join(fetch_log)
    assert "retrying http://***@127.0.0.1" in logged  # logged, with the URL...
    for text in (logged, *reasons):
        for secret in ("s3cret", "alice", "t0ken"):
            assert secret not in text  # ...but not its secrets


def test_cookies_file_cookies_are_sent(server: ImageServer, tmp_path: Path) -> None:
    jar = tmp_path / "cookies.txt"
    jar.write_text(
        "# Netscape HTTP Cookie File\n"
        "127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tabc123\n"  # 0: a session cookie
        "127.0.0.1\tFALSE\t/\tFALSE\t4102444800\tlang\tzh\n"
        "127.0.0.1\tFALSE\t/\tFALSE\t1\tstale\told\n"  # expired in 1970
        "other.example\tFALSE\t/\tFALSE\t0\tforeign\tno\n",
        encoding="utf-8",
    )
    url = server.url("with-cookies")
    assert isinstance(fetch(url, tmp_path, replace(FAST, cookies=jar)), SavedImage)
    (headers,) = server.headers_for(url)
    sent = sorted(headers["Cookie"].split("; "))
    assert sent == ["lang=zh", "session=abc123"]


class _CookieSetter(BaseHTTPRequestHandler):
    """Sets a cookie on /first; answers any request with the Cookie it got."""

    protocol_version = "HTTP/1.1"
    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(self.headers.get("Cookie"))
        body = image_bytes(self.path, "png", 300)
        self.send_response(200)
        if self.path == "/first.png":
            self.send_header("Set-Cookie", "visitor=v42; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cookie_the_server_sets_is_sent_back_by_every_worker(
    tmp_path: Path,
) -> None:
    # Some CDNs set a cookie on the first image and want it on the next ones.
    _CookieSetter.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _CookieSetter)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    fetcher = Fetcher(FAST, threading.Event())
    try:
        fetcher.fetch(f"{base}/first.png", tmp_path, "a")
        # Another thread, so another libcurl handle: the jar is shared.
        thread = threading.Thread(
            target=fetcher.fetch, args=(f"{base}/second.png", tmp_path, "b")
        )
        thread.start()
        thread.join(timeout=30)
    finally:
        fetcher.close()
        httpd.shutdown()
        httpd.server_close()
    assert _CookieSetter.seen == [None, "visitor=v42"]


def test_proxy_option_wins_over_the_environment(
    server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment names a proxy where nothing listens; --proxy names the test
    # server, which answers proxy requests for a host that does not exist.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    url = "http://img.cdn.invalid/img/proxied.png?fmt=png&size=700"
    config = replace(FAST, proxy=server.base_url, retries=0)
    saved = fetch(url, tmp_path, config)
    assert isinstance(saved, SavedImage), saved
    assert (tmp_path / saved.filename).read_bytes() == server.expected_bytes(url)
    assert server.proxied_requests == 1


def test_proxy_from_the_environment_is_used(
    server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", server.base_url)
    url = "http://img.cdn.invalid/img/env.gif?fmt=gif&size=700"
    assert isinstance(fetch(url, tmp_path, replace(FAST, retries=0)), SavedImage)
    assert server.proxied_requests == 1


# ---------------------------------------------------------- option values


@pytest.mark.parametrize(
    ("text", "header"),
    [
        ("X-Probe: 1", ("X-Probe", "1")),
        ("Accept-Language:zh-CN, en;q=0.5", ("Accept-Language", "zh-CN, en;q=0.5")),
        ("X-Empty:", ("X-Empty", "")),
    ],
)
def test_parse_header(text: str, header: tuple[str, str]) -> None:
    assert parse_header(text) == header


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("X-Probe 1", "X-Probe 1"),  # no colon
        (": value", ": value"),  # no name
        ("Bad Name: 1", "Bad Name: 1"),  # a space in the name
        ("Authorization Bearer s3cret", "Authorization ***"),  # masked
        ("X-Api-Key s3cret", "X-Api-Key ***"),
    ],
)
def test_malformed_header_is_a_usage_error_naming_it(text: str, shown: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_header(text)
    assert repr(shown) in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ("session\tabc\n", "no '# Netscape HTTP Cookie File' line"),
        ("# Netscape HTTP Cookie File\nx\tFALSE\t/\tsecretvalue\n", "7 tab-separated"),
        (None, "No such file"),
    ],
)
def test_bad_cookies_file_is_a_usage_error_naming_it(
    tmp_path: Path, content: str | None, detail: str
) -> None:
    path = tmp_path / "cookies.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_cookies(path)
    assert str(path) in str(info.value)
    assert detail in str(info.value)
    assert "secretvalue" not in str(info.value)


# ---------------------------------------------------------- verify-decode

PNG_CUT = {"fmt": "png", "size": 3000}  # cut in the middle of its picture data


def test_cut_image_with_a_matching_length_fails_only_when_decoded(
    server: ImageServer, tmp_path: Path
) -> None:
    # The body is the first half of a PNG, announced as exactly that long: length
    # and signature are right, only decoding finds the cut.
    url = server.url("cut", cut="1500", **PNG_CUT)
    assert isinstance(fetch(url, tmp_path / "plain"), SavedImage)
    error = fetch(url, tmp_path / "decoded", replace(FAST, verify_decode=True))
    assert isinstance(error, ImageFailed)
    # Transient once (an edge may heal), permanent when the same bytes come back.
    assert error.reason.startswith("permanent: cannot decode the image (")
    assert error.reason.endswith("(twice)")
    assert error.attempts == 2
    assert not (tmp_path / "decoded").exists() or not list(
        (tmp_path / "decoded").iterdir()
    )


def test_cut_image_fixed_on_retry_is_saved_whole(
    server: ImageServer, tmp_path: Path
) -> None:
    url = server.url("healed", cut="1500:1", **PNG_CUT)
    saved = fetch(url, tmp_path, replace(FAST, verify_decode=True))
    assert isinstance(saved, SavedImage)
    assert (tmp_path / saved.filename).read_bytes() == server.expected_bytes(url)
    assert server.requests_for(url) == 2


def test_verify_decode_passes_whole_images_and_skips_unknown_decoders(
    server: ImageServer, tmp_path: Path
) -> None:
    # A whole PNG decodes; the test server's HEIC is no real HEIC, but Pillow has
    # no HEIC decoder without a plugin, so it cannot be judged and is kept.
    config = replace(FAST, verify_decode=True)
    for name, fmt in (("whole", "png"), ("phone", "heic")):
        saved = fetch(server.url(name, fmt), tmp_path, config, stem=name)
        assert isinstance(saved, SavedImage), saved
        assert saved.format == fmt


# ------------------------------------------------------------- the CLI


def cli_download(catalog: Path, data: Path, *extra: str) -> list[str]:
    return ["download", str(catalog), "-d", str(data), "--progress", "plain", *extra]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--header", "Authorization Bearer s3cret"], "'Authorization ***'"),
        (["--cookies", "missing-cookies.txt"], "missing-cookies.txt"),
        (["--referer", "shop.example/page"], "--referer"),
        (["--proxy", "ftp://bob:s3cret@proxy.example/"], "--proxy"),
        (["--per-host", "0"], "--per-host"),
        (["--rate", "-1"], "--rate"),
        (["--max-retry-wait", "-2"], "--max-retry-wait"),
    ],
)
def test_bad_network_options_stop_before_anything_is_touched(
    tmp_path: Path, server: ImageServer, options: list[str], named: str
) -> None:
    catalog = write_catalog(tmp_path / "c.json", make_catalog(server, 1))
    data = tmp_path / "data"
    result = run_imgfetch(cli_download(catalog, data, *options), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "s3cret" not in result.stderr
    assert not data.exists()
    assert server.total_requests == 0


_WITHOUT_PILLOW = (
    "import sys; sys.modules['PIL'] = None; "
    "from imgfetch.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


def test_verify_decode_without_pillow_says_what_to_install(
    tmp_path: Path, server: ImageServer
) -> None:
    catalog = write_catalog(tmp_path / "c.json", make_catalog(server, 1))
    args = cli_download(catalog, tmp_path / "data", "--verify-decode")
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PILLOW, *args],
        cwd=tmp_path,
        env=imgfetch_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "--verify-decode needs Pillow" in line
    assert "pip install 'imgfetch[decode]'" in line
    assert not (tmp_path / "data").exists()


def test_credentials_never_reach_output_or_failure_reasons(
    tmp_path: Path, server: ImageServer
) -> None:
    base = server.base_url.replace("http://", "http://carol:pa55w0rd@")
    urls = [
        base + "/img/ok.png?fmt=png&size=900&fail=503:1&sig=s1gnature",
        base + "/img/gone.jpg?status=404&sig=s1gnature",
        base + "/img/down.jpg?fail=503:9&sig=s1gnature",
        base + "/img/page.jpg?html=1&sig=s1gnature",
    ]
    catalog = write_catalog(
        tmp_path / "c.json", [{"id": "secret-product", "main_images": urls}]
    )
    data = tmp_path / "data"
    args = ["--verbose", "--retries", "1", "--max-retry-wait", "0.05"]
    result = run_imgfetch(cli_download(catalog, data, *args), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "retrying" in result.stderr  # --verbose did log the retries
    failures = read_state(data).failures["secret-product"]
    reasons = [f["reason"] for f in failures]
    assert len(reasons) == 3 and all(
        r.startswith(("permanent: ", "transient: ")) for r in reasons
    )
    for text in (result.stdout, result.stderr, json.dumps(reasons)):
        for secret in ("pa55w0rd", "carol", "s1gnature"):
            assert secret not in text
    # The record's URL keeps the signed query (--retry-failed needs it) but not
    # the user and password.
    stored = (data / "failed_images.json").read_text(encoding="utf-8")
    assert "pa55w0rd" not in stored and "carol" not in stored
    masked = server.base_url.replace("http://", "http://***@")
    assert all(f["url"].startswith(masked) for f in failures)


def test_network_options_reach_the_server(tmp_path: Path, server: ImageServer) -> None:
    # Through the real CLI: the images' host does not exist, --proxy reaches it.
    jar = tmp_path / "cookies.txt"
    jar.write_text(
        "# Netscape HTTP Cookie File\nimg.cdn.invalid\tFALSE\t/\tFALSE\t0\tsid\tc00\n",
        encoding="utf-8",
    )
    urls = [f"http://img.cdn.invalid/img/cli{n}.png?fmt=png&size=800" for n in (1, 2)]
    catalog = write_catalog(tmp_path / "c.json", [{"id": "p", "main_images": urls}])
    options = [
        *("--proxy", server.base_url, "--cookies", str(jar)),
        *("--header", "X-Probe: cli", "--header", "Accept-Language: zh-CN"),
        *("--referer", "https://shop.example/p", "--user-agent", "probe/2"),
        *("--per-host", "1", "--rate", "50", "--verify-decode"),
    ]
    result = run_imgfetch(cli_download(catalog, tmp_path / "data", *options))
    assert result.returncode == 0, result.stderr
    assert server.proxied_requests == 2
    for url in urls:
        (headers,) = server.headers_for(url)
        assert headers["X-Probe"] == "cli"
        assert headers["Accept-Language"] == "zh-CN"
        assert headers["Referer"] == "https://shop.example/p"
        assert headers["User-Agent"] == "probe/2"
        assert headers["Cookie"] == "sid=c00"
    assert server.max_concurrency == 1
    assert_consistent(
        tmp_path / "data", [{"id": "p", "main_images": urls}], server, finished=True
    )


# ------------------------------------------------ the whole run, end to end

WEB_WORKERS = 8
WEB_PER_HOST = 3
WEB_RETRIES = 3


def test_mixed_faults_interrupted_and_resumed_end_with_every_image_right(
    tmp_path: Path,
) -> None:
    """30% of first and second attempts fail (5xx, 429 with Retry-After in seconds
    or as a date, resets, truncated bodies, stalls); the run is interrupted with
    Ctrl+C once images appear and resumed. Every image ends saved with the served
    bytes, the server never saw more than --per-host requests at once, and every
    request is explained: one per image, one per injected fault, and at most one
    per worker cut off by the interrupt."""
    with ImageServer(fault_rate=0.3, seed=4, faults=FAULT_KINDS) as server:
        catalog = make_catalog(server, 30, main=2, sku=1, qc=0)
        urls = [u for p in catalog for c in ("main", "sku") for u in urls_of(p, c)]
        planned = sum(server.planned_failures(u) for u in urls)
        assert planned > 0.3 * len(urls)  # the faults are really there
        source = write_catalog(tmp_path / "c.json", catalog)
        data = tmp_path / "data"
        options = [
            *("--workers", str(WEB_WORKERS), "--per-host", str(WEB_PER_HOST)),
            *("--retries", str(WEB_RETRIES), "--max-retry-wait", "0.2"),
            *("--read-timeout", "1", "--grace-period", "0.5"),
        ]

        proc = start_imgfetch(cli_download(source, data, *options), cwd=tmp_path)
        wait_for_progress(data, 12)
        code, _out, err = interrupt(proc, signal.SIGINT)
        assert code == 130, err
        assert_consistent(data, catalog, server, finished=False)
        assert read_state(data).has_pending, "the run ended before the interrupt"

        resumed = run_imgfetch(
            ["resume", "-d", str(data), "--progress", "plain", *options],
            cwd=tmp_path,
        )
        assert resumed.returncode == 0, resumed.stderr

        mapping = assert_consistent(data, catalog, server, finished=True)
        for product in catalog:
            for category in ("main", "sku"):
                saved = mapping[str(product["id"])][category]
                assert len(saved) == len(urls_of(product, category))
                assert all(saved), f"{product['id']}: an image is missing"
        assert not read_state(data).failures
        assert 1 <= server.max_concurrency <= WEB_PER_HOST
        for url in urls:
            # Served only once its injected faults were used up.
            assert server.requests_for(url) >= 1 + server.planned_failures(url)
        explained = len(urls) + planned
        assert explained <= server.total_requests <= explained + WEB_WORKERS
