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
- ``publish_many`` writes an outbox batch a window of 1,000 publishes at a time, as one socket
  write, and waits for their confirms together (``_write_window``); one publish-and-confirm
  round trip per event capped a relay at a few hundred events a second, and a task per publish
  at about 5,000.
- ``connect_robust`` reconnects after a broker restart and re-declares the exchange, queues,
  bindings and consumers; a publish during the outage raises and the outbox retries it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import struct
from collections.abc import Sequence
from typing import Any

import aio_pika
import orjson
from aiormq.abc import ChannelFrame
import pamqp.frame
from pamqp import commands as spec
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


# Messages written to the socket at once by ``publish_many``, then confirmed together.
PUBLISH_WINDOW = 1000
PUBLISH_TIMEOUT = 10.0
# What ``_write_window`` uses of an aiormq channel (aiormq 7.x).
_CHANNEL_PARTS = ("lock", "delivery_tag", "confirmations", "write_queue", "create_future", "number",
                  "publisher_confirms", "max_content_size", "is_closed")


def _can_write_windows(channel: Any) -> bool:
    return (all(hasattr(channel, part) for part in _CHANNEL_PARTS) and channel.publisher_confirms
            and {"payload", "should_close", "drain_future"} <= {f.name for f in dataclasses.fields(ChannelFrame)})


# AMQP 0-9-1 framing (section 4.2.3): type, channel, size, payload, frame-end.
_FRAME = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_CONTENT_HEADER = struct.Struct(">HHQH")  # class (basic), weight (0), body size, property flags
_TIMESTAMP = struct.Struct(">Q")
_FLAG = spec.Basic.Properties.flags
# Every message's first properties, in the protocol's order: content type, headers (an empty
# table), delivery mode 2 (persistent), priority 0.
_FIXED_FLAGS = (_FLAG["content_type"] | _FLAG["headers"] | _FLAG["delivery_mode"] | _FLAG["priority"]
                | _FLAG["message_id"] | _FLAG["message_type"])
_FIXED_PROPERTIES = b"\x10application/json" + b"\x00\x00\x00\x00" + b"\x02" + b"\x00"


def _short(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"an AMQP short string holds 255 bytes at most, not {len(raw)}")
    return bytes((len(raw),)) + raw


def _message_frames(channel_number: int, exchange: str, envelope: dict[str, Any], max_body: int,
                    publish_frames: dict[str, bytes]) -> bytes:
    """The frames of one publish (method, content header, body), as pamqp marshals them, in a
    few ``struct`` calls: pamqp's generic property encoder took ~40 µs a message, most of a
    window's CPU. The properties are those of the one-by-one path's aio-pika ``Message``
    (``RabbitMQBus._message``: content type, empty headers, persistent delivery, priority 0,
    correlation id, message id, timestamp, type, app id); a test checks the bytes against
    pamqp's for that message. ``publish_frames`` caches the method frame per routing key."""
    kind = envelope["type"]
    method = publish_frames.get(kind)
    if method is None:
        method = publish_frames[kind] = pamqp.frame.marshal(spec.Basic.Publish(exchange=exchange, routing_key=kind),
                                                            channel_number)
    body = orjson.dumps(envelope)
    flags = _FIXED_FLAGS
    correlation_id, stamp, app_id = envelope.get("correlation_id"), _timestamp(envelope.get("time")), envelope.get("source")
    props = [_FIXED_PROPERTIES]
    if correlation_id:
        flags |= _FLAG["correlation_id"]
        props.append(_short(correlation_id))
    props.append(_short(str(envelope["id"])))
    if stamp is not None:
        flags |= _FLAG["timestamp"]
        props.append(_TIMESTAMP.pack(int(stamp.timestamp())))
    props.append(_short(kind))
    if app_id:
        flags |= _FLAG["app_id"]
        props.append(_short(app_id))
    header = _CONTENT_HEADER.pack(spec.Basic.frame_id, 0, len(body), flags) + b"".join(props)
    out = [method, _FRAME.pack(2, channel_number, len(header)), header, _FRAME_END]
    for start in range(0, len(body), max_body):
        chunk = body[start:start + max_body]
        out += [_FRAME.pack(3, channel_number, len(chunk)), chunk, _FRAME_END]
    return b"".join(out)


