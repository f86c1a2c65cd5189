"""Micro-benchmarks of the per-response cost of the core.

``modify_response`` on a response that asks for no offload should cost
about one header look-up; parsing a typical directive is the next cost
on the offload path. Run alone with ``python -m bench.micro``.
"""

from __future__ import annotations

import json
import timeit
from typing import Any

import httpx

import offloader

TYPICAL = [
    ("Content-Type", "application/json; charset=utf-8"),
    ("Content-Length", "0"),
    ("Date", "Thu, 03 Dec 2026 17:00:00 GMT"),
    ("Server", "puma"),
    ("Cache-Control", "no-store"),
    ("X-Request-Id", "5f0c9a1e-9a4b-4f3a-8f0e-2d5f7b1c9e21"),
    ("Set-Cookie", "session=abc; Path=/; HttpOnly"),
    ("Vary", "Accept-Encoding"),
]
DIRECTIVE = [
    *TYPICAL,
    ("Offload-Requested", "1"),
    ("Offload-Url", "https://api.example.com/v1/reports/42?format=json"),
    ("Offload-Method", "POST"),
    ("Offload-Forward-Body", "1"),
    ("Offload-X-Authorization", "Bearer abc.def.ghi"),
    ("Offload-X-Accept", "application/json"),
    ("Offload-Timeout", "20"),
]


def _per_call(stmt: Any, number: int, repeat: int = 5) -> float:
    """Best seconds per call of *stmt* over *repeat* rounds."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number


def run(quick: bool = False) -> dict[str, Any]:
    """Time the cases and return seconds per call and the ratios."""
    number = 20_000 if quick else 200_000
    plain = httpx.Response(200, headers=TYPICAL, content=b"{}")
    asked = httpx.Headers(DIRECTIVE)
    headers = plain.headers
    off = offloader.Offloader()
    parse = offloader.parse_directive

    lookup = _per_call(lambda: "offload-requested" in headers, number)
    modify = _per_call(lambda: off.modify_response(plain), number)
    module_modify = _per_call(lambda: offloader.modify_response(plain), number)
    parsing = _per_call(lambda: parse(asked), number // 10)
    parsing_pairs = _per_call(lambda: parse(DIRECTIVE), number // 10)
    return {
        "header_lookup_us": lookup * 1e6,
        "modify_response_no_header_us": modify * 1e6,
        "module_modify_response_no_header_us": module_modify * 1e6,
        "modify_vs_lookup": modify / lookup,
        "parse_directive_httpx_headers_us": parsing * 1e6,
        "parse_directive_pairs_us": parsing_pairs * 1e6,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
