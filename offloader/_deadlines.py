"""The deadline of the offload being served, for sync network I/O.

A sync read cannot be cancelled from outside, so the offloader announces
the current offload's deadline with `deadline_scope`, and the streams of
its own sync transports (`offloader._netguard`) cap every read and write
by what is left of it.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

__all__ = ["bounded", "deadline_scope"]

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
