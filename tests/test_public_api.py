"""The public surface: a curated, sorted ``__all__`` and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

import offloader
import offloader.hooks.aiohttp
import offloader.hooks.httpx


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then the
    # rest, each alphabetical.
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize(
    "module",
    [offloader, offloader.hooks.httpx, offloader.hooks.aiohttp],
    ids=lambda m: m.__name__,
)
def test_all_is_sorted_and_importable(module: types.ModuleType) -> None:
    """`__all__` is sorted, has no duplicates, and every name in it is
    importable from the module."""
    exported = list(module.__all__)

    assert exported == sorted(exported, key=_isort_key)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert getattr(module, name) is not None, name


def test_every_public_name_is_exported() -> None:
    """Every public object defined in `offloader` is in `__all__`, and
    nothing in it comes from a private module by accident."""
    public = {
        name
        for name, value in vars(offloader).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert public == set(offloader.__all__)


def test_contract_names_are_public() -> None:
    """The names the issue promises to users are all there."""
    promised = {
        "OffloadDirective",
        "parse_directive",
        "modify_response",
        "amodify_response",
        "Offloader",
        "OffloadError",
        "InvalidDirective",
        "OffloadRequestFailed",
        "OffloadTimeout",
        "DirectiveParser",
        "OffloadHeaderParser",
        "ParserChain",
        "XAccelRedirectParser",
    }
    hooks = {
        "response_hook",
        "async_response_hook",
        "hooks",
        "OffloadTransport",
        "AsyncOffloadTransport",
    }

    assert promised <= set(offloader.__all__)
    assert hooks <= set(offloader.hooks.httpx.__all__)


#: Packages that only extras, tests or benchmarks may bring in.
FORBIDDEN = [
    "uvicorn",
    "starlette",
    "aiohttp",
    "multidict",
    "prometheus_client",
    "hypothesis",
    "psutil",
    "uvloop",
    "httptools",
    "pytest",
]


@pytest.mark.parametrize("module", ["offloader", "offloader.hooks.httpx"])
def test_import_brings_in_only_httpx_and_attrs(module: str) -> None:
    """Importing the core or the httpx adapters imports nothing beyond
    httpx, attrs and their own dependencies."""
    code = (
        f"import sys, json, {module}; "
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    loaded = set(json.loads(result.stdout))
    assert {"httpx", "attrs"} <= loaded
    assert not loaded & set(FORBIDDEN)


def test_version_and_typed_marker() -> None:
    """The package has a version and ships py.typed."""
    from importlib import resources

    assert offloader.__version__
    assert resources.files("offloader").joinpath("py.typed").is_file()
