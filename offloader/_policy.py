"""Where offload requests may go."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs
import httpx

from ._addresses import IPAddress, IPNetwork, embedded_ipv4, is_non_public
from ._errors import DestinationRefused

__all__ = ["DestinationPolicy"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _to_lower_tuple(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return tuple(item.strip().lower().rstrip(".") for item in value)


def _host_key(host: str) -> str:
    """*host* as the policy compares it: lowercase, without a final
    dot, and an IP address (brackets or not) in its shortest form."""
    host = host.strip().lower().rstrip(".")
    try:
        return str(
            ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
        )
    except ValueError:
        return host


def _to_hosts(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return tuple(_host_key(item) for item in value)


def _to_ports(value: Iterable[int] | None) -> frozenset[int] | None:
    return None if value is None else frozenset(int(port) for port in value)


def _to_networks(
    value: Iterable[str | IPNetwork | IPAddress] | str,
) -> tuple[IPNetwork, ...]:
    if isinstance(value, str):
        value = [value]
    return tuple(ipaddress.ip_network(item, strict=False) for item in value)


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@attrs.frozen
class DestinationPolicy:
    """Which destinations an offload request may be sent to.

    The check runs before any byte is sent. A refused destination
    raises `DestinationRefused`, which a proxy answers with 502.

    The scheme, host and port are checked on the URL. The address rules
    (*block_private*, *deny_networks*) are checked on every address the
    host resolves to, and the connection then goes to that checked
    address: DNS rebinding and odd spellings of an address
    (``http://2130706433/``, ``http://0x7f.1/``, ``[::ffff:127.0.0.1]``)
    get nowhere. They guard the transports an `Offloader` makes itself;
    a client or transport you pass to it is yours to guard.

    Attributes:
        schemes: Allowed URL schemes; ``http`` and ``https`` by default.
        hosts: Allowed host names, exact (``api.internal``) or a suffix
            pattern (``*.internal`` matches ``a.internal`` and
            ``b.a.internal``, not ``internal``). `None` allows any host.
            IP literals are compared in their canonical spelling.
        ports: Allowed ports (the scheme's default port when the URL has
            none); `None` allows any port.
        block_private: Refuse every address outside the public
            internet: loopback, private, carrier-grade NAT, link-local
            (cloud metadata at 169.254.169.254 included), unique-local
            and site-local IPv6, multicast, unspecified, reserved and
            documentation ranges, and IPv6 forms that carry such an IPv4
            address (IPv4-mapped, NAT64, 6to4). Off by default.
        allow_networks: Networks allowed even when *block_private* is
            on, such as ``"10.1.0.0/16"`` for your own services.
        deny_networks: Networks always refused, with or without
            *block_private*; they win over *allow_networks*.
    """

    schemes: tuple[str, ...] = attrs.field(
        default=("http", "https"), converter=_to_lower_tuple
    )
    hosts: tuple[str, ...] | None = attrs.field(
        default=None, converter=_to_hosts
    )
    ports: frozenset[int] | None = attrs.field(
        default=None, converter=_to_ports
    )
    block_private: bool = attrs.field(default=False, converter=bool)
    allow_networks: tuple[IPNetwork, ...] = attrs.field(
        default=(), converter=_to_networks
    )
    deny_networks: tuple[IPNetwork, ...] = attrs.field(
        default=(), converter=_to_networks
    )

    @property
    def checks_addresses(self) -> bool:
        """Whether the policy has address rules to apply on connect."""
        return self.block_private or bool(self.deny_networks)

    def allows_address(self, address: IPAddress) -> bool:
        """Tell whether a connection to *address* is allowed."""
        if _in_any(address, self.deny_networks):
            return False
        if self.block_private and is_non_public(address):
            return _in_any(address, self.allow_networks)
        return True

    def check_address(
        self, address: IPAddress, *, host: str | None = None
    ) -> None:
        """Raise `DestinationRefused` unless *address* may be connected
        to; *host* names the host it was resolved from, for the message.
        """
        if not self.allows_address(address):
            via = "" if host is None or host == str(address) else f" ({host})"
            raise DestinationRefused(
                f"address {address}{via} is not allowed for offloads"
            )

    def allows_host(self, host: str) -> bool:
        """Tell whether *host* matches the allowed hosts."""
        if self.hosts is None:
            return True
        host = _host_key(host)
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
        if self.checks_addresses:
            # A literal address is refused here already, without a
            # lookup; any other host is checked when it is connected to.
            literal = _literal_address(url.host)
            if literal is not None:
                self.check_address(literal, host=url.host)


def _in_any(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether *address*, or the IPv4 address it carries, is in one of
    *networks*."""
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
    return any(
        candidate.version == network.version and candidate in network
        for candidate in candidates
        for network in networks
    )
