"""offloader: let a backend hand slow HTTP calls to the proxy in front of it.

A backend answers at once with ``Offload-*`` headers describing a request;
the offloader drops the backend's response, makes that request itself and
returns the offload server's answer in its place.
"""

from ._directive import OffloadDirective
from ._errors import (
    BodyTooLarge,
    DestinationRefused,
    InvalidDirective,
    OffloadCancelled,
    OffloadCapacityExceeded,
    OffloadError,
    OffloadRequestFailed,
    OffloadTimeout,
)
from ._events import OffloadEvent, OffloadObserver
from ._headers import HeadersInput
from ._offloader import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    Offloader,
    amodify_response,
    default_offloader,
    modify_response,
)
from ._parsers import (
    DirectiveParser,
    OffloadHeaderParser,
    ParserChain,
    XAccelRedirectParser,
    parse_directive,
)
from ._policy import DestinationPolicy

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "BodyTooLarge",
    "DestinationPolicy",
    "DestinationRefused",
    "DirectiveParser",
    "HeadersInput",
    "InvalidDirective",
    "OffloadCancelled",
    "OffloadCapacityExceeded",
    "OffloadDirective",
    "OffloadError",
    "OffloadEvent",
    "OffloadHeaderParser",
    "OffloadObserver",
    "OffloadRequestFailed",
    "OffloadTimeout",
    "Offloader",
    "ParserChain",
    "XAccelRedirectParser",
    "amodify_response",
    "default_offloader",
    "modify_response",
    "parse_directive",
]
