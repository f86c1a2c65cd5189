"""An atheris harness for the directive parser (optional, not run in CI).

Coverage-guided fuzzing finds inputs Hypothesis's strategies would not
think of. Run it by hand, with atheris installed (it needs a clang-built
CPython on some platforms)::

    pip install atheris
    python fuzz/atheris_directive.py -max_total_time=300

The input bytes are cut into header lines at ``\\n`` and each line into a
name and a value at the first ``:``, as a WSGI or ASGI server would hand
them over. The only exception allowed out of the parser is
`InvalidDirective`; a directive it returns must be one that h11 would put
on the wire.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import h11
    import httpx

    from offloader import InvalidDirective, parse_directive


def headers_of(data: bytes) -> list[tuple[bytes, bytes]]:
    pairs = []
    for line in data.split(b"\n"):
        name, _, value = line.partition(b":")
        pairs.append((name.strip(), value.strip()))
    # Ask for an offload most of the time, so the fuzzer explores the
    # parser rather than the one look-up of the pass-through path.
    if data[:1] != b"!":
        pairs.insert(0, (b"Offload-Requested", b""))
    return pairs


def test_one_input(data: bytes) -> None:
    try:
        directive = parse_directive(headers_of(data))
    except InvalidDirective:
        return
    if directive is None:
        return
    url = httpx.URL(directive.url)
    h11.Request(
        method=directive.method,
        target=url.raw_path,
        headers=[("Host", url.netloc.decode("ascii")), *directive.headers],
    )


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
