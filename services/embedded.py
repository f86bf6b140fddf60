"""Running the five services together: the embedded stack and the shared start-up steps.

``prepare`` is what both run modes do before serving: migrate each service's database and declare
every consumer's queue on the bus (so no event published at start-up is dropped because its
consumer has not subscribed yet). ``embedded_stack`` then runs all five apps' lifespans in this
process on one shared bus; the CLI serves them with uvicorn, tests call them in-process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI

from services import app_module, settings_for
from shared import migrate
from shared.bus import EventBus, create_bus
from shared.db import create_engine
from shared.peers import connect_in_process
from shared.service import queue_name
from shared.settings import SERVICES, PlatformSettings


async def migrate_service(name: str, settings) -> None:
    spec = app_module(name).SPEC
    engine = create_engine(settings.effective_database_url, schema=settings.db_schema)
    try:
        await migrate.upgrade(engine, name, spec.migrations, settings.db_schema)
    finally:
        await engine.dispose()


async def declare_topology(bus: EventBus, settings_by_service: dict) -> None:
    for name, settings in settings_by_service.items():
        for consumer in app_module(name).SPEC.consumers:
            await bus.declare(queue_name(settings, consumer.name), consumer.patterns)


def make_bus(platform: PlatformSettings, service: str = "sipas") -> EventBus:
    return create_bus(
        platform.bus_url,
        exchange=platform.exchange,
        prefetch=platform.consumer_prefetch,
        max_attempts=platform.consumer_max_attempts,
        retry_base_seconds=platform.consumer_retry_base_seconds,
        service=service,
    )


@dataclass
class Stack:
    apps: dict[str, FastAPI]
    bus: EventBus
    settings: dict


@contextlib.asynccontextmanager
async def embedded_stack(platform: PlatformSettings | None = None, services=SERVICES) -> AsyncIterator[Stack]:
    """All services in this process on one bus, their lifespans entered (databases migrated,
    consumers subscribed, relays running)."""
    platform = platform or PlatformSettings()
    settings = {name: settings_for(name, platform=platform) for name in services}
    for name in services:
        await migrate_service(name, settings[name])
    bus = make_bus(platform)
    await bus.start()
    try:
        await declare_topology(bus, settings)
        apps = {name: app_module(name).create_app(settings[name], bus=bus) for name in services}
        async with contextlib.AsyncExitStack() as stack:
            for app in apps.values():
                await stack.enter_async_context(app.router.lifespan_context(app))
            connect_in_process(apps, platform)
            try:
                yield Stack(apps, bus, settings)
            finally:
                # Let consumers finish what is queued before the apps close their databases.
                drain = getattr(bus, "drain", None)
                if drain is not None:
                    await drain()
    finally:
        await bus.close()
