"""One stack per test module (not per test): starting five services dominates the run time, and
these tests never share data (each builds its own wave with fresh ids and filters by it)."""

from __future__ import annotations

import pytest
import pytest_asyncio

from services.embedded import embedded_stack
from tests.conftest import Clients, all_queues, drop_backend, platform as _platform_settings


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    return _platform_settings.__wrapped__(tmp_path_factory.mktemp("verification"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(platform):
    try:
        async with embedded_stack(platform) as s:
            yield s
    finally:
        await drop_backend(platform, all_queues(platform))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clients(stack):
    c = Clients(stack)
    try:
        yield c
    finally:
        await c.aclose()
