"""The destination policy: names, ports and addresses, before any byte."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from offloader import (
    DestinationPolicy,
    DestinationRefused,
    Offloader,
    OffloadRequestFailed,
)
from offloader._addresses import embedded_ipv4, is_non_public
from offloader.hooks.asgi import OffloadProxy
from offloader.hooks.httpx import hooks

from .faultservers import (
    RawServer,
    directing_backend,
    ok,
    raw_server,
    silent,
)
from .servers import RunningServer, serve


@pytest.fixture(scope="module")
def backend() -> Iterator[RunningServer]:
    with serve(directing_backend) as server:
        yield server


@pytest.fixture
def listener() -> Iterator[RawServer]:
    """A loopback listener that answers 200 "ok" to every request."""
    with raw_server(ok()) as server:
        yield server


@pytest.fixture
def second_listener() -> Iterator[RawServer]:
    """A listener on 127.0.0.2, another loopback address."""
    with raw_server(silent, host="127.0.0.2") as server:
        yield server


LOOPBACK_ONLY = DestinationPolicy(
    block_private=True, allow_networks=["127.0.0.1/32"]
)
NO_PRIVATE = DestinationPolicy(block_private=True)


def spellings(port: int) -> list[str]:
    """Ways of writing an address that reaches 127.0.0.1:*port*."""
    return [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://2130706433:{port}/",  # decimal
        f"http://0x7f000001:{port}/",  # hexadecimal
        f"http://017700000001:{port}/",  # octal
        f"http://0x7f.1:{port}/",  # short hexadecimal
        f"http://127.1:{port}/",  # short dotted
        f"http://0:{port}/",  # 0.0.0.0 reaches the local host on Linux
        f"http://[::ffff:127.0.0.1]:{port}/",  # IPv4-mapped
        f"http://[::ffff:7f00:1]:{port}/",  # IPv4-mapped, hex
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/",  # the long form
    ]


# -- the address table ----------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.1",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",  # cloud metadata
        "169.254.0.1",
        "192.0.0.192",  # another cloud's metadata
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "192.0.2.1",
        "::",
        "::1",
        "::127.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.1.2.3",
        "64:ff9b::a9fe:a9fe",  # NAT64 form of the metadata address
        "64:ff9b::7f00:1",
        "2002:a9fe:a9fe::1",  # 6to4 form of the metadata address
        "2002:0a00:0001::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "2001::1",  # Teredo
    ],
)
def test_non_public_addresses_are_recognised(address: str) -> None:
    """Every non-public range, in every IPv6 wrapping of an IPv4 address,
    is non-public and refused by a policy that blocks them."""
    parsed = ipaddress.ip_address(address)

    assert is_non_public(parsed)
    assert not NO_PRIVATE.allows_address(parsed)
    assert DestinationPolicy().allows_address(parsed)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "172.32.0.1",  # just past 172.16.0.0/12
        "100.128.0.1",  # just past carrier-grade NAT
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:0808:0808::1",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    """Public addresses, wrapped or not, pass a policy blocking private
    ones."""
    parsed = ipaddress.ip_address(address)

    assert not is_non_public(parsed)
    assert NO_PRIVATE.allows_address(parsed)


def test_embedded_ipv4_is_unwrapped() -> None:
    """Mapped, NAT64 and 6to4 IPv6 addresses are judged by the IPv4
    address they carry."""
    metadata = ipaddress.IPv4Address("169.254.169.254")

    assert embedded_ipv4(ipaddress.ip_address("::ffff:a9fe:a9fe")) == metadata
    assert embedded_ipv4(ipaddress.ip_address("64:ff9b::a9fe:a9fe")) == (
        metadata
    )
    assert embedded_ipv4(ipaddress.ip_address("2002:a9fe:a9fe::")) == metadata
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1")) is None
    assert embedded_ipv4(metadata) is None


def test_allow_and_deny_networks() -> None:
    """allow_networks opens holes in block_private; deny_networks refuses
    even without it, and wins over allow_networks."""
    policy = DestinationPolicy(
        block_private=True,
        allow_networks=["10.0.0.0/8"],
        deny_networks=["10.9.0.0/16", "8.8.8.8"],
    )
    only_metadata = DestinationPolicy(deny_networks="169.254.169.254/32")

    assert policy.allows_address(ipaddress.ip_address("10.1.2.3"))
    assert policy.allows_address(ipaddress.ip_address("::ffff:10.1.2.3"))
    assert not policy.allows_address(ipaddress.ip_address("10.9.0.1"))
    assert not policy.allows_address(ipaddress.ip_address("8.8.8.8"))
    assert not policy.allows_address(ipaddress.ip_address("192.168.0.1"))
    assert policy.checks_addresses
    assert only_metadata.checks_addresses
    assert not DestinationPolicy().checks_addresses
    assert only_metadata.allows_address(ipaddress.ip_address("127.0.0.1"))
    assert not only_metadata.allows_address(
        ipaddress.ip_address("::ffff:169.254.169.254")
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::1]:8080/",
        "http://10.0.0.1/",
        "http://[fd00::1]/",
    ],
)
def test_literal_addresses_are_refused_without_a_lookup(url: str) -> None:
    """An address written in the URL is refused by `check` itself."""
    with pytest.raises(DestinationRefused) as caught:
        NO_PRIVATE.check(httpx.URL(url))

    assert caught.value.status_code == 502


def test_names_ports_and_schemes_are_still_checked() -> None:
    """The name, port and scheme rules hold beside the address rules."""
    policy = DestinationPolicy(
        hosts=["*.internal", "api.example"], ports=[443], block_private=True
    )

    policy.check(httpx.URL("https://a.internal/"))
    policy.check(httpx.URL("https://API.example./x"))
    for url in (
        "https://internal/",
        "https://a.internal:444/",
        "http://a.internal/",
        "ftp://a.internal:443/",
        "https://evil.example/",
    ):
        with pytest.raises(DestinationRefused):
            policy.check(httpx.URL(url))


@pytest.mark.parametrize("written", ["::1", "[::1]", "0:0:0:0:0:0:0:1"])
def test_an_ip_address_host_matches_however_it_is_written(
    written: str,
) -> None:
    """An allowed IP address matches the URL's host in any spelling of
    it, IPv6 with or without brackets; its neighbours do not."""
    policy = DestinationPolicy(hosts=[written, "10.0.0.1"])

    policy.check(httpx.URL("http://[::1]:8080/"))
    policy.check(httpx.URL("http://[0::1]/"))
    policy.check(httpx.URL("http://10.0.0.1/"))
    for url in ("http://[::2]/", "http://10.0.0.10/", "http://127.0.0.1/"):
        with pytest.raises(DestinationRefused):
            policy.check(httpx.URL(url))


# -- through real servers: a refused destination receives nothing ----------


def offload_sync(
    offloader: Offloader, backend: RunningServer, target: str
) -> httpx.Response:
    bound = hooks(offloader)
    with httpx.Client(event_hooks={"response": [bound.response_hook]}) as c:
        response = c.get(backend.url, headers={"X-Target": target})
        response.read()
        return response


async def offload_async(
    offloader: Offloader, backend: RunningServer, target: str
) -> httpx.Response:
    bound = hooks(offloader)
    async with httpx.AsyncClient(
        event_hooks={"response": [bound.async_response_hook]}
    ) as client:
        response = await client.get(backend.url, headers={"X-Target": target})
        await response.aread()
        return response


def test_every_spelling_of_loopback_is_refused_sync(
    backend: RunningServer, listener: RawServer
) -> None:
    """With private addresses blocked, no spelling of 127.0.0.1 reaches
    the listener there: it accepts no connection at all."""
    refused = []

    with Offloader(policy=NO_PRIVATE) as offloader:
        for url in spellings(listener.port):
            with pytest.raises(DestinationRefused) as caught:
                offload_sync(offloader, backend, url)
            refused.append(caught.value.status_code)

    assert refused == [502] * len(spellings(listener.port))
    assert listener.accepted == 0
    assert listener.received == 0


@pytest.mark.anyio
async def test_every_spelling_of_loopback_is_refused_async(
    backend: RunningServer, listener: RawServer
) -> None:
    """The async path refuses every spelling as well."""
    count = 0

    async with Offloader(policy=NO_PRIVATE) as offloader:
        for url in spellings(listener.port):
            with pytest.raises(DestinationRefused):
                await offload_async(offloader, backend, url)
            count += 1

    assert count == len(spellings(listener.port))
    assert listener.accepted == 0


def test_the_same_spellings_connect_without_the_block(
    backend: RunningServer, listener: RawServer
) -> None:
    """Control: without the address block every spelling (that the
    system resolves) reaches the listener, so the test above could
    fail."""
    reached = 0

    with Offloader() as offloader:
        for url in spellings(listener.port):
            try:
                response = offload_sync(offloader, backend, url)
            except OffloadRequestFailed:
                continue
            assert response.text == "ok"
            reached += 1

    assert reached >= 8
    assert listener.accepted >= 1


def test_an_allowed_address_is_reached_and_its_neighbour_is_not(
    backend: RunningServer, listener: RawServer, second_listener: RawServer
) -> None:
    """allow_networks lets 127.0.0.1 through while 127.0.0.2, still
    loopback, receives nothing."""
    with Offloader(policy=LOOPBACK_ONLY) as offloader:
        response = offload_sync(offloader, backend, listener.url + "/x")
        with pytest.raises(DestinationRefused):
            offload_sync(offloader, backend, second_listener.url + "/x")

    assert response.status_code == 200
    assert response.text == "ok"
    assert listener.accepted == 1
    assert second_listener.accepted == 0
    assert second_listener.received == 0


@pytest.fixture
def rebinding_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make ``rebind.test`` resolve to 127.0.0.1 once, then to 127.0.0.2,
    as a rebinding attacker's DNS server would. Returns the log of
    lookups of that name."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name != "rebind.test":
            return real(host, port, *args, **kwargs)
        answer = "127.0.0.1" if not lookups else "127.0.0.2"
        lookups.append(answer)
        return real(answer, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_dns_rebinding_gets_nowhere_sync(
    backend: RunningServer, listener: RawServer, rebinding_dns: list[str]
) -> None:
    """A name is resolved once per connection and the socket goes to the
    address that was checked; when the name moves to a refused address,
    the next connection is refused and that address receives nothing."""
    target = f"http://rebind.test:{listener.port}/"

    with raw_server(silent, host="127.0.0.2", port=listener.port) as aimed:
        with Offloader(policy=LOOPBACK_ONLY) as first:
            response = offload_sync(first, backend, target)
        with (
            Offloader(policy=LOOPBACK_ONLY) as second,
            pytest.raises(DestinationRefused),
        ):
            offload_sync(second, backend, target)

    assert response.text == "ok"
    assert rebinding_dns == ["127.0.0.1", "127.0.0.2"]
    assert listener.accepted == 1
    assert aimed.accepted == 0


@pytest.mark.anyio
async def test_dns_rebinding_gets_nowhere_async(
    backend: RunningServer, listener: RawServer, rebinding_dns: list[str]
) -> None:
    """The async path resolves once and pins the checked address too."""
    target = f"http://rebind.test:{listener.port}/"

    with raw_server(silent, host="127.0.0.2", port=listener.port) as aimed:
        async with Offloader(policy=LOOPBACK_ONLY) as first:
            response = await offload_async(first, backend, target)
        async with Offloader(policy=LOOPBACK_ONLY) as second:
            with pytest.raises(DestinationRefused):
                await offload_async(second, backend, target)

    assert response.text == "ok"
    assert rebinding_dns == ["127.0.0.1", "127.0.0.2"]
    assert listener.accepted == 1
    assert aimed.accepted == 0


def test_a_refused_port_or_host_sends_nothing(
    backend: RunningServer, listener: RawServer
) -> None:
    """Name and port rules refuse before connecting as well."""
    by_port = DestinationPolicy(ports=[1])
    by_host = DestinationPolicy(hosts=["offload.internal"])

    for policy in (by_port, by_host):
        with (
            Offloader(policy=policy) as offloader,
            pytest.raises(DestinationRefused),
        ):
            offload_sync(offloader, backend, listener.url)

    assert listener.accepted == 0


def test_a_user_transport_is_not_guarded(
    backend: RunningServer, listener: RawServer
) -> None:
    """Address rules guard the offloader's own transports only: a
    transport passed in is the caller's to guard (documented)."""
    transport = httpx.HTTPTransport()

    with Offloader(policy=NO_PRIVATE, transport=transport) as offloader:
        response = offload_sync(
            offloader, backend, f"http://localhost:{listener.port}/"
        )
    transport.close()

    assert response.text == "ok"
    assert listener.accepted == 1


def test_the_proxy_applies_the_address_block(
    backend: RunningServer, listener: RawServer
) -> None:
    """Served by uvicorn, an OffloadProxy whose offloader blocks private
    addresses answers 502 to a directive aimed at loopback, in any
    spelling, and the listener there receives nothing."""
    app = OffloadProxy(backend.url, offloader=Offloader(policy=NO_PRIVATE))
    answers = []

    with serve(app, lifespan="on") as proxy, httpx.Client() as client:
        for url in spellings(listener.port):
            response = client.get(proxy.url, headers={"X-Target": url})
            answers.append((response.status_code, response.text))

    assert set(answers) == {(502, "Bad Gateway\n")}
    assert listener.accepted == 0
