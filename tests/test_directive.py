"""`OffloadDirective`: an immutable value that validates itself."""

from __future__ import annotations

import attrs
import httpx
import pytest

from offloader import InvalidDirective, OffloadDirective


def test_defaults() -> None:
    """Only the URL is required: GET, no body, no headers, no timeout,
    nothing kept."""
    directive = OffloadDirective(url="http://api.internal/x")

    assert directive.url == "http://api.internal/x"
    assert directive.method == "GET"
    assert directive.forward_body is False
    assert directive.headers == ()
    assert directive.timeout is None
    assert directive.keep_headers == ()


def test_is_frozen() -> None:
    """A directive cannot be changed after it is made."""
    directive = OffloadDirective(url="http://a/")

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        directive.url = "http://b/"  # type: ignore[misc]


def test_method_is_stored_uppercase() -> None:
    """Lowercase methods are accepted and stored uppercase."""
    directive = OffloadDirective(url="http://a/", method="post")

    assert directive.method == "POST"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "CONNECT", "", "GET "])
def test_bad_method_is_invalid(method: str) -> None:
    """Only GET, POST and HEAD may be used."""
    with pytest.raises(InvalidDirective, match="method"):
        OffloadDirective(url="http://a/", method=method)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/relative",
        "ftp://host/file",
        "http://",
        "http://host/a\r\nX-Injected: 1",
        "http://host/a\x00b",
        "http://host/a b",
        "http://host/\tx",
        "http://127.0.0.1:99999/",
        "http://127.0.0.1:65536/",
        "https://host:0/",
    ],
)
def test_bad_url_is_invalid(url: str) -> None:
    """The URL must be absolute http(s), without whitespace or control
    characters."""
    with pytest.raises(InvalidDirective, match="URL"):
        OffloadDirective(url=url)


def test_url_is_kept_exactly() -> None:
    """The URL is stored as given, escapes and all."""
    url = "https://host:8443/a%2Fb/%7e?x=%2f&y=1+2&&z"

    directive = OffloadDirective(url=url)

    assert directive.url == url


def test_headers_are_an_immutable_tuple_accepted_by_httpx() -> None:
    """Headers from a dict, httpx.Headers or pairs become a tuple of
    pairs, in order, that httpx.Headers accepts."""
    given = httpx.Headers([("X-A", "1"), ("X-A", "2"), ("Accept", "*/*")])

    directive = OffloadDirective(url="http://a/", headers=given)

    assert directive.headers == (
        ("x-a", "1"),
        ("x-a", "2"),
        ("accept", "*/*"),
    )
    assert httpx.Headers(directive.headers).get_list("x-a") == ["1", "2"]
    assert OffloadDirective(url="http://a/", headers={"X-B": "v"}).headers == (
        ("X-B", "v"),
    )


@pytest.mark.parametrize(
    "headers",
    [
        [("X-A", "a\r\nb")],
        [("X-A", "a\nb")],
        [("X-A", "a\x00b")],
        [("Bad Name", "v")],
        [("X-A:", "v")],
        [("Host", "evil")],
        [("Content-Length", "5")],
        [("Transfer-Encoding", "chunked")],
        [("Connection", "close")],
        [("X-A", 1)],
        [("X-A",)],
    ],
)
def test_bad_headers_are_invalid(headers: list[tuple[object, ...]]) -> None:
    """Header values with CR, LF or NUL, bad names and framing or
    hop-by-hop names are refused."""
    with pytest.raises(InvalidDirective):
        OffloadDirective(url="http://a/", headers=headers)


@pytest.mark.parametrize(
    ("given", "stored"), [("2.5", 2.5), (3, 3.0), (0.25, 0.25)]
)
def test_timeout_is_converted_to_float(given: object, stored: float) -> None:
    """A timeout given as a number or numeric string is stored as a
    float."""
    directive = OffloadDirective(url="http://a/", timeout=given)

    assert directive.timeout == stored


@pytest.mark.parametrize("timeout", ["soon", 0, -1.0, float("nan"), "inf"])
def test_bad_timeout_is_invalid(timeout: object) -> None:
    """A timeout must be a positive, finite number."""
    with pytest.raises(InvalidDirective, match="timeout"):
        OffloadDirective(url="http://a/", timeout=timeout)


def test_keep_headers_are_normalised() -> None:
    """Kept names are split on commas, stripped, lowercased and
    deduplicated, in order."""
    directive = OffloadDirective(
        url="http://a/", keep_headers=" Set-Cookie, cache-control ,SET-COOKIE,"
    )

    assert directive.keep_headers == ("set-cookie", "cache-control")


@pytest.mark.parametrize(
    "names", ["Connection", "Content-Length", "Offload-Url", "bad name"]
)
def test_bad_keep_headers_are_invalid(names: str) -> None:
    """Framing, hop-by-hop and Offload-* names cannot be kept."""
    with pytest.raises(InvalidDirective):
        OffloadDirective(url="http://a/", keep_headers=names)


def test_evolve_validates_again() -> None:
    """`evolve` returns a changed copy, checked like a new one."""
    directive = OffloadDirective(url="http://a/")

    changed = directive.evolve(method="head")

    assert changed.method == "HEAD"
    assert directive.method == "GET"
    with pytest.raises(InvalidDirective):
        directive.evolve(url="gopher://a/")


def test_invalid_directive_is_a_value_error() -> None:
    """Code validating a directive by hand can catch ValueError."""
    with pytest.raises(ValueError, match="method"):
        OffloadDirective(url="http://a/", method="PUT")
