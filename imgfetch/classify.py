"""Classifying what a server answered, or how the request failed: permanent or
transient, and a short reason for the failure record.

Permanent: 404, 410, other 4xx but 408, 425 and 429; a body that is not an image;
too large; a redirect to a non-HTTP URL. Transient: timeouts, resets, truncated
bodies, 408, 425, 429 and every 5xx. Reasons never quote a URL or a header.
"""

from __future__ import annotations

from urllib.parse import urlsplit

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
    if url[:8].lower().startswith(("http://", "https://")) and "[" not in url:
        return  # the common case, once per request: no need to parse it all
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        raise Permanent("malformed URL") from None
    if scheme not in FETCHABLE_SCHEMES:
        raise Permanent(f"cannot fetch a {scheme or 'relative'}: URL")


def redirect_target(status: int, location: str | None) -> str | None:
    """Where a redirect points (absolute, as libcurl resolved it), or None when
    `status` is no redirect."""
    if status not in REDIRECT_STATUS:
        return None
    if not location:
        raise Permanent(f"HTTP {status} without a Location")
    scheme = urlsplit(location).scheme.lower()
    if scheme not in FETCHABLE_SCHEMES:
        raise Permanent(f"redirect to a {scheme or 'relative'}: URL refused")
    return location


def check_status(status: int, retry_after: float | None, host: str) -> None:
    """Nothing for a 200; otherwise the failure the status means."""
    if status == 200:
        return
    reason = f"HTTP {status}" if status else "no HTTP answer"
    if status == 403:
        raise Forbidden(reason)
    if status in TRANSIENT_4XX or 500 <= status <= 599 or not status:
        # The whole host slows down for a 429, and for a 503 that says how long.
        throttled = status == 429 or (status == 503 and retry_after is not None)
        raise Transient(reason, retry_after, throttle=host if throttled else None)
    raise Permanent(reason)
