"""Keeping credentials out of logs, failure reasons and printed messages.

A catalog URL may carry a user and password (`https://user:pass@host/a.jpg`) or a
signed query (`?token=...`, `?X-Amz-Signature=...`), and options may carry a proxy
password or an Authorization header. Everything imgfetch logs or records about a
URL passes through here first:

- `redact_url` hides the user-info part and the values of query parameters whose
  names look like secrets; for logs and reasons.
- `strip_userinfo` hides only the user-info part, keeping the query, so a signed
  URL in `failed_images.json` can still be retried.
- `redact_text` scrubs both from free text (exception messages may quote a URL).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# A query parameter whose name contains one of these is treated as a secret. Broad
# on purpose: hiding a harmless `keyword=` in a log costs nothing, printing a
# token costs the user their account.
_SECRET_WORDS = (
    "token",
    "sig",
    "key",
    "auth",
    "pass",
    "pwd",
    "secret",
    "credential",
    "session",
    "policy",
)
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@?#]*@")
_QUERY_ITEM = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s]+)=(?P<value>[^&;#\s'\"]*)")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter or header of this name holds a credential."""
    lowered = name.lower()
    return lowered in SECRET_HEADERS or any(w in lowered for w in _SECRET_WORDS)


def strip_userinfo(url: str) -> str:
    """`url` with `user:pass@` replaced by `***@`; everything else kept."""
    if "@" not in url:
        return url  # no user-info possible: the common case, once per image
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(rf"\g<scheme>{MASK}@", url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{MASK}@{host}"))


def redact_url(url: str) -> str:
    """`url` fit for a log line: no user-info, no secret query values."""
    return _redact_query(strip_userinfo(url))


def redact_text(text: str) -> str:
    """Free text (an exception message, a reason) with every URL in it redacted."""
    return _redact_query(_USERINFO.sub(rf"\g<scheme>{MASK}@", text))


def redact_header(name: str, value: str) -> str:
    """`Name: value` for a message, with the value hidden when it is a secret."""
    return f"{name}: {MASK}" if is_secret_name(name) else f"{name}: {value}"


def _redact_query(text: str) -> str:
    def mask(match: re.Match[str]) -> str:
        if not is_secret_name(match["name"]) or not match["value"]:
            return match[0]
        return f"{match['lead']}{match['name']}={MASK}"

    return _QUERY_ITEM.sub(mask, text)
