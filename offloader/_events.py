"""Events an `Offloader` reports to its observers, for metrics or tracing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

import attrs

from ._errors import OffloadError

__all__ = ["OffloadEvent", "OffloadObserver"]


@attrs.frozen
class OffloadEvent:
    """One moment in the life of an offload.

    Attributes:
        kind: ``"start"`` when the offload request is about to be sent,
            ``"finish"`` when its response body was relayed to the end,
            ``"error"`` when it failed at any point after its start.
            ``"refuse"`` when the offload was refused before it started
            (an invalid directive, the ``max_offloads`` cap): no
            ``"start"`` came before it, and ``error`` says why.
        method: The offload request's method (empty for a directive
            that did not parse).
        url: The offload request's URL (empty for a directive that did
            not parse). It may be internal: keep it out of anything a
            client sees.
        status_code: The offload server's status, once known.
        duration: Seconds since the offload started.
        bytes_received: Body bytes received from the offload server so
            far.
        error: The error, for ``"error"`` events.
    """

    kind: Literal["start", "finish", "error", "refuse"]
    method: str
    url: str
    status_code: int | None = None
    duration: float = 0.0
    bytes_received: int = 0
    error: OffloadError | None = None


#: An observer is any callable taking an `OffloadEvent`. It runs inline on
#: the request path, so it must be quick and must not block; an exception
#: it raises is logged and otherwise ignored.
OffloadObserver: TypeAlias = Callable[[OffloadEvent], None]
