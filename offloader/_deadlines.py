"""Deadlines of offloads: for sync network I/O, and async cancel scopes.

A sync read cannot be cancelled from outside, so the offloader announces
the current offload's deadline with `deadline_scope`, and the streams of
its own sync transports (`offloader._netguard`) cap every read and write
by what is left of it. Async steps are cut with `cancel_scope`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anyio

__all__ = ["bounded", "cancel_scope", "deadline_scope"]

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "offloader_deadline", default=None
)


@contextlib.contextmanager
def deadline_scope(deadline: float) -> Iterator[None]:
    """Bound the sync network I/O inside the block by *deadline*, a
    `time.monotonic` instant."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def bounded(timeout: float | None) -> float | None:
    """Return *timeout*, capped by what is left of the current deadline."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    # Never zero: a zero timeout makes a socket non-blocking, which
    # reports "would block" instead of a timeout.
    remaining = max(deadline - time.monotonic(), 0.001)
    return remaining if timeout is None else min(timeout, remaining)


#: The cancel scope class of anyio's asyncio backend, found on first use.
_scope_class: Callable[..., anyio.CancelScope] | None = None


def cancel_scope(
    deadline: float | None = None, *, shield: bool = False
) -> anyio.CancelScope:
    """An anyio cancel scope, cancelling at *deadline* (a `time.monotonic`
    instant) if one is given.

    Offloads are cancelled through anyio (a dependency of httpx), not
    with `asyncio.timeout` or `Task.cancel`: httpcore and anyio shield
    their clean-up, and the opening of a connection, from anyio's
    cancellation only, and a bare `Task.cancel` landing there leaks the
    socket. After the block, ``cancelled_caught`` tells whether the
    deadline cut it.

    `anyio.CancelScope` looks up the running async library on each call;
    the async paths of offloader run on asyncio only (pools are kept per
    asyncio loop), so the backend's scope class is looked up once.
    """
    global _scope_class  # noqa: PLW0603 - a lazily found constant
    # Imported here: `import offloader` does not load anyio.
    import anyio

    loop = asyncio.get_running_loop()
    if _scope_class is None:
        _scope_class = type(anyio.CancelScope())
    if deadline is None:
        return _scope_class(shield=shield)
    return _scope_class(
        deadline=loop.time() + (deadline - time.monotonic()), shield=shield
    )
