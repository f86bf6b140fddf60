"""One stack per test module for the survey tests.

Starting the five services (migrations included) costs seconds; the survey tests need a fresh
wave, not a fresh platform, so each module shares one stack and every test makes its own wave
(and unique batch ids). Same backends and clean-up as ``tests/conftest.py``'s ``stack``.
Modules using it set ``pytestmark = pytest.mark.asyncio(loop_scope="module")``.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from services.embedded import embedded_stack
from tests.conftest import Clients, all_queues, drop_backend, platform as _platform_fixture


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    return _platform_fixture.__wrapped__(tmp_path_factory.mktemp("survey"))


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
