"""Directive parsers: `parse_directive`, `OffloadHeaderParser`,
`XAccelRedirectParser` and `ParserChain`. Parsing does no I/O, so these
are plain unit tests; `test_offloader.py` runs the parsers through real
servers."""

from __future__ import annotations

import email.message
import wsgiref.headers
from collections.abc import Callable, Iterator

import httpx
import multidict
import pytest
import starlette.datastructures

from offloader import (
    DirectiveParser,
    HeadersInput,
    InvalidDirective,
    OffloadDirective,
    OffloadHeaderParser,
    ParserChain,
    XAccelRedirectParser,
    parse_directive,
)

#: A directive with every feature, as (name, value) pairs.
PAIRS = [
    ("Content-Type", "application/json"),
    ("Offload-Requested", "yes"),
    ("Offload-Url", "http://api.internal/jobs?id=7&x=%2F"),
    ("Offload-Method", "post"),
    ("Offload-Forward-Body", ""),
    ("Offload-X-Trace", "one"),
    ("Offload-X-Api-Key", "k"),
    ("Offload-X-Trace", "two"),
    ("Offload-Timeout", "2.5"),
    ("Offload-Keep-Headers", "Set-Cookie"),
]

EXPECTED = OffloadDirective(
    url="http://api.internal/jobs?id=7&x=%2F",
    method="POST",
    forward_body=True,
    headers=(
        ("trace", "one"),
        ("api-key", "k"),
        ("trace", "two"),
        ("content-type", "application/json"),
    ),
    timeout=2.5,
    keep_headers=("set-cookie",),
)


def _bytes_pairs(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs]


def _message(pairs: list[tuple[str, str]]) -> email.message.Message:
    # The header type of http.client's responses.
    message = email.message.Message()
    for name, value in pairs:
        message[name] = value
    return message


SHAPES: dict[str, Callable[[list[tuple[str, str]]], HeadersInput]] = {
    "httpx.Headers": httpx.Headers,
    "str pairs": list,
    "str pairs tuple": tuple,
    "bytes pairs": _bytes_pairs,
    "starlette.Headers": lambda pairs: starlette.datastructures.Headers(
        raw=_bytes_pairs([(n.lower(), v) for n, v in pairs])
    ),
    "aiohttp CIMultiDict": multidict.CIMultiDict,
    "aiohttp CIMultiDictProxy": lambda pairs: multidict.CIMultiDictProxy(
        multidict.CIMultiDict(pairs)
    ),
    "wsgiref.headers.Headers": lambda pairs: wsgiref.headers.Headers(
        list(pairs)
    ),
    "email.message.Message": _message,
}


