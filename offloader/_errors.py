"""The exceptions offloader raises.

Every error says whose fault it is and which status a proxy should answer
with::

    OffloadError                  (status_code 502)
    ├── InvalidDirective          the backend sent a directive we refuse
    │   └── DestinationRefused    its destination is outside the policy
    ├── OffloadRequestFailed      the offload server could not be reached,
    │   │                         or broke the exchange
    │   ├── BodyTooLarge          a forwarded body passed the size limit
    │   └── OffloadCancelled      the caller gave up (a client that left)
    ├── OffloadTimeout            the offload ran past its deadline (504)
    └── OffloadCapacityExceeded   too many offloads at once (503)

`InvalidDirective` is also a `ValueError`, so code that validates a
directive by hand can catch the usual type.
"""

from __future__ import annotations

__all__ = [
    "BodyTooLarge",
    "DestinationRefused",
    "InvalidDirective",
    "OffloadCancelled",
    "OffloadCapacityExceeded",
    "OffloadError",
    "OffloadRequestFailed",
    "OffloadTimeout",
]


class OffloadError(Exception):
    """Base class of every error raised while offloading a response.

    Attributes:
        status_code: The HTTP status a proxy should answer its client
            with. The message is meant for logs: it may name internal
            URLs and headers, so never send it to a client.
    """

    status_code: int = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidDirective(OffloadError, ValueError):
    """The backend's offload headers do not form a valid directive.

    This is the backend's fault, so a proxy answers 502 Bad Gateway.
    """


class DestinationRefused(InvalidDirective):
    """The directive points at a destination the policy does not allow.

    Raised before any byte is sent to that destination.
    """


class OffloadRequestFailed(OffloadError):
    """The offload request could not be completed.

    The offload server refused the connection, reset it, or sent a
    truncated or malformed response. A proxy answers 502.
    """


class BodyTooLarge(OffloadRequestFailed):
    """The backend body being forwarded passed the configured size limit."""


class OffloadCancelled(OffloadRequestFailed):
    """The offload was cancelled by its caller, as the ready proxy does
    when its client disconnects.

    Nobody is left to answer; it is told apart from a failure of the
    offload server in logs, events and metrics. It subclasses
    `OffloadRequestFailed`, so that code catching failed offloads still
    catches it.
    """


class OffloadTimeout(OffloadError):
    """The offload did not finish before its deadline: 504."""

    status_code = 504


class OffloadCapacityExceeded(OffloadError):
    """The offloader already holds its maximum of concurrent offloads.

    A proxy answers 503 Service Unavailable with a ``Retry-After``
    header.
    """

    status_code = 503
