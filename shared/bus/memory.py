"""The in-process bus of the embedded mode.

It mirrors the broker's semantics rather than calling handlers directly: each subscription has
its own queue bound by AMQP topic patterns and its own worker, so a failing consumer never
blocks another consumer, and the order of events per queue is kept.

Memory does not survive a crash, so "the bus has the event" must mean more than "it is in a
list": ``publish`` returns only once every bound queue's consumer has handled the event (or
dead-lettered it); ``publish_many`` queues a whole outbox batch first and then waits for all of
it, so consumers work through it together instead of one event per round trip. The outbox marks
a row sent only then, so a process killed with events in flight still has them as unsent outbox
rows and publishes them again at start-up; the consumers' inboxes make the second delivery a
no-op. RabbitMQ gives the same guarantee with durable queues and publisher confirms. A queue
that is declared but has no consumer yet (only during start-up, or in a test) just holds the
event, as a broker queue would; ``publish`` does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from shared.bus.base import EventBus, Subscription, wire
from shared.events import Envelope, topic_matches
from shared.observability import EVENTS_CONSUMED, EVENTS_DEAD_LETTERED

log = logging.getLogger("sipas.bus.memory")


class InMemoryBus(EventBus):
    def __init__(self, *, max_attempts: int = 5, retry_base_seconds: float = 0.2, batch_size: int = 100) -> None:
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self._subs: dict[str, Subscription] = {}
        self._bindings: dict[str, list[str]] = {}
        # Queues bound to each event type, worked out once per type (a 10,000-event outbox
        # group matched every event against every pattern: a fifth of the relay's time).
        self._routes: dict[str, list[str]] = {}
        # Each queue holds (body, future): the envelope's JSON bytes, as a broker queue would,
        # and what ``publish_many`` waits on (None: nobody waits).
        self._queues: dict[str, asyncio.Queue[tuple[bytes, asyncio.Future | None]]] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self.dead_letters: dict[str, list[dict]] = {}
        self._started = False
        self.batch_size = batch_size

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        await self.drain()
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        self._started = False

    async def publish_many(self, events: Sequence[Envelope | dict[str, Any]]) -> tuple[int, Exception | None]:
        """Queue each event, encoded once, in every bound queue; each consumer decodes its own
        copy, as it would from a broker (and at a third of the cost of a deep copy per queue)."""
        if not self._started:
            raise RuntimeError("bus is not started")
        loop = asyncio.get_running_loop()
        handled: list[asyncio.Future] = []
        for event in events:
            envelope = wire(event)
            route = self._route(envelope["type"])
            if not route:
                continue
            body = orjson.dumps(envelope)
            for name in route:
                done = loop.create_future()
                if name in self._subs:
                    handled.append(done)
                self._queues[name].put_nowait((body, done))
        if handled:
            await asyncio.gather(*handled)
        return len(events), None

    def _route(self, event_type: str) -> list[str]:
        route = self._routes.get(event_type)
        if route is None:
            route = self._routes[event_type] = [
                name for name, patterns in self._bindings.items() if any(topic_matches(p, event_type) for p in patterns)]
        return route

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        """Deliver bytes that may not be a valid envelope (for poison-message tests)."""
        for name in self._route(routing_key):
            self._queues[name].put_nowait((body, None))

    async def declare(self, queue: str, patterns: list[str]) -> None:
        if queue not in self._bindings:
            self._bindings[queue] = list(patterns)
            self._routes.clear()
            self._queues[queue] = asyncio.Queue()
            self.dead_letters.setdefault(queue, [])

    async def subscribe(self, subscription: Subscription) -> None:
        if subscription.queue in self._subs:
            raise ValueError(f"queue {subscription.queue} already has a consumer")
        await self.declare(subscription.queue, subscription.patterns)
        self._bindings[subscription.queue] = list(subscription.patterns)
        self._routes.clear()
        self._subs[subscription.queue] = subscription
        self._workers[subscription.queue] = asyncio.create_task(
            self._work(subscription), name=f"consumer:{subscription.queue}"
        )

    async def _work(self, sub: Subscription) -> None:
        queue = self._queues[sub.queue]
        while True:
            # Whatever has queued up (up to batch_size) goes to the consumer together.
            taken = [await queue.get()]
            while len(taken) < self.batch_size and not queue.empty():
                taken.append(queue.get_nowait())
            try:
                events: list[Envelope] = []
                for body, _ in taken:
                    try:
                        events.append(Envelope.model_validate_json(body))
                    except ValueError:
                        self._dead_letter(sub, {"body": body}, "not a valid event envelope")
                for event, ok in zip(events, await self.handle_batch(sub, events)):
                    if ok:
                        EVENTS_CONSUMED.labels(sub.service, sub.queue, "ok").inc()
                    else:
                        self._dead_letter(sub, event.model_dump(mode="json"), "handler failed after retries")
            except Exception:  # never let one message kill the worker
                log.exception("consumer %s crashed on a message", sub.queue)
            finally:
                for _, done in taken:
                    queue.task_done()
                    if done is not None and not done.done():
                        done.set_result(None)

    def _dead_letter(self, sub: Subscription, item: dict, reason: str) -> None:
        self.dead_letters[sub.queue].append({"reason": reason, "message": item})
        EVENTS_CONSUMED.labels(sub.service, sub.queue, "dead_lettered").inc()
        EVENTS_DEAD_LETTERED.labels(sub.service, sub.queue).inc()
        log.error("dead-lettered a message on %s: %s", sub.queue, reason)

    async def healthy(self) -> bool:
        return self._started

    async def queue_depth(self, queue: str) -> int:
        q = self._queues.get(queue)
        return q.qsize() if q else 0

    async def dead_letter_count(self, queue: str) -> int:
        return len(self.dead_letters.get(queue, []))

    async def drain(self) -> None:
        """Wait until every consumed queue is empty and handled, including events that handlers
        published meanwhile (tests and the embedded shutdown)."""
        while True:
            busy = [q for name, q in self._queues.items() if name in self._subs and q._unfinished_tasks]
            if not busy:
                return
            for q in busy:
                await q.join()