def test_headers_that_are_not_pairs_are_a_type_error() -> None:
    """Something that is neither a mapping nor pairs is refused with a
    clear TypeError, not an error from deep inside."""
    with pytest.raises(TypeError, match="mapping, or an iterable"):
        parse_directive(["offload-requested", "offload-url"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="str or bytes"):
        parse_directive([("offload-requested", 1)])  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", SHAPES)
def test_parse_directive_takes_every_header_shape(shape: str) -> None:
    """httpx, Starlette and aiohttp headers and WSGI-style pairs of str
    or bytes all give the same directive, repeated headers included."""
    headers = SHAPES[shape](PAIRS)

    directive = parse_directive(headers)

    assert directive == EXPECTED


@pytest.mark.parametrize("shape", SHAPES)
def test_parse_directive_returns_none_without_request_header(
    shape: str,
) -> None:
    """Without Offload-Requested nothing is asked, whatever else is
    there."""
    pairs = [(n, v) for n, v in PAIRS if n != "Offload-Requested"]

    assert parse_directive(SHAPES[shape](pairs)) is None


def test_parse_directive_takes_a_dict() -> None:
    """A plain dict of str works too (one value per name)."""
    headers = {"offload-requested": "", "offload-url": "https://a/b"}

    directive = parse_directive(headers)

    assert directive == OffloadDirective(url="https://a/b")


def test_parse_directive_takes_a_one_shot_iterable() -> None:
    """A generator of pairs is read once."""

    def pairs() -> Iterator[tuple[str, str]]:
        yield ("Offload-Requested", "1")
        yield ("Offload-Url", "http://a/")

    assert parse_directive(pairs()) == OffloadDirective(url="http://a/")


def test_names_are_case_insensitive() -> None:
    """Header names match in any case."""
    headers = [
        ("OFFLOAD-REQUESTED", "1"),
        ("offload-url", "http://a/"),
        ("oFfLoAd-MeThOd", "HEAD"),
        ("OFFLOAD-X-TOKEN", "t"),
    ]

    directive = parse_directive(headers)

    assert directive == OffloadDirective(
        url="http://a/", method="HEAD", headers=(("token", "t"),)
    )


def test_empty_requested_value_asks_for_offload() -> None:
    """Offload-Requested counts when present, even empty."""
    headers = [("Offload-Requested", ""), ("Offload-Url", "http://a/")]

    assert parse_directive(headers) is not None


def test_values_are_stripped() -> None:
    """Surrounding whitespace of values is ignored."""
    headers = [
        ("Offload-Requested", "1"),
        ("Offload-Url", "  http://a/x  "),
        ("Offload-Method", " post "),
    ]

    directive = parse_directive(headers)

    assert directive == OffloadDirective(url="http://a/x", method="POST")


def test_content_type_goes_only_with_forwarded_body() -> None:
    """The backend's Content-Type is sent only when its body is."""
    headers = [
        ("Offload-Requested", "1"),
        ("Offload-Url", "http://a/"),
        ("Content-Type", "application/json"),
    ]

    directive = parse_directive(headers)

    assert directive is not None
    assert directive.headers == ()


def test_content_type_override_wins() -> None:
    """Offload-X-Content-Type replaces the backend's Content-Type."""
    headers = [
        ("Content-Type", "application/json"),
        ("Offload-Requested", "1"),
        ("Offload-Url", "http://a/"),
        ("Offload-Forward-Body", "1"),
        ("Offload-X-Content-Type", "text/csv"),
    ]

    directive = parse_directive(headers)

    assert directive is not None
    assert directive.headers == (("content-type", "text/csv"),)


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Content-Encoding",
        "Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Connection",
    ],
)
def test_framing_and_hop_by_hop_names_are_dropped(name: str) -> None:
    """Offload-X-<Name> naming a framing or hop-by-hop header is not
    forwarded, and does not spoil the directive."""
    headers = [
        ("Offload-Requested", "1"),
        ("Offload-Url", "http://a/"),
        (f"Offload-X-{name}", "x"),
        ("Offload-X-Kept", "y"),
    ]

    directive = parse_directive(headers)

    assert directive is not None
    assert directive.headers == (("kept", "y"),)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([], id="url-missing"),
        pytest.param([("Offload-Url", "")], id="url-empty"),
        pytest.param([("Offload-Url", "/x")], id="url-relative"),
        pytest.param([("Offload-Url", "ftp://a/")], id="url-ftp"),
        pytest.param(
            [("Offload-Url", "http://a/"), ("Offload-Url", "http://a/")],
            id="url-twice",
        ),
        pytest.param(
            [("Offload-Url", "http://a/"), ("Offload-Method", "PUT")],
            id="method-put",
        ),
        pytest.param(
            [
                ("Offload-Url", "http://a/"),
                ("Offload-Method", "GET"),
                ("Offload-Method", "POST"),
            ],
            id="method-twice",
        ),
        pytest.param(
            [("Offload-Url", "http://a/"), ("Offload-Timeout", "soon")],
            id="timeout-text",
        ),
        pytest.param(
            [("Offload-Url", "http://a/"), ("Offload-Timeout", "0")],
            id="timeout-zero",
        ),
        pytest.param(
            [("Offload-Url", "http://a/"), ("Offload-Timeout", "1_000")],
            id="timeout-underscore",
        ),
        pytest.param(
            [("Offload-Url", "http://a/"), ("Offload-Timeout", "nan")],
            id="timeout-nan",
        ),
        pytest.param(
            [
                ("Offload-Url", "http://a/"),
                ("Offload-Timeout", "1"),
                ("Offload-Timeout", "2"),
            ],
            id="timeout-twice",
        ),
        pytest.param(
            [("Offload-Url", "http://a/"), ("Offload-X-", "v")],
            id="x-no-name",
        ),
        pytest.param(
            [("Offload-Url", "http://a/"), ("Offload-Keep-Headers", "a b")],
            id="keep-bad-name",
        ),
        pytest.param(
            [
                ("Offload-Url", "http://a/"),
                ("Offload-Keep-Headers", "Connection"),
            ],
            id="keep-hop-by-hop",
        ),
    ],
)
def test_broken_directives_are_invalid(
    headers: list[tuple[str, str]],
) -> None:
    """A response that asks for an offload badly raises
    InvalidDirective, a ValueError with status 502."""
    with pytest.raises(InvalidDirective) as raised:
        parse_directive([("Offload-Requested", "1"), *headers])

    assert isinstance(raised.value, ValueError)
    assert raised.value.status_code == 502


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\x00", "\x7f", "\xe9"])
@pytest.mark.parametrize(
    "name",
    [
        "Offload-Url",
        "Offload-Method",
        "Offload-X-Trace",
        "Offload-Timeout",
        "Offload-Keep-Headers",
        "Offload-Requested",
        "Offload-Unknown",
        "Content-Type",
    ],
)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_control_characters_are_invalid(
    bad: str, name: str, as_bytes: bool
) -> None:
    """A CR, LF, NUL or other unsendable character in any Offload-*
    value, or in a forwarded Content-Type, makes the directive invalid;
    it never becomes part of a request."""
    value = {
        "Offload-Url": "http://a/{}x",
        "Offload-Method": "GE{}T",
        "Offload-Timeout": "1{}",
    }.get(name, "a{}b")
    pairs = [
        ("Offload-Requested", "1"),
        ("Offload-Url", "http://a/"),
        ("Offload-Forward-Body", "1"),
    ]
    pairs = [(n, v) for n, v in pairs if n != name]
    pairs.append((name, value.format(bad)))
    headers: HeadersInput = _bytes_pairs(pairs) if as_bytes else pairs

    with pytest.raises(InvalidDirective):
        parse_directive(headers)


