"""Credentials never reach a log line, a failure reason or a printed message."""

from __future__ import annotations

import pytest

from imgfetch.redact import (
    is_secret_name,
    redact_header,
    redact_text,
    redact_url,
    strip_userinfo,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # user and password
        ("https://alice:s3cret@img.example/a.jpg", "https://***@img.example/a.jpg"),
        # a token as the user name (GitHub style), and a port
        ("http://tok123@h.example:8080/a.jpg", "http://***@h.example:8080/a.jpg"),
        # an "@" in the password: everything up to the last "@" is user-info
        ("https://u:p@ss@h.example/a.jpg", "https://***@h.example/a.jpg"),
        # nothing to hide
        ("https://img.example/a.jpg?w=400", "https://img.example/a.jpg?w=400"),
        # an "@" in the path is not user-info
        ("https://img.example/u/@me/a.jpg", "https://img.example/u/@me/a.jpg"),
    ],
)
def test_strip_userinfo(url: str, expected: str) -> None:
    assert strip_userinfo(url) == expected


def test_strip_userinfo_keeps_a_signed_query() -> None:
    # The failure record keeps the query so --retry-failed can still use it.
    url = "https://u:pw@cdn.example/a.jpg?X-Amz-Signature=abc&w=1"
    assert (
        strip_userinfo(url) == "https://***@cdn.example/a.jpg?X-Amz-Signature=abc&w=1"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://u:pw@cdn.example/a.jpg?token=T0K&w=400",
            "https://***@cdn.example/a.jpg?token=***&w=400",
        ),
        (
            "https://s3.example/b/a.jpg?X-Amz-Credential=AKIA&X-Amz-Signature=ff00",
            "https://s3.example/b/a.jpg?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
        (  # CloudFront signed URLs
            "https://d.example/a.jpg?Policy=eyJ&Signature=abc&Key-Pair-Id=K1",
            "https://d.example/a.jpg?Policy=***&Signature=***&Key-Pair-Id=***",
        ),
        (  # api keys and passwords by any spelling
            "http://h.example/a.png?apiKey=1&PASSWORD=2&auth=3&sig=4",
            "http://h.example/a.png?apiKey=***&PASSWORD=***&auth=***&sig=***",
        ),
        (  # ordinary parameters and a fragment stay
            "http://h.example/a.png?size=2&fmt=png#top",
            "http://h.example/a.png?size=2&fmt=png#top",
        ),
        (  # an empty secret has nothing to hide
            "http://h.example/a.png?token=",
            "http://h.example/a.png?token=",
        ),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_of_a_malformed_url_still_hides_the_password() -> None:
    # urlsplit raises on a broken IPv6 host; the regex path must still apply.
    assert redact_url("http://u:pw@[::1/a.jpg?key=k") == "http://***@[::1/a.jpg?key=***"


def test_redact_text_scrubs_every_url_in_a_message() -> None:
    text = (
        "Max retries exceeded with url: /a.jpg?token=abc (Caused by ProxyError("
        "'Unable to connect to proxy http://bob:hunter2@proxy.example:3128'))"
    )
    scrubbed = redact_text(text)
    assert "abc" not in scrubbed and "hunter2" not in scrubbed and "bob" not in scrubbed
    assert "/a.jpg?token=***" in scrubbed
    assert "http://***@proxy.example:3128" in scrubbed


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True),
        ("proxy-authorization", True),
        ("Cookie", True),
        ("X-Api-Key", True),
        ("X-Auth-Token", True),
        ("Accept-Language", False),
        ("Referer", False),
        ("User-Agent", False),
    ],
)
def test_secret_header_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret
    shown = redact_header(name, "v4lue")
    assert ("v4lue" in shown) is not secret
    assert shown.startswith(f"{name}: ")
