"""What every bus implementation provides."""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.events import Envelope

Handler = Callable[[Envelope], Awaitable[None]]
BatchHandler = Callable[[list[Envelope]], Awaitable[None]]
log = logging.getLogger("sipas.bus")


def wire(event: Envelope | dict[str, Any]) -> dict[str, Any]:
    """An envelope in its wire form: the JSON-ready dict (``model_dump(mode="json")``) that the
    outbox stores and the relay publishes as it is. Buses take either form."""
    return event if isinstance(event, dict) else event.model_dump(mode="json")


@dataclass
class Subscription:
    """A durable consumer: one queue bound to topic patterns, handled by one function."""

    queue: str
    patterns: list[str]
    handler: Handler
    service: str = ""
    dead_letters: list[dict] = field(default_factory=list)
    # Optional: the same effect for several events at once, all or nothing (one transaction for
    # the lot). The bus hands it what has queued up; if it fails, the events go one by one
    # through ``handler``, so one bad event is retried and dead-lettered alone.
    batch_handler: BatchHandler | None = None


class EventBus(abc.ABC):
    max_attempts: int
    retry_base_seconds: float

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and declare the exchange."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop consuming (letting in-flight handlers finish) and disconnect."""

    async def publish(self, event: Envelope | dict[str, Any]) -> None:
        """Return only once the broker has taken the event (publisher confirm on RabbitMQ);
        raise if it has not, so the outbox keeps the row and tries again."""
        _, error = await self.publish_many([event])
        if error is not None:
            raise error

    @abc.abstractmethod
    async def publish_many(self, events: Sequence[Envelope | dict[str, Any]]) -> tuple[int, Exception | None]:
        """Publish in order; return how many leading events the broker took and the error that
        stopped the rest (None if all went). The outbox marks only that prefix sent, so an event
        is never marked before one staged earlier.

        The relay hands envelopes in their wire form (``wire``), as staged: a bus sends them on
        without building a model of each, and the consumer validates what it receives."""

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

    async def handle_batch(self, sub: Subscription, events: list[Envelope]) -> list[bool]:
        """Hand several queued events to the subscription; per event: handled, or dead-letter it.

        One transaction for the lot is what makes a backlog cheap (a commit per event was most
        of a consumer's time). A failed batch costs one extra attempt: its events then go one by
        one with the usual retries, so a poison event cannot hold the others back."""
        if sub.batch_handler is not None and len(events) > 1:
            try:
                await sub.batch_handler(events)
                return [True] * len(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("a batch of %d events on %s failed (%s); handling them one by one", len(events), sub.queue, exc)
        return [await self.handle_with_retries(sub, event) for event in events]
