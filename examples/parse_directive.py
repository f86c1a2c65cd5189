"""Parse a directive from headers, without any I/O.

`parse_directive` reads the ``Offload-*`` headers from any shape of
headers and returns an `OffloadDirective`, `None`, or raises
`InvalidDirective`. Run it with ``python examples/parse_directive.py``.
"""

from __future__ import annotations

from offloader import InvalidDirective, parse_directive


def main() -> None:
    # --8<-- [start:parse]
    directive = parse_directive(
        {
            "Offload-Requested": "",
            "Offload-Url": "http://reports.internal/r/42?f=pdf",
            "Offload-Method": "post",
            "Offload-X-Api-Key": "k",
        }
    )
    print(directive)

    # No Offload-Requested: no directive. Any header shape will do.
    print(parse_directive([(b"Content-Type", b"text/html")]))

    # A directive that breaks the contract is the backend's fault (502).
    try:
        parse_directive({"Offload-Requested": "", "Offload-Method": "GET"})
    except InvalidDirective as exc:
        print(f"{type(exc).__name__} ({exc.status_code}): {exc}")
    # --8<-- [end:parse]


if __name__ == "__main__":
    main()
