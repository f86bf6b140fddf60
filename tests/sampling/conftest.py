"""One sampling service per test module, not per test: starting a stack (migrations, broker
topology) was most of this folder's run time on PostgreSQL + RabbitMQ.

Only sampling runs: these tests drive its HTTP API and publish the events it consumes
themselves; the other services' reactions to its events are tested in their own folders and in
tests/e2e. Tests in a module share the database, so each uses its own wave (its own wave code)
and reads events, audit entries and metrics of that wave only (``helpers.sampling_events`` takes
the wave id): no test can pass on another's data.
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from services.embedded import embedded_stack
from tests.conftest import Clients, all_queues, drop_backend
from tests.conftest import platform as _platform_settings


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    return _platform_settings.__wrapped__(tmp_path_factory.mktemp("sampling"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(platform):
    try:
        async with embedded_stack(platform, services=("sampling",)) as s:
            yield s
    finally:
        # Only sampling's queues exist (deleting the others' would cost a failed call each).
        await drop_backend(platform, [q for q in all_queues(platform) if q.startswith(f"{platform.queue_prefix}.sampling.")])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clients(stack):
    c = Clients(stack)
    try:
        yield c
    finally:
        await c.aclose()