async def _write_window(channel: Any, exchange: str, envelopes: list[dict[str, Any]]) -> list[asyncio.Future]:
    """Write the messages' frames to the socket as one write and return their confirms, in order.

    aiormq's ``basic_publish`` (and aio-pika's ``Exchange.publish`` over it) costs a task, a lock
    round, a queued write and a socket send per message: some 170 µs of CPU, so a relay
    publishing a Vietnam Post batch's 10,000 events to RabbitMQ managed about 5,000 a second
    while the pushes made 12,000. Here the window's frames are marshalled in one go and queued
    as one write, under the channel's lock and with its delivery tags and confirmation futures,
    as ``basic_publish`` does for one message (``_message_frames``). There is no batch publish
    in AMQP itself: each message is still its own publish with its own confirm."""
    if channel.is_closed:
        raise ConnectionError("the publishing channel is closed")
    confirms: list[asyncio.Future] = []
    number, max_body, publish_frames = channel.number, channel.max_content_size, {}
    payload = b"".join([_message_frames(number, exchange, e, max_body, publish_frames) for e in envelopes])
    async with asyncio.timeout(PUBLISH_TIMEOUT), channel.lock:
        first_tag = channel.delivery_tag
        written = channel.create_future()
        try:
            for tag in range(first_tag + 1, first_tag + len(envelopes) + 1):
                confirm = channel.create_future()
                channel.confirmations[tag] = confirm
                confirms.append(confirm)
            channel.delivery_tag = first_tag + len(envelopes)
            await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False, drain_future=written))
        except BaseException:  # nothing reached the broker: give the tags back
            for tag in range(first_tag + 1, first_tag + len(envelopes) + 1):
                channel.confirmations.pop(tag, None)
            channel.delivery_tag = first_tag
            raise
        await written
    return confirms


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
        # Publishes written a window at a time (``_write_window``); off if that ever fails.
        self.write_windows = True
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
        """Publish in order, ``PUBLISH_WINDOW`` messages written at once, and wait for their
        confirms together (``_write_window``); the first message not confirmed ends it."""
        if self._exchange is None or self._publish_channel is None:
            raise RuntimeError("bus is not started")
        envelopes = [wire(e) for e in events]
        if self._connection is None or not self._connection.connected.is_set():
            # The robust connection is reconnecting; waiting for it here would hold the relay's
            # round (and its claimed rows) until the broker is back. Fail now; the rows wait.
            return 0, ConnectionError("the connection to the broker is closed (reconnecting)")
        try:
            channel = await asyncio.wait_for(self._publish_channel.get_underlay_channel(), PUBLISH_TIMEOUT)
        except Exception as exc:  # closed, being restored: the outbox keeps the rows
            return 0, exc
        if not (self.write_windows and _can_write_windows(channel)):
            return await self._publish_one_by_one(envelopes)
        for start in range(0, len(envelopes), PUBLISH_WINDOW):
            try:
                confirms = await _write_window(channel, self.exchange_name, envelopes[start:start + PUBLISH_WINDOW])
            except (TypeError, AttributeError) as exc:  # an aiormq unlike the one this was written for
                log.warning("writing publishes as a window failed (%s); publishing one by one from now on", exc)
                self.write_windows = False
                published, error = await self._publish_one_by_one(envelopes[start:])
                return start + published, error
            except Exception as exc:
                return start, exc
            done, _ = await asyncio.wait(confirms, timeout=PUBLISH_TIMEOUT)
            for i, confirm in enumerate(confirms):
                if confirm not in done:
                    return start + i, TimeoutError(f"the broker did not confirm within {PUBLISH_TIMEOUT} s")
                if confirm.cancelled() or confirm.exception() is not None:
                    error = confirm.exception() if not confirm.cancelled() else None
                    return start + i, error or ConnectionError("the channel closed before the broker confirmed")
        return len(envelopes), None

    async def _publish_one_by_one(self, envelopes: list[dict[str, Any]]) -> tuple[int, Exception | None]:
        """aio-pika's own publish, a task per message (about three times the CPU of a window):
        for an aiormq whose channel does not look as ``_write_window`` expects."""
        exchange = self._exchange
        # Tasks start in order and take the channel lock in order: the broker gets them in order.
        sends = [asyncio.ensure_future(exchange.publish(self._message(e), routing_key=e["type"], timeout=PUBLISH_TIMEOUT))
                 for e in envelopes]
        results = await asyncio.gather(*sends, return_exceptions=True)
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                return i, result if isinstance(result, Exception) else RuntimeError(str(result))
        return len(envelopes), None

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
