"""Where offload requests may go."""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import httpx

from ._errors import DestinationRefused

__all__ = ["DestinationPolicy"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _to_lower_tuple(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return tuple(item.strip().lower().rstrip(".") for item in value)


def _to_ports(value: Iterable[int] | None) -> frozenset[int] | None:
    return None if value is None else frozenset(int(port) for port in value)


@attrs.frozen
class DestinationPolicy:
    """Which destinations an offload request may be sent to.

    The check runs before any byte is sent. A refused destination
    raises `DestinationRefused`, which a proxy answers with 502.

    Attributes:
        schemes: Allowed URL schemes; ``http`` and ``https`` by default.
        hosts: Allowed host names, exact (``api.internal``) or a suffix
            pattern (``*.internal`` matches ``a.internal`` and
            ``b.a.internal``, not ``internal``). `None` allows any host.
            IP literals are compared in their canonical spelling.
        ports: Allowed ports (the scheme's default port when the URL has
            none); `None` allows any port.
    """

    schemes: tuple[str, ...] = attrs.field(
        default=("http", "https"), converter=_to_lower_tuple
    )
    hosts: tuple[str, ...] | None = attrs.field(
        default=None, converter=_to_lower_tuple
    )
    ports: frozenset[int] | None = attrs.field(
        default=None, converter=_to_ports
    )

    def allows_host(self, host: str) -> bool:
        """Tell whether *host* matches the allowed hosts."""
        if self.hosts is None:
            return True
        host = host.lower().rstrip(".")
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False

    def check(self, url: httpx.URL) -> None:
        """Raise `DestinationRefused` unless *url* may be requested."""
        if url.scheme not in (self.schemes or ()):
            raise DestinationRefused(
                f"scheme {url.scheme!r} is not allowed for offloads"
            )
        if not self.allows_host(url.host):
            raise DestinationRefused(
                f"host {url.host!r} is not allowed for offloads"
            )
        if self.ports is not None:
            port = url.port or _DEFAULT_PORTS.get(url.scheme)
            if port not in self.ports:
                raise DestinationRefused(
                    f"port {port} is not allowed for offloads"
                )
