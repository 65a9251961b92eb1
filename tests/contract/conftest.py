"""The ``backend`` fixture: the same behaviour suite on fakeredis and on a real
redis-server (see ``l2_url`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.backends import Backend


@pytest.fixture
async def backend(l2_url: str) -> AsyncIterator[Backend]:
    b = Backend(l2_url)
    try:
        yield b
    finally:
        await b.close()
