"""Directive parsers: from backend response headers to a directive.

A parser is anything with a ``parse(headers)`` method (see
`DirectiveParser`). Parsers do no I/O; they read headers and return an
`OffloadDirective`, `None` when the response asks for no offload, or
raise `InvalidDirective`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import httpx

from ._directive import OffloadDirective
from ._errors import InvalidDirective
from ._headers import (
    FRAMING_HEADERS,
    HOP_BY_HOP_HEADERS,
    HeadersInput,
    header_pairs,
    is_token,
    is_valid_value,
)

__all__ = [
    "DirectiveParser",
    "OffloadHeaderParser",
    "ParserChain",
    "XAccelRedirectParser",
    "parse_directive",
]

logger = logging.getLogger("offloader")

# Names an Offload-X-<Name> header may not forward: they would break the
# framing or the routing of the offload request.
_NOT_FORWARDED = HOP_BY_HOP_HEADERS | FRAMING_HEADERS


@runtime_checkable
class DirectiveParser(Protocol):
    """What the offloader asks of a directive parser.

    ``parse`` receives the backend response's headers, in any of the
    shapes `parse_directive` accepts, and returns a directive, or `None`
    when the response asks for no offload. It raises `InvalidDirective`
    when the response asks for an offload in a way that cannot be
    honoured. It must do no I/O.

    A parser may also have a ``header_prefixes`` attribute, a tuple of
    lowercase header-name prefixes: the offloader then removes headers
    with those prefixes from every final response, as it always does for
    ``Offload-``.
    """

    def parse(self, headers: HeadersInput) -> OffloadDirective | None:
        """Return the directive in *headers*, or `None`."""
        ...


def _invalid_value_check(name: str, value: str) -> None:
    if not is_valid_value(value):
        raise InvalidDirective(
            f"header {name!r} has a value with CR, LF, NUL or other "
            f"characters that cannot be sent: {value!r}"
        )


class OffloadHeaderParser:
    """The parser of the ``Offload-*`` headers (the wire contract).

    Args:
        prefix: The header-name prefix, ``"Offload-"`` by default. A
            different prefix lets two offloading layers coexist, or hides
            the feature behind a name of your own.

    Reads, with names case-insensitive (``P`` is the prefix):

    - ``P-Requested`` (any value): offload; absent, `parse` returns
      `None` after one look-up.
    - ``P-Url`` (required, once), ``P-Method`` (``GET``, ``POST`` or
      ``HEAD``; ``GET`` when absent), ``P-Forward-Body`` (present:
      forward the backend body and its ``Content-Type``).
    - ``P-X-<Name>``: sent as ``<Name>``; framing, routing and hop-by-hop
      names are dropped.
    - ``P-Timeout`` and ``P-Keep-Headers``: extensions of this library.
    """

    def __init__(self, prefix: str = "Offload-") -> None:
        if not prefix or not is_token(prefix):
            raise ValueError(f"invalid header prefix {prefix!r}")
        self.prefix = prefix
        lowered = prefix.lower()
        self.header_prefixes = (lowered,)
        self._requested = lowered + "requested"
        self._url = lowered + "url"
        self._method = lowered + "method"
        self._forward_body = lowered + "forward-body"
        self._timeout = lowered + "timeout"
        self._keep_headers = lowered + "keep-headers"
        self._extra = lowered + "x-"

    def __repr__(self) -> str:
        return f"OffloadHeaderParser(prefix={self.prefix!r})"

    def parse(self, headers: HeadersInput) -> OffloadDirective | None:
        """Return the directive in *headers*, or `None` if none is asked.

        Raises:
            InvalidDirective: The headers ask for an offload but break the
                contract (missing or repeated URL, bad method, bad value).
        """
        if isinstance(headers, httpx.Headers):
            # The pass-through path: one look-up and nothing else.
            if self._requested not in headers:
                return None
            pairs = header_pairs(headers)
        else:
            pairs = header_pairs(headers)
            if not any(name == self._requested for name, _ in pairs):
                return None
        return self._parse_pairs(pairs)

    def _parse_pairs(self, pairs: list[tuple[str, str]]) -> OffloadDirective:
        urls: list[str] = []
        methods: list[str] = []
        timeouts: list[str] = []
        keep: list[str] = []
        sent: list[tuple[str, str]] = []
        forward_body = False
        content_type: str | None = None
        sent_content_type = False
        extra_length = len(self._extra)

        for name, raw_value in pairs:
            if name == "content-type":
                content_type = raw_value.strip()
                continue
            if not name.startswith(self.header_prefixes[0]):
                continue
            _invalid_value_check(name, raw_value)
            value = raw_value.strip()
            if name == self._url:
                urls.append(value)
            elif name == self._method:
                methods.append(value)
            elif name == self._forward_body:
                forward_body = True
            elif name == self._timeout:
                timeouts.append(value)
            elif name == self._keep_headers:
                keep.extend(value.split(","))
            elif name.startswith(self._extra):
                target = name[extra_length:]
                if not is_token(target):
                    raise InvalidDirective(
                        f"header {name!r} does not name a valid header"
                    )
                if target in _NOT_FORWARDED:
                    logger.debug("not forwarding header %r", target)
                    continue
                sent_content_type = (
                    sent_content_type or target == "content-type"
                )
                sent.append((target, value))

        if len(urls) != 1:
            raise InvalidDirective(
                "offload URL is missing"
                if not urls
                else "offload URL is given more than once"
            )
        if len(methods) > 1:
            raise InvalidDirective("offload method is given more than once")
        if len(timeouts) > 1:
            raise InvalidDirective("offload timeout is given more than once")
        if forward_body and content_type is not None and not sent_content_type:
            _invalid_value_check("content-type", content_type)
            sent.append(("content-type", content_type))
        try:
            # float() also reads "1_000" as a number; HTTP does not.
            if timeouts and "_" in timeouts[0]:
                raise ValueError(timeouts[0])
            timeout = float(timeouts[0]) if timeouts else None
        except ValueError:
            raise InvalidDirective(
                f"offload timeout is not a number: {timeouts[0]!r}"
            ) from None
        return OffloadDirective(
            url=urls[0],
            method=methods[0] if methods else "GET",
            forward_body=forward_body,
            headers=tuple(sent),
            timeout=timeout,
            keep_headers=tuple(keep),
        )


class XAccelRedirectParser:
    """A parser for backends written for NGINX's ``X-Accel-Redirect``.

    NGINX serves ``X-Accel-Redirect: /internal/path`` from an internal
    location. Here each internal path prefix maps to a base URL, and the
    prefix is replaced by it: with ``{"/files/": "http://store:9000/"}``,
    ``X-Accel-Redirect: /files/a.txt?v=2`` becomes a GET of
    ``http://store:9000/a.txt?v=2``. The longest matching prefix wins; a
    path that matches none, or holds ``.`` or ``..`` segments, is an
    `InvalidDirective`. An absolute
    ``http(s)`` URL is refused unless *allow_absolute_urls* is set.

    Args:
        locations: Internal path prefix to base URL.
        allow_absolute_urls: Accept a full URL in the header as well.
    """

    header_prefixes = ("x-accel-",)

    def __init__(
        self,
        locations: Mapping[str, str],
        *,
        allow_absolute_urls: bool = False,
    ) -> None:
        if not locations:
            raise ValueError("XAccelRedirectParser needs at least 1 location")
        for prefix, base in locations.items():
            if not prefix.startswith("/"):
                raise ValueError(f"location {prefix!r} must start with '/'")
            # Validates the base URL the same way as a directive's.
            OffloadDirective(url=base)
        self._locations = sorted(
            locations.items(), key=lambda item: len(item[0]), reverse=True
        )
        self.allow_absolute_urls = allow_absolute_urls

    def __repr__(self) -> str:
        return f"XAccelRedirectParser({dict(self._locations)!r})"

    def parse(self, headers: HeadersInput) -> OffloadDirective | None:
        """Return a GET directive for the ``X-Accel-Redirect`` path."""
        if (
            isinstance(headers, httpx.Headers)
            and "x-accel-redirect" not in headers
        ):
            return None
        pairs = header_pairs(headers)
        targets = [v.strip() for n, v in pairs if n == "x-accel-redirect"]
        if not targets:
            return None
        if len(targets) > 1:
            raise InvalidDirective("X-Accel-Redirect is given more than once")
        target = targets[0]
        _invalid_value_check("x-accel-redirect", target)
        if target.startswith(("http://", "https://")):
            if not self.allow_absolute_urls:
                raise InvalidDirective(
                    f"X-Accel-Redirect to an absolute URL is not allowed: "
                    f"{target!r}"
                )
            return OffloadDirective(url=target)
        path = target.split("?", 1)[0].replace("%2e", ".").replace("%2E", ".")
        if any(segment in (".", "..") for segment in path.split("/")):
            # The URL library would resolve them against the base URL and
            # leave the mapped location: NGINX resolves them before it
            # matches a location, so such a path was never meant to map.
            raise InvalidDirective(
                f"X-Accel-Redirect path has dot segments: {target!r}"
            )
        for prefix, base in self._locations:
            if target.startswith(prefix):
                return OffloadDirective(url=base + target[len(prefix) :])
        raise InvalidDirective(
            f"X-Accel-Redirect path {target!r} matches no configured location"
        )


class ParserChain:
    """Try several parsers in order; the first directive found wins.

    A parser that raises `InvalidDirective` stops the chain: the
    response asked for an offload and asked badly.
    """

    def __init__(self, *parsers: DirectiveParser) -> None:
        if not parsers:
            raise ValueError("ParserChain needs at least 1 parser")
        self.parsers: tuple[DirectiveParser, ...] = parsers
        prefixes: dict[str, None] = {}
        for parser in parsers:
            for prefix in getattr(parser, "header_prefixes", ()):
                prefixes[prefix] = None
        self.header_prefixes = tuple(prefixes)

    def __repr__(self) -> str:
        inner = ", ".join(repr(parser) for parser in self.parsers)
        return f"ParserChain({inner})"

    def parse(self, headers: HeadersInput) -> OffloadDirective | None:
        """Return the first directive any parser finds, or `None`."""
        if not isinstance(headers, (httpx.Headers, Sequence)):
            # Read a one-shot iterable once, for all the parsers.
            headers = header_pairs(headers)
        for parser in self.parsers:
            directive = parser.parse(headers)
            if directive is not None:
                return directive
        return None


_DEFAULT_PARSER = OffloadHeaderParser()


def parse_directive(headers: HeadersInput) -> OffloadDirective | None:
    """Parse the ``Offload-*`` headers of a backend response.

    *headers* may be `httpx.Headers`, any mapping (a dict, Starlette's or
    aiohttp's headers) or a sequence of ``(name, value)`` pairs as in
    WSGI, with `str` or `bytes` names and values.

    Returns:
        The directive, or `None` when ``Offload-Requested`` is absent.

    Raises:
        InvalidDirective: The headers ask for an offload but break the
            wire contract.
    """
    return _DEFAULT_PARSER.parse(headers)
