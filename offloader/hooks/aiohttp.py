"""The aiohttp engine: an httpx async transport over aiohttp's client.

`AiohttpTransport` is what `offloader serve` runs on by default. Give it
to your own proxy loop or `Offloader` where many connections are held at
once: httpx's own async pool looks at every connection it holds on each
request, aiohttp's does not (see the performance page of the docs).
Requests and responses stay httpx's, so the rest of offloader works
unchanged::

    transport = AiohttpTransport(limits=limits, policy=policy)
    offloader = Offloader(policy=policy, async_transport=transport)
    ...
    await offloader.aclose()
    await transport.aclose()  # an offloader closes only what it made

Needs the ``aiohttp`` (or ``server``) extra: ``pip install
"offloader[aiohttp]"``. Importing this module imports aiohttp;
``import offloader`` does not.
"""

from .._aiohttp_transport import AiohttpTransport

__all__ = ["AiohttpTransport"]
