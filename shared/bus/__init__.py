"""The event bus: one interface, an in-process implementation and a RabbitMQ one.

Both give the same guarantees to a handler, so services are written once:
- at-least-once delivery (handlers must be idempotent: ``shared.outbox.idempotent_handler`` records each event in an inbox);
- a failing handler is retried with exponential backoff, up to ``max_attempts``;
- then the message goes to the dead-letter queue, kept for inspection, never retried forever;
- a message that is not a valid envelope is dead-lettered at once (retrying cannot fix it).
"""

from __future__ import annotations

from shared.bus.base import EventBus, Handler, Subscription, wire
from shared.bus.memory import InMemoryBus

__all__ = ["EventBus", "Handler", "InMemoryBus", "Subscription", "create_bus", "wire"]


def create_bus(
    url: str,
    *,
    exchange: str = "sipas.events",
    prefetch: int = 32,
    max_attempts: int = 5,
    retry_base_seconds: float = 0.2,
    service: str = "sipas",
) -> EventBus:
    if url.startswith("memory"):
        return InMemoryBus(max_attempts=max_attempts, retry_base_seconds=retry_base_seconds, batch_size=prefetch)
    if url.startswith("amqp"):
        from shared.bus.rabbitmq import RabbitMQBus

        return RabbitMQBus(
            url,
            exchange=exchange,
            prefetch=prefetch,
            max_attempts=max_attempts,
            retry_base_seconds=retry_base_seconds,
            connection_name=service,
        )
    raise ValueError(f"unknown bus URL scheme: {url.split(':', 1)[0]}")
