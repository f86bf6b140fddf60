"""What every bus implementation provides."""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.events import Envelope

Handler = Callable[[Envelope], Awaitable[None]]
log = logging.getLogger("sipas.bus")


@dataclass
class Subscription:
    """A durable consumer: one queue bound to topic patterns, handled by one function."""

    queue: str
    patterns: list[str]
    handler: Handler
    service: str = ""
    dead_letters: list[dict] = field(default_factory=list)


class EventBus(abc.ABC):
    max_attempts: int
    retry_base_seconds: float

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and declare the exchange."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop consuming (letting in-flight handlers finish) and disconnect."""

    @abc.abstractmethod
    async def publish(self, event: Envelope) -> None:
        """Return only once the broker has taken the event (publisher confirm on RabbitMQ);
        raise if it has not, so the outbox keeps the row and tries again."""

    @abc.abstractmethod
    async def declare(self, queue: str, patterns: list[str]) -> None:
        """Declare a durable consumer queue and its bindings without consuming. Run for every
        consumer before any service publishes (``migrate`` does it), so an event published
        while its consumer is down or not yet started waits in the queue instead of being
        dropped as unroutable."""

    @abc.abstractmethod
    async def subscribe(self, subscription: Subscription) -> None:
        """Declare the durable queue with its bindings and start consuming."""

    @abc.abstractmethod
    async def healthy(self) -> bool:
        """For /readyz: can we publish right now?"""

    @abc.abstractmethod
    async def queue_depth(self, queue: str) -> int:
        """Messages waiting in a consumer queue (consumer lag)."""

    @abc.abstractmethod
    async def dead_letter_count(self, queue: str) -> int:
        """Messages parked in a consumer's dead-letter queue."""

    async def handle_with_retries(self, sub: Subscription, event: Envelope) -> bool:
        """Run the handler, retrying with exponential backoff. False means: dead-letter it."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                await sub.handler(event)
                return True
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "handler for %s failed on %s (attempt %d of %d)",
                    sub.queue,
                    event.type,
                    attempt,
                    self.max_attempts,
                    exc_info=attempt == self.max_attempts,
                )
                if attempt < self.max_attempts:
                    await asyncio.sleep(self.retry_base_seconds * 2 ** (attempt - 1))
        return False
