"""Header plumbing: every shape of headers to one list of pairs, and the
checks that keep unsendable names and values off the wire."""

from __future__ import annotations

import httpx
import multidict
import pytest
import starlette.datastructures

from offloader._headers import (
    FRAMING_HEADERS,
    HOP_BY_HOP_HEADERS,
    connection_named_headers,
    header_pairs,
    is_token,
    is_valid_value,
)


def test_header_pairs_lowercases_names_and_keeps_every_value() -> None:
    """Names are lowercased; repeated headers keep each value, in
    order; values are untouched."""
    given = [("X-A", "1"), ("Set-Cookie", "a=1"), ("x-a", " 2 ")]

    assert header_pairs(given) == [
        ("x-a", "1"),
        ("set-cookie", "a=1"),
        ("x-a", " 2 "),
    ]


@pytest.mark.parametrize(
    "headers",
    [
        httpx.Headers([("X-A", "1"), ("X-A", "2")]),
        [(b"X-A", b"1"), (b"x-a", b"2")],
        starlette.datastructures.Headers(raw=[(b"x-a", b"1"), (b"x-a", b"2")]),
        multidict.CIMultiDict([("X-A", "1"), ("X-A", "2")]),
    ],
    ids=["httpx", "bytes", "starlette", "multidict"],
)
def test_header_pairs_of_multi_value_mappings(headers: object) -> None:
    """httpx, Starlette and aiohttp headers yield every repeated value."""
    assert header_pairs(headers) == [("x-a", "1"), ("x-a", "2")]  # type: ignore[arg-type]


def test_header_pairs_decodes_bytes_as_latin_1() -> None:
    """Every byte survives: bytes are decoded as ISO-8859-1."""
    raw = bytes(range(0x80, 0x100))

    ((_, value),) = header_pairs([(b"X-Raw", raw)])

    assert value.encode("latin-1") == raw


def test_header_pairs_refuses_other_types() -> None:
    """Names and values must be str or bytes."""
    with pytest.raises(TypeError, match="str or bytes"):
        header_pairs([("X-A", 3)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("Content-Type", True),
        ("x-a_b.c~d!#$%&'*+^`|", True),
        ("", False),
        ("X A", False),
        ("X:A", False),
        ("X\r\nA", False),
        ("X\x00", False),
        ("Caf\xe9", False),
        ("(x)", False),
    ],
)
def test_is_token(name: str, valid: bool) -> None:
    """Header names are RFC 9110 tokens."""
    assert is_token(name) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("", True),
        ("text/html; charset=utf-8", True),
        ("a\tb c", True),
        ("~!@#$%^&*()", True),
        ("a\rb", False),
        ("a\nb", False),
        ("a\r\nX-Evil: 1", False),
        ("a\x00b", False),
        ("\x7f", False),
        ("\x1b[31m", False),
        ("caf\xe9", False),
    ],
)
def test_is_valid_value(value: str, valid: bool) -> None:
    """Only visible ASCII, spaces and tabs may be sent."""
    assert is_valid_value(value) is valid


def test_connection_named_headers() -> None:
    """Names listed in every Connection header are collected,
    lowercased, empty items ignored."""
    pairs = [
        ("connection", "Keep-Alive, X-Hop"),
        ("x-hop", "1"),
        ("connection", " ,x-other ,"),
    ]

    assert connection_named_headers(pairs) == {
        "keep-alive",
        "x-hop",
        "x-other",
    }


def test_hop_by_hop_set_covers_rfc_9110() -> None:
    """The hop-by-hop names of RFC 9110 section 7.6.1 are all known,
    and the framing ones too."""
    assert {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
    } <= HOP_BY_HOP_HEADERS
    assert {"host", "content-length"} <= FRAMING_HEADERS
