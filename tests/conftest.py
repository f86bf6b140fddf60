"""One suite, two backends.

``SIPAS_TEST_BACKEND=embedded`` (default): SQLite files in a temporary folder and the in-process
bus. ``SIPAS_TEST_BACKEND=services``: PostgreSQL and RabbitMQ (``SIPAS_TEST_DATABASE_URL``,
``SIPAS_TEST_BUS_URL``, localhost defaults). Every test gets its own SQLite folder or its own
PostgreSQL schemas and its own exchange and queues, dropped afterwards, so tests never see each
other's data or events.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.embedded import Stack, embedded_stack
from shared.auth import IssuedKey, Role, new_key, store_key
from shared.settings import SERVICES, PlatformSettings

BACKEND = os.environ.get("SIPAS_TEST_BACKEND", "embedded")
DATABASE_URL = os.environ.get("SIPAS_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BUS_URL = os.environ.get("SIPAS_TEST_BUS_URL", "amqp://guest:guest@127.0.0.1:5672/")
ON_SERVICES = BACKEND == "services"


def pytest_report_header(config) -> str:
    if ON_SERVICES:
        return f"SIPAS backend: services (PostgreSQL {DATABASE_URL.split('@')[-1]}, RabbitMQ {BUS_URL.split('@')[-1]})"
    return "SIPAS backend: embedded (SQLite + in-process bus)"


def pytest_collection_modifyitems(config, items) -> None:
    if ON_SERVICES:
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL + RabbitMQ (runs in the services tier)")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def platform(tmp_path) -> PlatformSettings:
    uid = uuid.uuid4().hex[:10]
    common = dict(
        environment="test",
        data_dir=tmp_path / "data",
        outbox_poll_seconds=0.05,
        consumer_max_attempts=3,
        consumer_retry_base_seconds=0.01,
        log_json=False,
    )
    if ON_SERVICES:
        return PlatformSettings(
            **common,
            database_url=DATABASE_URL,
            bus_url=BUS_URL,
            exchange=f"sipas.test.{uid}",
            queue_prefix=f"test.{uid}",
            schema_prefix=f"t{uid}_",
        )
    return PlatformSettings(**common)


async def drop_backend(platform: PlatformSettings, queues: list[str] = ()) -> None:
    """Remove what a test created on PostgreSQL and RabbitMQ."""
    if not ON_SERVICES:
        return
    from sqlalchemy import text

    from shared.db import create_engine

    engine = create_engine(DATABASE_URL)
    try:
        async with engine.begin() as conn:
            for name in SERVICES:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{platform.schema_prefix}{name}" CASCADE'))
    finally:
        await engine.dispose()
    from shared.bus.rabbitmq import RabbitMQBus

    bus = RabbitMQBus(BUS_URL, exchange=platform.exchange)
    await bus.start()
    try:
        await bus.delete_queues(list(queues))
    finally:
        await bus.close()


def all_queues(platform: PlatformSettings) -> list[str]:
    from services import app_module

    return [
        f"{platform.queue_prefix}.{name}.{c.name}" for name in SERVICES for c in app_module(name).SPEC.consumers
    ]


@pytest.fixture
async def stack(platform) -> AsyncIterator[Stack]:
    """All five services in this process, on the test's backend."""
    try:
        async with embedded_stack(platform) as s:
            yield s
    finally:
        await drop_backend(platform, all_queues(platform))


class Clients:
    """An httpx client per service, talking to the in-process apps, plus key helpers."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._clients = {
            name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}")
            for name, app in stack.apps.items()
        }

    def __getattr__(self, name: str) -> httpx.AsyncClient:
        try:
            return self._clients[name]
        except KeyError:
            raise AttributeError(name) from None

    async def key(self, role: Role | str, province: str | None = None, label: str | None = None) -> dict[str, str]:
        """Issue a key into every service's database; return the header to send it in."""
        role = Role(role)
        issued: IssuedKey = new_key(role, label or f"test {role.value} {province or ''}".strip(), province)
        for app in self.stack.apps.values():
            async with app.state.sessions() as session, session.begin():
                await store_key(session, app.state.tables["api_key"], issued)
        return {"X-API-Key": issued.key}

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


@pytest.fixture
async def clients(stack) -> AsyncIterator[Clients]:
    c = Clients(stack)
    try:
        yield c
    finally:
        await c.aclose()


async def eventually(check, timeout: float = 10.0, interval: float = 0.05):
    """Retry ``check`` (sync or async, returning truthy or raising AssertionError) until it passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result is None or result:
                return result
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