def test_header_names_that_are_not_str_or_bytes_are_refused() -> None:
    """Headers must be str or bytes; anything else is a TypeError, not
    a silent miss."""
    with pytest.raises(TypeError):
        parse_directive([(1, 2)])  # type: ignore[arg-type]


# -- OffloadHeaderParser ------------------------------------------------------


def test_custom_prefix() -> None:
    """With prefix="X-Defer-" the parser reads X-Defer-* and ignores
    Offload-*."""
    parser = OffloadHeaderParser(prefix="X-Defer-")
    headers = [
        ("Offload-Requested", "1"),
        ("Offload-Url", "http://ignored/"),
        ("x-defer-requested", "1"),
        ("X-Defer-Url", "http://used/"),
        ("X-Defer-X-Token", "t"),
    ]

    directive = parser.parse(headers)

    assert directive == OffloadDirective(
        url="http://used/", headers=(("token", "t"),)
    )
    assert parser.header_prefixes == ("x-defer-",)
    assert parser.parse([("Offload-Requested", "1")]) is None


@pytest.mark.parametrize("prefix", ["", "X Defer-", "X:"])
def test_invalid_prefix_is_refused(prefix: str) -> None:
    """A prefix must be a header-name token."""
    with pytest.raises(ValueError, match="prefix"):
        OffloadHeaderParser(prefix=prefix)


def test_parsers_satisfy_the_protocol() -> None:
    """The shipped parsers, and any object with `parse`, are
    DirectiveParsers."""

    class Mine:
        def parse(self, headers: HeadersInput) -> OffloadDirective | None:
            return None

    parsers = [
        OffloadHeaderParser(),
        XAccelRedirectParser({"/a/": "http://a/"}),
        ParserChain(OffloadHeaderParser()),
        Mine(),
    ]

    assert all(isinstance(p, DirectiveParser) for p in parsers)
    assert not isinstance(object(), DirectiveParser)


# -- XAccelRedirectParser -----------------------------------------------------

LOCATIONS = {
    "/files/": "http://store:9000/",
    "/files/private/": "http://vault:9001/secret/",
    "/media": "https://cdn.internal/media",
}


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("/files/a.txt?v=2", "http://store:9000/a.txt?v=2"),
        ("/files/private/k.pem", "http://vault:9001/secret/k.pem"),
        ("/files/privateer", "http://store:9000/privateer"),
        ("/media/x%20y.mp4", "https://cdn.internal/media/x%20y.mp4"),
        ("/media", "https://cdn.internal/media"),
    ],
)
def test_x_accel_maps_the_longest_prefix(path: str, url: str) -> None:
    """The longest matching internal prefix is replaced by its base URL;
    the rest of the path and the query are kept."""
    parser = XAccelRedirectParser(LOCATIONS)

    directive = parser.parse([("X-Accel-Redirect", path)])

    assert directive == OffloadDirective(url=url)


@pytest.mark.parametrize(
    "path", ["/other/a", "files/a", "/FILES/a", "http://evil/x", ""]
)
def test_x_accel_unknown_path_is_invalid(path: str) -> None:
    """A path no location matches, and an absolute URL by default, are
    refused."""
    parser = XAccelRedirectParser(LOCATIONS)

    with pytest.raises(InvalidDirective):
        parser.parse(httpx.Headers({"X-Accel-Redirect": path}))


