"""The RabbitMQ bus (aio-pika), for production.

- One durable topic exchange; the routing key is the event type.
- One durable queue per consumer, bound by topic patterns, with a dead-letter exchange and a
  ``<queue>.dlq`` queue: a message rejected without requeue (poison, or out of retries) is parked
  there for an operator, not lost and not retried forever.
- Publisher confirms: ``publish`` returns only once the broker has the message, so the outbox
  marks a row sent only when it really is.
- Manual acks after the handler's transaction committed, with a prefetch limit. Deliveries go
  into a local queue that one worker per consumer drains in batches (what has arrived, up to the
  prefetch), so a backlog costs one transaction per batch, not per event, and a queue's events
  are handled in the order they came.
- ``publish_many`` sends an outbox batch back to back and waits for the confirms together
  (aiormq writes publishes in call order under the channel lock); one publish-and-confirm round
  trip per event capped a relay at a few hundred events a second.
- ``connect_robust`` reconnects after a broker restart and re-declares the exchange, queues,
  bindings and consumers; a publish during the outage raises and the outbox retries it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared.bus.base import EventBus, Subscription, wire
from shared.events import Envelope
from shared.observability import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED

log = logging.getLogger("sipas.bus.rabbitmq")
# How long closing waits on each broker call (see RabbitMQBus.close).
CLOSE_TIMEOUT = 5.0


def _timestamp(value: Any) -> dt.datetime | None:
    """The AMQP timestamp property from the envelope's ``time`` (informative only: consumers
    read the envelope's own), None rather than a failed publish if it does not parse."""
    try:
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


