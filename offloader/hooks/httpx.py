"""Adapters for httpx clients: response event hooks and transports.

Two ways to put offloading into an `httpx.Client` or `httpx.AsyncClient`:

- **Event hooks** (`response_hook`, `async_response_hook`, or `hooks`
  for a configured `Offloader`). httpx calls a response hook before the
  body is read and ignores what it returns, so the hook changes the
  response *in place*: its status, headers, stream and extensions become
  the offload server's. The client's other settings still apply to the
  result, ``follow_redirects`` included.
- **Transports** (`OffloadTransport`, `AsyncOffloadTransport`) wrap
  another transport and return the offload server's response as a new
  response object. They suit code that builds its own client stack, and
  proxies that call transports directly.

Either way the offload request itself goes through the offloader's own
pool, not through the client's hooks or transport again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs
import httpx

from .._offloader import Offloader, default_offloader

__all__ = [
    "AsyncOffloadTransport",
    "OffloadHooks",
    "OffloadTransport",
    "async_response_hook",
    "hooks",
    "response_hook",
]


def _adopt(target: httpx.Response, result: httpx.Response) -> None:
    """Make *target* carry *result*'s status, headers and body."""
    # The offloader closed *target* as the backend response; it lives on
    # carrying the offload response, open.
    # Limitation: httpx stores a response's cookies in the client's jar
    # before the hooks run, so a client with these hooks keeps the
    # backend's Set-Cookie (even when not kept) and not the offload
    # server's. The transports do not have this problem.
    target.is_closed = False
    target.status_code = result.status_code
    target.headers = result.headers
    target.stream = result.stream
    target.extensions = result.extensions


def response_hook(response: httpx.Response) -> None:
    """Offload, in place, with the default offloader (for `httpx.Client`).

    Use as ``httpx.Client(event_hooks={"response": [response_hook]})``.
    The errors of `Offloader.modify_response` propagate from the client
    call.
    """
    result = default_offloader().modify_response(response)
    if result is not response:
        _adopt(response, result)


async def async_response_hook(response: httpx.Response) -> None:
    """The `httpx.AsyncClient` twin of `response_hook`."""
    result = await default_offloader().amodify_response(response)
    if result is not response:
        _adopt(response, result)


@attrs.frozen
class OffloadHooks:
    """A sync and an async response hook bound to one `Offloader`.

    Attributes:
        response_hook: For ``httpx.Client(event_hooks=...)``.
        async_response_hook: For ``httpx.AsyncClient(event_hooks=...)``.
    """

    response_hook: Callable[[httpx.Response], None]
    async_response_hook: Callable[[httpx.Response], Awaitable[None]]


def hooks(offloader: Offloader) -> OffloadHooks:
    """Return response hooks that offload with *offloader*.

    Example::

        bound = hooks(Offloader(max_hops=2))
        client = httpx.Client(
            event_hooks={"response": [bound.response_hook]}
        )
    """

    def bound_response_hook(response: httpx.Response) -> None:
        result = offloader.modify_response(response)
        if result is not response:
            _adopt(response, result)

    async def bound_async_response_hook(response: httpx.Response) -> None:
        result = await offloader.amodify_response(response)
        if result is not response:
            _adopt(response, result)

    return OffloadHooks(bound_response_hook, bound_async_response_hook)


class OffloadTransport(httpx.BaseTransport):
    """A sync transport that offloads the responses of another one.

    Args:
        transport: The transport that reaches the backend; by default
            a new `httpx.HTTPTransport`.
        offloader: The offloader to apply; by default the module's.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        offloader: Offloader | None = None,
    ) -> None:
        self.transport = transport or httpx.HTTPTransport()
        self.offloader = offloader or default_offloader()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.transport.handle_request(request)
        return self.offloader.modify_response(response)

    def close(self) -> None:
        """Close the wrapped transport (not the offloader's pool)."""
        self.transport.close()


class AsyncOffloadTransport(httpx.AsyncBaseTransport):
    """The async twin of `OffloadTransport`."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        offloader: Offloader | None = None,
    ) -> None:
        self.transport = transport or httpx.AsyncHTTPTransport()
        self.offloader = offloader or default_offloader()

    async def handle_async_request(
        self, request: httpx.Request
    ) -> httpx.Response:
        response = await self.transport.handle_async_request(request)
        return await self.offloader.amodify_response(response)

    async def aclose(self) -> None:
        """Close the wrapped transport (not the offloader's pool)."""
        await self.transport.aclose()
