"""Header plumbing shared by the parsers, the core and the adapters.

Headers arrive in many shapes: `httpx.Headers`, Starlette's or aiohttp's
header mappings, plain dicts, or WSGI-style lists of pairs, with `str` or
`bytes` names and values. `header_pairs` turns any of them into one list
of ``(lowercase name, value)`` string pairs; bytes are decoded as
ISO-8859-1 so that every byte survives the round trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeAlias, cast

import httpx

__all__ = [
    "FRAMING_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "HeadersInput",
    "connection_named_headers",
    "header_pairs",
    "is_token",
    "is_valid_value",
]

HeaderName: TypeAlias = str | bytes
HeaderValue: TypeAlias = str | bytes


class HeaderItems(Protocol):
    """Headers that list their ``(name, value)`` pairs, repeats
    included, from ``items()``: `wsgiref.headers.Headers`, and
    `email.message.Message` (which `http.client` responses use)."""

    def items(self) -> Iterable[tuple[str, str]]: ...


#: What `parse_directive` and the parsers accept as headers.
HeadersInput: TypeAlias = (
    httpx.Headers
    | Mapping[str, str]
    | Mapping[bytes, bytes]
    | HeaderItems
    | Iterable[tuple[str, str]]
    | Iterable[tuple[bytes, bytes]]
)

#: Hop-by-hop headers: RFC 9110 section 7.6.1, plus the proxy
#: authentication pair and Trailer, which concern one connection only.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Headers that describe how a message is framed or where it is routed.
#: They are recomputed for each hop, never copied from a directive.
FRAMING_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "content-encoding"}
)

# RFC 9110 section 5.6.2: token = 1*tchar
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5, restricted to ASCII: visible characters, spaces
# and tabs. Anything else (CR, LF, NUL, other controls, non-ASCII) is
# refused rather than guessed at.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")


def is_token(name: str) -> bool:
    """Tell whether *name* is a valid header name (an RFC 9110 token)."""
    return _TOKEN.fullmatch(name) is not None


def is_valid_value(value: str) -> bool:
    """Tell whether *value* may be sent as a header value.

    Only visible ASCII, spaces and tabs are accepted: CR, LF and NUL,
    which could split a header or smuggle a request, never are.
    """
    return _FIELD_VALUE.fullmatch(value) is not None


def _text(item: HeaderName | HeaderValue) -> str:
    if isinstance(item, bytes):
        return item.decode("latin-1")
    if isinstance(item, str):
        return item
    raise TypeError(
        f"header names and values must be str or bytes, not "
        f"{type(item).__name__}"
    )


def header_pairs(headers: HeadersInput) -> list[tuple[str, str]]:
    """Return every header of *headers* as ``(lowercase name, value)``.

    Repeated headers keep every value, in order.
    """
    if isinstance(headers, httpx.Headers):
        return [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in headers.raw
        ]
    # Starlette's and aiohttp's mappings, wsgiref's headers and email
    # messages return every value of a repeated header from items(); a
    # dict has one value per name.
    items_of = getattr(headers, "items", None)
    items: Iterable[Any] = (
        items_of() if callable(items_of) else cast("Iterable[Any]", headers)
    )
    try:
        return [(_text(name).lower(), _text(value)) for name, value in items]
    except (TypeError, ValueError) as exc:
        raise TypeError(
            "headers must be a mapping, or an iterable of (name, value) "
            f"pairs of str or bytes: {exc}"
        ) from exc


def connection_named_headers(pairs: Iterable[tuple[str, str]]) -> set[str]:
    """Return the lowercase names listed in any ``Connection`` header."""
    named: set[str] = set()
    for name, value in pairs:
        if name == "connection":
            named.update(
                token.strip().lower()
                for token in value.split(",")
                if token.strip()
            )
    return named