@pytest.mark.parametrize(
    "path",
    [
        "/files/../admin",
        "/files/private/../../admin",
        "/files/./a",
        "/files/%2e%2e/admin",
        "/files/%2E%2e/admin?x=1",
        "/files/a/..",
    ],
)
def test_x_accel_dot_segments_are_invalid(path: str) -> None:
    """A path with dot segments could resolve outside its location's
    base URL: it is refused, as NGINX would never map it there."""
    parser = XAccelRedirectParser(LOCATIONS)

    with pytest.raises(InvalidDirective, match="dot segments"):
        parser.parse([("X-Accel-Redirect", path)])


def test_x_accel_dots_inside_names_are_fine() -> None:
    """Dots inside a segment, or in the query, are ordinary."""
    parser = XAccelRedirectParser(LOCATIONS)

    directive = parser.parse([("X-Accel-Redirect", "/files/a..b/.c?p=../x")])

    assert directive == OffloadDirective(
        url="http://store:9000/a..b/.c?p=../x"
    )


def test_x_accel_absolute_urls_when_allowed() -> None:
    """allow_absolute_urls accepts a full http(s) URL."""
    parser = XAccelRedirectParser(LOCATIONS, allow_absolute_urls=True)

    directive = parser.parse({"x-accel-redirect": "https://a/b?c"})

    assert directive == OffloadDirective(url="https://a/b?c")


def test_x_accel_without_header_or_twice() -> None:
    """No header: None. Two headers: invalid."""
    parser = XAccelRedirectParser(LOCATIONS)

    assert parser.parse(httpx.Headers({"X-Other": "1"})) is None
    with pytest.raises(InvalidDirective, match="more than once"):
        parser.parse(
            [("X-Accel-Redirect", "/files/a"), ("X-Accel-Redirect", "/b")]
        )


def test_x_accel_control_characters_are_invalid() -> None:
    """A CR or LF in the redirect path never reaches a request."""
    parser = XAccelRedirectParser(LOCATIONS)

    with pytest.raises(InvalidDirective):
        parser.parse([("X-Accel-Redirect", "/files/a\r\nHost: evil")])


@pytest.mark.parametrize(
    "locations",
    [{}, {"files/": "http://a/"}, {"/files/": "ftp://a/"}],
)
def test_x_accel_bad_locations_are_refused(
    locations: dict[str, str],
) -> None:
    """Locations must be non-empty, start with / and map to http(s)."""
    with pytest.raises(ValueError):  # noqa: PT011 - any of several messages
        XAccelRedirectParser(locations)


# -- ParserChain --------------------------------------------------------------


def test_chain_first_directive_wins() -> None:
    """Parsers are tried in order; the first directive is returned."""
    chain = ParserChain(
        XAccelRedirectParser({"/f/": "http://files/"}),
        OffloadHeaderParser(),
    )
    both = [
        ("X-Accel-Redirect", "/f/a"),
        ("Offload-Requested", "1"),
        ("Offload-Url", "http://offload/"),
    ]

    assert chain.parse(both) == OffloadDirective(url="http://files/a")
    assert chain.parse(both[1:]) == OffloadDirective(url="http://offload/")
    assert chain.parse([("X-Other", "1")]) is None
    assert chain.header_prefixes == ("x-accel-", "offload-")


def test_chain_stops_at_an_invalid_directive() -> None:
    """A parser that finds a bad directive stops the chain."""
    chain = ParserChain(
        OffloadHeaderParser(),
        XAccelRedirectParser({"/f/": "http://files/"}),
    )

    with pytest.raises(InvalidDirective):
        chain.parse([("Offload-Requested", "1"), ("X-Accel-Redirect", "/f/a")])


def test_chain_reads_a_one_shot_iterable_once() -> None:
    """A generator is materialised once and seen by every parser."""
    chain = ParserChain(
        OffloadHeaderParser(prefix="X-Never-"), OffloadHeaderParser()
    )

    def pairs() -> Iterator[tuple[str, str]]:
        yield ("Offload-Requested", "1")
        yield ("Offload-Url", "http://a/")

    assert chain.parse(pairs()) == OffloadDirective(url="http://a/")


def test_chain_needs_a_parser() -> None:
    """An empty chain is a mistake."""
    with pytest.raises(ValueError, match="at least 1"):
        ParserChain()
