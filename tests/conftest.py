from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """The async tests run on asyncio, as the proxy does."""
    return "asyncio"


@pytest.fixture(scope="module", params=("httpx", "aiohttp"))
def engine(request: pytest.FixtureRequest) -> str:
    """The engine the proxy under test runs on; each proxy test runs on
    both."""
    name: str = request.param
    return name
