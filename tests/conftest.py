from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """The async tests run on asyncio, as the proxy does."""
    return "asyncio"
