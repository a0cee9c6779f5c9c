"""Classifying what a server answered, or how the request failed: permanent or
transient, and a short reason for the failure record.

Permanent: 404, 410, other 4xx but 408, 425 and 429; a body that is not an image;
too large; a redirect to a non-HTTP URL. Transient: timeouts, resets, truncated
bodies, 408, 425, 429 and every 5xx. Reasons never quote a URL or a header.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions

PERMANENT = "permanent: "
TRANSIENT = "transient: "
FETCHABLE_SCHEMES = ("http", "https")
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
# 4xx answers worth another try: a timeout on the server's side, "too early",
# and rate limiting. Every 5xx is retried: the server or a proxy may recover.
TRANSIENT_4XX = frozenset({408, 425, 429})


class Transient(Exception):
    """Worth another try: the server, the network or a proxy may recover."""

    def __init__(
        self,
        reason: str,
        retry_after: float | None = None,
        *,
        throttle: str | None = None,
        undecodable: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.throttle = throttle  # the host that asked every client to slow down
        self.undecodable = undecodable


class Permanent(Exception):
    """Another try would get the same answer."""


class Forbidden(Permanent):
    """403: hotlink protection, worth one try with the other Referer policy."""


def check_fetchable(url: str) -> None:
    """Only http and https are ever requested: never a local file."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        raise Permanent("malformed URL") from None
    if scheme not in FETCHABLE_SCHEMES:
        raise Permanent(f"cannot fetch a {scheme or 'relative'}: URL")


def redirect_target(response: requests.Response, url: str) -> str | None:
    if response.status_code not in REDIRECT_STATUS:
        return None
    location = response.headers.get("Location")
    if not location:
        raise Permanent(f"HTTP {response.status_code} without a Location")
    try:
        # http.client decodes headers as Latin-1; servers send UTF-8.
        location = location.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass
    target = urljoin(url, location)
    scheme = urlsplit(target).scheme.lower()
    if scheme not in FETCHABLE_SCHEMES:
        raise Permanent(f"redirect to a {scheme or 'relative'}: URL refused")
    return target


def check_status(response: requests.Response, host: str) -> None:
    status = response.status_code
    if status == 200:
        return
    reason = f"HTTP {status}"
    if status == 403:
        raise Forbidden(reason)
    if status in TRANSIENT_4XX or 500 <= status <= 599:
        wait = retry_after(response)
        # The whole host slows down for a 429, and for a 503 that says how long.
        throttled = status == 429 or (status == 503 and wait is not None)
        raise Transient(reason, wait, throttle=host if throttled else None)
    raise Permanent(reason)


def retry_after(response: requests.Response) -> float | None:
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


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, what it wraps (requests wraps urllib3 wraps socket errors)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [a for a in current.args if isinstance(a, BaseException)]
        todo += [c for c in (current.__cause__, current.__context__) if c is not None]


def connection_reason(exc: BaseException) -> str:
    for cause in causes(exc):
        if isinstance(cause, urllib3.exceptions.IncompleteRead):
            return f"truncated body ({cause.expected} bytes missing)"
    return f"connection failed ({short_cause(exc)})"


def short_cause(exc: BaseException) -> str:
    # The innermost error says what happened; the outer ones quote the URL.
    inner: BaseException = exc
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    text = str(inner) or type(inner).__name__
    return text.splitlines()[0][:160]