class RabbitMQBus(EventBus):
    def __init__(
        self,
        url: str,
        *,
        exchange: str = "sipas.events",
        prefetch: int = 32,
        max_attempts: int = 5,
        retry_base_seconds: float = 0.2,
        connection_name: str = "sipas",
    ) -> None:
        self.url = url
        self.exchange_name = exchange
        self.prefetch = prefetch
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.connection_name = connection_name
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        self._workers: list[tuple[asyncio.Queue, asyncio.Task]] = []

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": self.connection_name}, reconnect_interval=1.0
        )
        self._publish_channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._publish_channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def close(self) -> None:
        """Stop consuming, let the workers finish, close the connection. Each broker call is
        bounded (``CLOSE_TIMEOUT``): with the broker down, a robust channel's call waits for a
        reconnection that may never come, and a service told to stop hung until it was killed."""
        for queue, tag in self._consumers:
            try:
                await asyncio.wait_for(queue.cancel(tag), CLOSE_TIMEOUT)
            except Exception:  # the channel may already be gone, or the broker with it
                pass
        # Let the workers finish what was delivered (unacked messages would come back anyway).
        for local, task in self._workers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(local.join(), timeout=30)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        self._consumers.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), CLOSE_TIMEOUT)
            self._connection = None

    async def publish_many(self, events: Sequence[Envelope | dict[str, Any]]) -> tuple[int, Exception | None]:
        if self._exchange is None:
            raise RuntimeError("bus is not started")
        exchange = self._exchange
        # Tasks start in order and take the channel lock in order: the broker gets them in order.
        sends = [asyncio.ensure_future(exchange.publish(self._message(e), routing_key=e["type"], timeout=10))
                 for e in map(wire, events)]
        results = await asyncio.gather(*sends, return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                return i, result if isinstance(result, Exception) else RuntimeError(str(result))
        return len(events), None

    @staticmethod
    def _message(event: dict[str, Any]) -> aio_pika.Message:
        return aio_pika.Message(
            body=orjson.dumps(event),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(event["id"]),
            type=event["type"],
            timestamp=_timestamp(event.get("time")),
            correlation_id=event.get("correlation_id"),
            app_id=event.get("source"),
        )

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        """Publish bytes that may not be a valid envelope (for poison-message tests)."""
        assert self._exchange is not None
        await self._exchange.publish(aio_pika.Message(body=body), routing_key=routing_key, timeout=10)

    def _dlx_name(self) -> str:
        return f"{self.exchange_name}.dlx"

    async def _declare(self, channel: aio_pika.abc.AbstractChannel, name: str, patterns: list[str]):
        exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        dlx = await channel.declare_exchange(self._dlx_name(), aio_pika.ExchangeType.DIRECT, durable=True)
        dlq = await channel.declare_queue(f"{name}.dlq", durable=True)
        await dlq.bind(dlx, routing_key=name)
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={"x-dead-letter-exchange": self._dlx_name(), "x-dead-letter-routing-key": name},
        )
        for pattern in patterns:
            await queue.bind(exchange, routing_key=pattern)
        return queue

    async def declare(self, queue: str, patterns: list[str]) -> None:
        assert self._connection is not None
        channel = await self._connection.channel()
        try:
            await self._declare(channel, queue, patterns)
        finally:
            await channel.close()

    async def subscribe(self, subscription: Subscription) -> None:
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self.prefetch)
        queue = await self._declare(channel, subscription.queue, subscription.patterns)
        local: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        worker = asyncio.create_task(self._work(subscription, local), name=f"consumer:{subscription.queue}")
        self._workers.append((local, worker))

        async def on_message(message: AbstractIncomingMessage) -> None:
            local.put_nowait(message)

        tag = await queue.consume(on_message, no_ack=False)
        self._consumers.append((queue, tag))

    async def _work(self, sub: Subscription, local: asyncio.Queue[AbstractIncomingMessage]) -> None:
        while True:
            taken = [await local.get()]
            while len(taken) < self.prefetch and not local.empty():
                taken.append(local.get_nowait())
            try:
                await self._handle(sub, taken)
            except Exception:  # never let one batch kill the worker
                log.exception("consumer %s crashed on a batch", sub.queue)
            finally:
                for _ in taken:
                    local.task_done()

    async def _handle(self, sub: Subscription, messages: list[AbstractIncomingMessage]) -> None:
        events: list[tuple[Envelope, AbstractIncomingMessage]] = []
        for message in messages:
            try:
                events.append((Envelope.model_validate_json(message.body), message))
            except ValueError:
                log.error("dead-lettering a message on %s: not a valid event envelope", sub.queue)
                await self._settle(message, ack=False)
                EVENTS_DEAD_LETTERED.labels(sub.service, sub.queue).inc()
                EVENTS_CONSUMED.labels(sub.service, sub.queue, "dead_lettered").inc()
        if not events:
            return
        outcomes = await self.handle_batch(sub, [event for event, _ in events])
        for (_, message), ok in zip(events, outcomes):
            await self._settle(message, ack=ok)
            if ok:
                EVENTS_CONSUMED.labels(sub.service, sub.queue, "ok").inc()
            else:
                EVENTS_DEAD_LETTERED.labels(sub.service, sub.queue).inc()
                EVENTS_CONSUMED.labels(sub.service, sub.queue, "dead_lettered").inc()

    @staticmethod
    async def _settle(message: AbstractIncomingMessage, *, ack: bool) -> None:
        """Ack, or reject to the dead-letter queue. If the channel went away meanwhile (broker
        restart), the broker redelivers the message and the inbox makes that a no-op."""
        try:
            if ack:
                await message.ack()
            else:
                await message.reject(requeue=False)
        except Exception as exc:
            log.warning("could not settle a message (%s); the broker will redeliver it", exc)

    async def healthy(self) -> bool:
        # A robust connection does not count as closed while it reconnects; its channel does.
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._publish_channel is not None
            and not self._publish_channel.is_closed
            and self._exchange is not None
        )

    async def _message_count(self, queue: str) -> int:
        assert self._connection is not None
        # A passive declare of a missing queue closes the channel: use a throwaway one.
        channel = await self._connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        except aio_pika.exceptions.ChannelClosed:
            return 0
        finally:
            if not channel.is_closed:
                await channel.close()

    async def queue_depth(self, queue: str) -> int:
        return await self._message_count(queue)

    async def dead_letter_count(self, queue: str) -> int:
        return await self._message_count(f"{queue}.dlq")

    async def delete_queues(self, queues: list[str]) -> None:
        """Remove consumer queues and their dead-letter queues (test teardown)."""
        assert self._connection is not None
        channel = await self._connection.channel()
        for name in queues:
            for q in (name, f"{name}.dlq"):
                try:
                    await channel.queue_delete(q)
                except Exception:
                    channel = await self._connection.channel()
        for ex in (self.exchange_name, self._dlx_name()):
            try:
                await channel.exchange_delete(ex)
            except Exception:
                channel = await self._connection.channel()
        await channel.close()
