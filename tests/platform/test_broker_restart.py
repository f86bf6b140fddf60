"""Fault test: the broker restarts under a running service (services tier).

A throwaway RabbitMQ node (``tests.support.rabbit_node``, never the main node on 5672) is
stopped and started again under the sampling service and a consumer, both on one
``RabbitMQBus``. While the broker is down the outbox relay's publish fails and the row stays
(attempts counted); once it is back, ``connect_robust`` restores the consumer, the relay
publishes the row, and durable queues kept their persistent messages across the restart.

If no RabbitMQ node can be started at all, this test fails: it does not skip.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from services import settings_for
from services.embedded import migrate_service
from services.sampling import service as sampling_service
from services.sampling.app import create_app
from services.sampling.schemas import WaveCreate
from shared.auth import Principal, Role
from shared.bus import Subscription
from shared.bus.rabbitmq import RabbitMQBus
from shared.db import create_engine, session_factory, transaction
from shared.events import Envelope
from shared.outbox import row_envelopes
from sqlalchemy import select
from tests.conftest import drop_backend, eventually
from tests.support.rabbit_node import RabbitNode

pytestmark = [pytest.mark.services, pytest.mark.slow]

MINISTRY = Principal(key_id="test-key", role=Role.ministry, label="broker restart test")


@pytest.fixture
def rabbit_node():
    node = RabbitNode()
    try:
        yield node  # started by the test, so a failure to start fails the test
    finally:
        node.close()  # stops it (even if the test failed) and removes its folder


def wave_body(code: str) -> WaveCreate:
    return WaveCreate(code=code, name=f"Wave {code}", scope="national", year=2026, methodology_version="sipas-2017")


async def test_consumers_and_the_outbox_resume_after_a_broker_restart(rabbit_node, platform, caplog):
    caplog.set_level(logging.CRITICAL, logger="aiormq")  # reconnect noise while the node is down
    caplog.set_level(logging.CRITICAL, logger="aio_pika")
    await asyncio.to_thread(rabbit_node.start)

    platform = platform.model_copy(update={"bus_url": rabbit_node.url})
    settings = settings_for("sampling", platform=platform)
    await migrate_service("sampling", settings)
    engine = create_engine(settings.effective_database_url, schema=settings.db_schema)
    sessions = session_factory(engine)
    bus = RabbitMQBus(rabbit_node.url, exchange=platform.exchange, max_attempts=3, retry_base_seconds=0.01)
    try:
        await bus.start()
        got: list[Envelope] = []

        async def record(e: Envelope) -> None:
            got.append(e)

        consumer_q, parked_q = f"{platform.queue_prefix}.test.consumer", f"{platform.queue_prefix}.test.parked"
        await bus.subscribe(Subscription(consumer_q, ["sipas.sampling.#"], record, service="test"))
        await bus.declare(parked_q, ["sipas.sampling.#"])  # durable, nobody consumes it

        app = create_app(settings, bus=bus)
        async with app.router.lifespan_context(app):
            tables = app.state.tables
            outbox = tables["outbox"]

            async def create(code: str) -> None:
                async with transaction(app.state.sessions) as session:
                    await sampling_service.create_wave(session, tables, MINISTRY, wave_body(code))

            async def row(code: str) -> dict:
                async with sessions() as s:
                    rows = (await s.execute(select(outbox).order_by(outbox.c.seq))).mappings().all()
                return next(dict(r) for r in rows if row_envelopes(r["envelope"])[0]["data"]["code"] == code)

            def codes() -> list[str]:
                return [e.data["code"] for e in got]

            # Before: the relay publishes, the consumer handles.
            await create("BEFORE")
            await eventually(lambda: codes() == ["BEFORE"])
            await eventually(lambda: _equals(bus.queue_depth(parked_q), 1))

            # The broker goes down: not ready, and the relay keeps the row, counting attempts.
            await asyncio.to_thread(rabbit_node.stop)
            await eventually(lambda: _equals(bus.healthy(), False))
            await create("DURING")

            async def attempted() -> bool:
                r = await row("DURING")
                assert r["published_at"] is None and r["attempts"] >= 2, r
                return True

            await eventually(attempted)
            assert "closed" in (await row("DURING"))["last_error"].lower()

            # The broker is back (same port, same database): the connection, the consumer and
            # the relay recover on their own.
            await asyncio.to_thread(rabbit_node.start)
            await eventually(lambda: _equals(bus.healthy(), True), timeout=20)

            async def published() -> bool:
                assert (await row("DURING"))["published_at"] is not None
                return True

            await eventually(published, timeout=20)
            await eventually(lambda: codes() == ["BEFORE", "DURING"], timeout=20)

            await create("AFTER")
            await eventually(lambda: codes() == ["BEFORE", "DURING", "AFTER"])
            # The durable queue kept its persistent message across the restart and got the rest.
            await eventually(lambda: _equals(bus.queue_depth(parked_q), 3))
            await asyncio.sleep(0.3)
            assert codes() == ["BEFORE", "DURING", "AFTER"]  # nothing lost, nothing twice
            assert await bus.dead_letter_count(consumer_q) == 0
    finally:
        await bus.close()
        await engine.dispose()
        await drop_backend(platform)


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected


async def test_the_bus_closes_while_the_broker_is_down(rabbit_node, platform):
    """A service told to stop while RabbitMQ is down must stop: closing waited for a reconnection
    that never came (a consumer's cancel on the robust channel), so the process hung until killed."""
    from shared.bus import rabbitmq

    await asyncio.to_thread(rabbit_node.start)
    bus = RabbitMQBus(rabbit_node.url, exchange=platform.exchange, max_attempts=3, retry_base_seconds=0.01)
    await bus.start()

    async def ignore(e: Envelope) -> None:
        pass

    await bus.subscribe(Subscription(f"{platform.queue_prefix}.test.closing", ["sipas.sampling.#"], ignore, service="test"))
    await asyncio.to_thread(rabbit_node.stop)
    await eventually(lambda: _equals(bus.healthy(), False))
    await asyncio.wait_for(bus.close(), 3 * rabbitmq.CLOSE_TIMEOUT)
