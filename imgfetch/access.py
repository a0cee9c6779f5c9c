"""How imgfetch presents itself: extra headers, Referer policy, cookies, proxies.

The option values are checked here, before any download starts, and a bad one is
a one-line UsageError naming it (with secrets masked: a mistyped Authorization
header must not end up in a terminal log).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .errors import UsageError
from .redact import MASK, is_secret_name, redact_url

if TYPE_CHECKING:
    import http.cookiejar

# RFC 9110 token characters: what a header name may be made of.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NETSCAPE_MAGIC = re.compile(r"#( Netscape)? HTTP Cookie File")
_PROXY_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")
# Sent on the first hop only when the redirect stays on the same host: another
# host must not receive the credentials meant for this one.
HOST_BOUND_HEADERS = frozenset({"authorization", "cookie"})


def parse_header(text: str) -> tuple[str, str]:
    """`Name: value` from `--header`; UsageError when it is not one."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _TOKEN.match(name) or any(c in value for c in "\r\n\0"):
        raise UsageError("bad_header", hint="header_form", header=_shown(text))
    return name, value


def _shown(text: str) -> str:
    """The header as an error may show it: a secret's value is masked."""
    words = re.split(r"[\s:=]+", text.strip(), maxsplit=1)
    if any(is_secret_name(word) for word in re.split(r"[\s:=]+", text)):
        return f"{words[0]} {MASK}"
    return text


def check_url_option(option: str, value: str, schemes: tuple[str, ...]) -> str:
    """An absolute URL with one of `schemes` (for --referer and --proxy)."""
    try:
        parts = urlsplit(value)
        valid = parts.scheme.lower() in schemes and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise UsageError(
            "bad_url_option",
            hint="url_option",
            option=option,
            value=redact_url(value),
            schemes=", ".join(schemes),
        )
    return value


def check_proxy(value: str) -> str:
    """A proxy URL libcurl can use: HTTP, HTTPS or SOCKS."""
    return check_url_option("--proxy", value, _PROXY_SCHEMES)


def load_cookies(path: Path) -> http.cookiejar.MozillaCookieJar:
    """The cookies of a Netscape cookies.txt file; UsageError naming the file."""
    import http.cookiejar  # only with --cookies: a start-up cost otherwise

    jar = http.cookiejar.MozillaCookieJar()
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
        if not _NETSCAPE_MAGIC.match(first):
            raise UsageError(
                "cookies_file",
                hint="cookies_format",
                path=path,
                detail="no '# Netscape HTTP Cookie File' line at the top",
            )
        # The jar reports a bad line through warnings.warn with a traceback, and
        # its error quotes the line, cookie value included: neither is shown.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jar.load(str(path), ignore_discard=True, ignore_expires=True)
    except http.cookiejar.LoadError:
        raise UsageError(
            "cookies_file",
            hint="cookies_format",
            path=path,
            detail="a line is not 7 tab-separated fields",
        ) from None
    except OSError as exc:
        raise UsageError(
            "cookies_file",
            hint="cookies_format",
            path=path,
            detail=exc.strerror or type(exc).__name__,
        ) from None
    except ValueError:
        raise UsageError(
            "cookies_file", hint="cookies_format", path=path, detail="not UTF-8 text"
        ) from None
    _keep_session_cookies(jar)
    return jar


def _keep_session_cookies(jar: http.cookiejar.CookieJar) -> None:
    # Browsers' exporters (and curl) write 0 as the expiry of a session cookie;
    # the jar would take it for 1970 and drop the login that matters most.
    for cookie in jar:
        if cookie.expires == 0:
            cookie.expires = None
            cookie.discard = True
    jar.clear_expired_cookies()


def origin_of(url: str) -> str:
    """`scheme://host[:port]/` of a URL, without any user-info."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}/"


def referer_for(url: str, configured: str | None, flipped: bool) -> str | None:
    """The Referer to send for `url`.

    Hotlink protection comes in two kinds: CDNs that want a Referer from their own
    site and CDNs that refuse foreign ones. The normal policy sends `configured`
    (none by default); the flipped one sends nothing when a Referer was configured
    and the image's own origin when none was.
    """
    if not flipped:
        return configured
    return None if configured else origin_of(url)


def same_host(first: str, second: str) -> bool:
    a, b = urlsplit(first), urlsplit(second)
    return (a.hostname or "").lower() == (b.hostname or "").lower()
