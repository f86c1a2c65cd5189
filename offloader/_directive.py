"""`OffloadDirective`: what a backend asks the offloader to do."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import httpx

from ._errors import InvalidDirective
from ._headers import (
    FRAMING_HEADERS,
    HOP_BY_HOP_HEADERS,
    is_token,
    is_valid_value,
)

__all__ = ["ALLOWED_METHODS", "OffloadDirective"]

#: The methods an offload request may use, as in the Go package.
ALLOWED_METHODS = frozenset({"GET", "POST", "HEAD"})

#: Names a directive may never send nor keep: they frame or route the
#: message, and each hop computes its own.
_UNFORWARDABLE = HOP_BY_HOP_HEADERS | FRAMING_HEADERS


def _to_method(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _check_method(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or value not in ALLOWED_METHODS:
        raise InvalidDirective(
            f"offload method must be GET, POST or HEAD, not {value!r}"
        )


def _parse_url(value: object) -> httpx.URL:
    """Parse and check an offload URL, once per directive."""
    if not isinstance(value, str) or not value:
        raise InvalidDirective("offload URL is missing or empty")
    if not is_valid_value(value) or " " in value or "\t" in value:
        raise InvalidDirective(
            f"offload URL holds whitespace or control characters: {value!r}"
        )
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidDirective(f"offload URL is invalid: {value!r}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidDirective(
            f"offload URL must be an absolute http or https URL: {value!r}"
        )
    # httpx accepts any number as a port; a socket would take it modulo
    # 65536 and connect elsewhere.
    if url.port is not None and not 0 < url.port < 65536:
        raise InvalidDirective(
            f"offload URL has a port out of range: {value!r}"
        )
    return url


def _to_headers(value: object) -> object:
    if isinstance(value, httpx.Headers):
        return tuple(value.multi_items())
    if isinstance(value, Mapping):
        return tuple(value.items())
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return tuple(tuple(pair) for pair in value)
    return value


def _check_headers(
    _: object,
    __: attrs.Attribute[tuple[tuple[str, str], ...]],
    value: tuple[tuple[str, str], ...],
) -> None:
    for pair in value:
        if (
            len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], str)
        ):
            raise InvalidDirective(
                f"offload headers must be (name, value) string pairs, "
                f"not {pair!r}"
            )
        name, header_value = pair
        if not is_token(name):
            raise InvalidDirective(f"invalid offload header name {name!r}")
        if name.lower() in _UNFORWARDABLE:
            raise InvalidDirective(
                f"header {name!r} frames or routes the message and cannot "
                f"be sent by a directive"
            )
        if not is_valid_value(header_value):
            raise InvalidDirective(
                f"offload header {name!r} has a value with CR, LF, NUL or "
                f"other characters that cannot be sent: {header_value!r}"
            )


def _to_timeout(value: object) -> object:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_timeout(
    _: object, __: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is None:
        return
    if not isinstance(value, float) or not math.isfinite(value) or value <= 0:
        raise InvalidDirective(
            f"offload timeout must be a positive number of seconds, "
            f"not {value!r}"
        )


def _to_names(value: object) -> object:
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, Iterable):
        names = (str(name).strip().lower() for name in value)
        return tuple(dict.fromkeys(name for name in names if name))
    return value


def _check_names(
    _: object, __: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for name in value:
        if not is_token(name):
            raise InvalidDirective(f"invalid header name to keep: {name!r}")
        if name in _UNFORWARDABLE or name.startswith("offload-"):
            raise InvalidDirective(
                f"header {name!r} cannot be kept from the backend response"
            )


@attrs.frozen
class OffloadDirective:
    """A backend's request to offload: where to send what.

    Directives are immutable and validate themselves: constructing one
    with a bad value raises `InvalidDirective`, whether a parser or your
    own code builds it.

    Attributes:
        url: Absolute ``http`` or ``https`` URL of the offload request,
            used exactly as given.
        method: ``GET``, ``POST`` or ``HEAD``; lowercase input is
            accepted and stored uppercase.
        forward_body: Whether the backend's response body becomes the
            offload request's body, streamed.
        headers: The headers sent to the offload server, as a tuple of
            ``(name, value)`` pairs in order (accepted by
            ``httpx.Headers``). Framing, routing and hop-by-hop headers
            are not allowed.
        timeout: Total deadline in seconds asked for by the backend, or
            `None` for the offloader's default. The offloader caps it.
        keep_headers: Lowercase names of backend response headers to add
            to the final response.
    """

    url: str = attrs.field()
    method: str = attrs.field(
        default="GET", converter=_to_method, validator=_check_method
    )
    forward_body: bool = attrs.field(default=False, converter=bool)
    headers: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_to_headers, validator=_check_headers
    )
    timeout: float | None = attrs.field(
        default=None, converter=_to_timeout, validator=_check_timeout
    )
    keep_headers: tuple[str, ...] = attrs.field(
        default=(), converter=_to_names, validator=_check_names
    )
    # The URL parsed when the directive is made: it validates `url`, and
    # the offloader builds the request from it without parsing again.
    _parsed_url: httpx.URL = attrs.field(
        init=False,
        repr=False,
        eq=False,
        default=attrs.Factory(
            lambda self: _parse_url(self.url), takes_self=True
        ),
    )

    def evolve(self, **changes: Any) -> OffloadDirective:
        """Return a copy with *changes* applied, validated again."""
        return attrs.evolve(self, **changes)
