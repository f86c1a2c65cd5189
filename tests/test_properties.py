"""Hypothesis properties of parsing and request building.

Whatever names and values a backend sends, as text or as bytes, parsing
gives a directive, `None` or `InvalidDirective`, and the request built
from a directive never holds CR, LF or NUL.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from offloader import (
    InvalidDirective,
    OffloadDirective,
    Offloader,
    parse_directive,
)

#: Names that matter, mixed with anything Hypothesis makes up.
KNOWN_NAMES = [
    "Offload-Requested",
    "OFFLOAD-URL",
    "offload-method",
    "Offload-Forward-Body",
    "Offload-Timeout",
    "Offload-Keep-Headers",
    "Offload-X-Trace",
    "Offload-X-Content-Type",
    "Offload-X-Host",
    "Offload-X-",
    "Content-Type",
    "Connection",
]

KNOWN_VALUES = [
    "",
    "http://127.0.0.1:9/x?y=%2F",
    "https://a/",
    "post",
    "HEAD",
    "1.5",
    "nan",
    "Set-Cookie, Connection",
    "a\r\nb",
    "\x00",
    " http://a/ ",
]

names = st.one_of(st.sampled_from(KNOWN_NAMES), st.text(max_size=20))
values = st.one_of(st.sampled_from(KNOWN_VALUES), st.text(max_size=40))
#: Text headers that always ask for an offload, to reach the parser.
text_headers = st.lists(st.tuples(names, values), max_size=8).map(
    lambda pairs: [("Offload-Requested", ""), *pairs]
)
byte_headers = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from([n.encode() for n in KNOWN_NAMES]),
            st.binary(max_size=20),
        ),
        st.one_of(
            st.sampled_from([v.encode() for v in KNOWN_VALUES]),
            st.binary(max_size=40),
        ),
    ),
    max_size=8,
)

UNSENDABLE = ("\r", "\n", "\x00")


def _directive_or_none(
    pairs: list[tuple[str, str]] | list[tuple[bytes, bytes]],
) -> OffloadDirective | None:
    try:
        return parse_directive(pairs)
    except InvalidDirective:
        return None


def _assert_clean(directive: OffloadDirective) -> None:
    request = Offloader().build_request(directive)
    assert not any(c in str(request.url) for c in UNSENDABLE)
    assert not any(c.encode() in request.url.raw_path for c in UNSENDABLE)
    for name, value in request.headers.raw:
        for c in UNSENDABLE:
            assert c.encode() not in name
            assert c.encode() not in value


@settings(max_examples=300, deadline=None)
@given(text_headers)
def test_any_text_headers_parse_or_fail_cleanly(
    pairs: list[tuple[str, str]],
) -> None:
    """Any text headers give a directive, None or InvalidDirective; a
    directive builds a request without CR, LF or NUL anywhere."""
    directive = _directive_or_none(pairs)

    if directive is not None:
        assert isinstance(directive, OffloadDirective)
        _assert_clean(directive)


@settings(max_examples=300, deadline=None)
@given(byte_headers, st.booleans())
def test_any_byte_headers_parse_or_fail_cleanly(
    pairs: list[tuple[bytes, bytes]], ask: bool
) -> None:
    """The same holds for raw bytes, as a server or WSGI hands them."""
    if ask:
        pairs = [(b"offload-requested", b"1"), *pairs]

    directive = _directive_or_none(pairs)

    if directive is not None:
        _assert_clean(directive)


@settings(max_examples=200, deadline=None)
@given(
    url=st.one_of(
        st.text(max_size=40),
        st.builds(lambda rest: "http://a/" + rest, st.text(max_size=30)),
    ),
    header_value=st.text(max_size=20),
)
def test_directives_built_by_hand_stay_clean(
    url: str, header_value: str
) -> None:
    """A directive built directly either refuses its values with
    InvalidDirective or yields a request without CR, LF or NUL."""
    try:
        directive = OffloadDirective(
            url=url, headers=[("X-Value", header_value)]
        )
    except InvalidDirective:
        return

    _assert_clean(directive)
