"""One contract, two buses: the in-process bus must behave as RabbitMQ does.

Every test here runs against ``InMemoryBus`` always and against ``RabbitMQBus`` in the services
tier (the ``rabbitmq`` cases carry the ``services`` mark), in the same run, so a difference
between the two shows up as one case passing and its twin failing. Each test gets its own
exchange and queue names on RabbitMQ, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from shared.bus import EventBus, InMemoryBus, Subscription, wire
from shared.events import Envelope, topic_matches
from tests.conftest import BUS_URL, eventually

MAX_ATTEMPTS = 3
BUSES = ["memory", pytest.param("rabbitmq", marks=pytest.mark.services)]


def event(type_: str = "sipas.test.thing.happened.v1", **data) -> Envelope:
    return Envelope(type=type_, source="/sipas/test", correlation_id="corr-" + uuid.uuid4().hex[:8], data=data)


class BusHarness:
    """A started bus of one kind, with unique names and cleanup of what the test declared."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.uid = uuid.uuid4().hex[:10]
        self.exchange = f"sipas.test.contract.{self.uid}"
        self.queues: list[str] = []
        self.bus: EventBus = self._new_bus()

    def _new_bus(self) -> EventBus:
        if self.kind == "memory":
            return InMemoryBus(max_attempts=MAX_ATTEMPTS, retry_base_seconds=0.01)
        from shared.bus.rabbitmq import RabbitMQBus

        return RabbitMQBus(BUS_URL, exchange=self.exchange, max_attempts=MAX_ATTEMPTS, retry_base_seconds=0.01)

    def queue(self, name: str) -> str:
        q = f"test.contract.{self.uid}.{name}"
        self.queues.append(q)
        return q

    async def subscribe(self, name: str, patterns: list[str], handler) -> str:
        q = self.queue(name)
        await self.bus.subscribe(Subscription(q, patterns, handler, service="test"))
        return q

    async def pending_after_close(self, queue: str) -> int:
        """Close the bus (stopping its consumers) and count the messages still in ``queue``.

        On RabbitMQ a message a consumer never acknowledged goes back to its queue when the
        consumer's channel closes, so this is how a test tells "acked" from "left unacked"."""
        await self.bus.close()
        if self.kind == "memory":
            return await self.bus.queue_depth(queue)
        from shared.bus.rabbitmq import RabbitMQBus

        admin = RabbitMQBus(BUS_URL, exchange=self.exchange)
        await admin.start()
        try:
            return await admin.queue_depth(queue)
        finally:
            await admin.close()

    async def close(self) -> None:
        await self.bus.close()
        if self.kind == "rabbitmq":
            from shared.bus.rabbitmq import RabbitMQBus

            admin = RabbitMQBus(BUS_URL, exchange=self.exchange)
            await admin.start()
            try:
                await admin.delete_queues(self.queues)
            finally:
                await admin.close()


@pytest.fixture(params=BUSES)
async def harness(request):
    h = BusHarness(request.param)
    await h.bus.start()
    try:
        yield h
    finally:
        await h.close()


# -- delivery -------------------------------------------------------------------------------------


async def test_a_published_event_arrives_whole(harness):
    got: list[Envelope] = []

    async def handler(e: Envelope) -> None:
        got.append(e)

    await harness.subscribe("whole", ["sipas.test.#"], handler)
    sent = event(n=1, text="Hà Nội", nested={"a": [1, 2]})
    await harness.bus.publish(sent)
    await eventually(lambda: len(got) == 1)
    assert got[0] == sent  # same id, type, source, time, correlation id and data
    assert got[0].id == sent.id and got[0].time == sent.time


async def test_an_event_published_before_its_consumer_starts_waits_in_the_declared_queue(harness):
    q = harness.queue("late")
    await harness.bus.declare(q, ["sipas.test.#"])
    sent = event(n=1)
    await harness.bus.publish(sent)
    await eventually(lambda: harness.bus.queue_depth(q))
    assert await harness.bus.queue_depth(q) == 1

    got: list[Envelope] = []

    async def handler(e: Envelope) -> None:
        got.append(e)

    await harness.bus.subscribe(Subscription(q, ["sipas.test.#"], handler))
    await eventually(lambda: len(got) == 1)
    assert got[0].id == sent.id


async def test_every_bound_queue_gets_its_own_copy(harness):
    seen: dict[str, list] = {"a": [], "b": []}

    def recorder(name):
        async def handler(e: Envelope) -> None:
            seen[name].append(e.id)

        return handler

    await harness.subscribe("copy-a", ["sipas.test.#"], recorder("a"))
    await harness.subscribe("copy-b", ["sipas.test.*.happened.v1"], recorder("b"))
    sent = event()
    await harness.bus.publish(sent)
    await eventually(lambda: seen["a"] == [sent.id] and seen["b"] == [sent.id])


async def test_envelopes_published_in_wire_form_arrive_as_the_envelopes_they_came_from(harness):
    """The relay hands the bus envelopes as the outbox stores them (JSON-ready dicts); a consumer
    gets the same envelope as from the model, in order, mixed or not."""
    got: list[Envelope] = []

    async def handler(e: Envelope) -> None:
        got.append(e)

    await harness.subscribe("wire", ["sipas.test.#"], handler)
    sent = [event(n=i, text="Hà Nội", nested={"a": [i]}) for i in range(4)]
    assert await harness.bus.publish_many([sent[0], wire(sent[1]), wire(sent[2]), sent[3]]) == (4, None)
    await eventually(lambda: len(got) == 4)
    assert got == sent


async def test_a_consumer_changing_its_event_does_not_change_another_queues_copy(harness):
    seen: list[dict] = []
    changed = asyncio.Event()

    async def meddler(e: Envelope) -> None:
        e.data["nested"]["a"].append("changed")
        changed.set()

    async def reader(e: Envelope) -> None:
        await changed.wait()
        seen.append(e.data)

    await harness.subscribe("meddle", ["sipas.test.#"], meddler)
    await harness.subscribe("read", ["sipas.test.#"], reader)
    sent = event(nested={"a": [1]})
    await harness.bus.publish_many([wire(sent)])
    await eventually(lambda: len(seen) == 1)
    assert seen == [{"nested": {"a": [1]}}] and sent.data == {"nested": {"a": [1]}}


async def test_close_lets_an_in_flight_handler_finish(harness):
    started, finished = asyncio.Event(), []

    async def slow(e: Envelope) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(e.id)

    await harness.subscribe("inflight", ["sipas.test.#"], slow)
    sent = event()
    await harness.bus.publish(sent)
    await asyncio.wait_for(started.wait(), 10)
    await harness.bus.close()
    assert finished == [sent.id]


# -- failures: poison messages, retries, dead letters -----------------------------------------------


async def test_a_poison_message_is_dead_lettered_and_the_consumer_keeps_going(harness):
    calls: list[Envelope] = []

    async def handler(e: Envelope) -> None:
        calls.append(e)

    q = await harness.subscribe("poison", ["sipas.test.#"], handler)
    await harness.bus.publish_raw("sipas.test.thing.happened.v1", b"\xff not json, not an envelope")
    await harness.bus.publish_raw("sipas.test.thing.happened.v1", b'{"type": "sipas.test.x", "data": {}}')
    good = event(n=2)
    await harness.bus.publish(good)

    await eventually(lambda: [e.id for e in calls] == [good.id])
    await eventually(lambda: _equals(harness.bus.dead_letter_count(q), 2))
    await asyncio.sleep(0.2)  # nothing comes back: parked, not retried
    assert [e.id for e in calls] == [good.id]
    assert await harness.bus.dead_letter_count(q) == 2
    assert await harness.pending_after_close(q) == 0


async def test_a_handler_that_always_fails_is_tried_max_attempts_times_then_dead_lettered(harness):
    calls: list = []
    ok: list = []

    async def handler(e: Envelope) -> None:
        if e.data.get("bad"):
            calls.append(e.id)
            raise RuntimeError("this handler never succeeds on this event")
        ok.append(e.id)

    q = await harness.subscribe("failing", ["sipas.test.#"], handler)
    bad, good = event(bad=True), event(bad=False)
    await harness.bus.publish(bad)
    await harness.bus.publish(good)

    await eventually(lambda: _equals(harness.bus.dead_letter_count(q), 1))
    await eventually(lambda: ok == [good.id])
    await asyncio.sleep(0.2)  # no further attempt after dead-lettering
    assert calls == [bad.id] * MAX_ATTEMPTS
    assert await harness.bus.dead_letter_count(q) == 1
    assert await harness.pending_after_close(q) == 0


async def test_a_handler_that_fails_twice_then_succeeds_is_acked_not_dead_lettered(harness):
    calls: list = []
    done: list = []

    async def handler(e: Envelope) -> None:
        calls.append(e.id)
        if len(calls) <= 2:
            raise RuntimeError("transient failure")
        done.append(e.id)

    q = await harness.subscribe("flaky", ["sipas.test.#"], handler)
    sent = event()
    await harness.bus.publish(sent)
    await eventually(lambda: done == [sent.id])
    assert calls == [sent.id] * 3  # the last of MAX_ATTEMPTS attempts succeeded
    await asyncio.sleep(0.1)
    assert await harness.bus.dead_letter_count(q) == 0
    # Acknowledged: closing the consumer does not put it back in the queue.
    assert await harness.pending_after_close(q) == 0
    assert done == [sent.id]


async def test_a_backlog_reaches_the_batch_handler_in_order_and_a_poison_event_falls_back_alone(harness):
    """Consumers take what has queued up as one batch (one transaction in the services); a
    batch that fails is replayed one event at a time, so only the bad event is retried and
    dead-lettered, every other event is handled once, and the queue's order holds."""
    batches: list[list] = []
    singles: list = []
    handled: list = []

    async def one(e: Envelope) -> None:
        singles.append(e.id)
        if e.data.get("bad"):
            raise RuntimeError("this event never succeeds")
        handled.append(e.id)

    async def many(events: list[Envelope]) -> None:
        await asyncio.sleep(0.01)  # a transaction takes a while: later deliveries queue up
        batches.append([e.id for e in events])
        if any(e.data.get("bad") for e in events):
            raise RuntimeError("one event in this batch never succeeds")
        handled.extend(e.id for e in events)

    q = harness.queue("batched")
    await harness.bus.subscribe(Subscription(q, ["sipas.test.#"], one, service="test", batch_handler=many))
    sent = [event(i=i, bad=i == 37) for i in range(60)]
    published, error = await harness.bus.publish_many(sent)
    assert (published, error) == (60, None)

    good = [e.id for e in sent if not e.data["bad"]]
    await eventually(lambda: _equals(harness.bus.dead_letter_count(q), 1))
    await eventually(lambda: handled == good)
    assert max(len(b) for b in batches) > 1
    assert singles.count(sent[37].id) == MAX_ATTEMPTS
    assert await harness.pending_after_close(q) == 0
    assert handled == good


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected


# -- RabbitMQ publishing in windows ------------------------------------------------------------------


@pytest.fixture
async def rabbit():
    h = BusHarness("rabbitmq")
    await h.bus.start()
    try:
        yield h
    finally:
        await h.close()


@pytest.mark.services
@pytest.mark.parametrize("windows", [True, False])
async def test_rabbitmq_publishes_an_outbox_round_in_windows_in_order(rabbit, windows):
    """2,500 events go out as three windows (1,000 publishes written at once) and arrive in
    order. The installed aiormq must take the window path: a silent fallback to one task per
    publish (three times the CPU) would show here, not only in a benchmark. The fallback
    (aio-pika's publish, ``write_windows`` off) delivers the same, in order."""
    from shared.bus.rabbitmq import PUBLISH_WINDOW, _can_write_windows

    got: list[uuid.UUID] = []

    async def handler(e: Envelope) -> None:
        got.append(e.id)

    await rabbit.subscribe("windows", ["sipas.test.#"], handler)
    rabbit.bus.write_windows = windows
    sent = [event(n=i) for i in range(2 * PUBLISH_WINDOW + 500)]
    assert await rabbit.bus.publish_many([wire(e) for e in sent]) == (len(sent), None)
    assert rabbit.bus.write_windows == windows
    assert _can_write_windows(await rabbit.bus._publish_channel.get_underlay_channel())
    await eventually(lambda: len(got) == len(sent), timeout=30)
    assert got == [e.id for e in sent]


@pytest.mark.parametrize("body_size", [10, 131_064, 300_000])
@pytest.mark.parametrize("optional", [True, False])
def test_a_window_frames_each_publish_exactly_as_pamqp_does(body_size, optional):
    """``_message_frames`` writes the method, content header and body frames itself (pamqp's
    generic encoder was most of a window's CPU); the bytes must be pamqp's for the message the
    one-by-one fallback sends (``RabbitMQBus._message``), byte for byte, with or without the
    optional properties and for bodies split across frames."""
    import pamqp.frame
    from pamqp import commands as spec
    from pamqp.body import ContentBody
    from pamqp.header import ContentHeader

    from shared.bus.rabbitmq import RabbitMQBus, _message_frames

    e = wire(event(text="Hà Nội " * (body_size // 10)))
    if not optional:
        e.update(correlation_id=None, time="not a time", source="")
    max_body = 131_064  # a 128 KiB frame less its 8 bytes of framing, as aiormq computes it
    body = orjson.dumps(e)
    # The properties of the one-by-one fallback's aio-pika Message: both paths send the same.
    frames = [spec.Basic.Publish(exchange="sipas.events", routing_key=e["type"]),
              ContentHeader(body_size=len(body), properties=RabbitMQBus._message(e).properties)]
    frames += [ContentBody(body[i:i + max_body]) for i in range(0, len(body), max_body)]
    expected = b"".join(pamqp.frame.marshal(f, 7) for f in frames)
    assert _message_frames(7, "sipas.events", e, max_body, {}) == expected
    assert (len(frames) > 3) == (len(body) > max_body)


@pytest.mark.services
async def test_rabbitmq_reports_the_publishes_before_the_first_the_broker_refused(rabbit):
    """A queue that holds five messages and refuses more (``reject-publish``): the broker nacks
    the sixth publish, so five are reported published and the error stops the rest (the outbox
    keeps them for the next round)."""
    q = rabbit.queue("full")
    channel = await rabbit.bus._connection.channel()
    queue = await channel.declare_queue(q, durable=True, arguments={"x-max-length": 5, "x-overflow": "reject-publish"})
    await queue.bind(rabbit.exchange, routing_key="sipas.test.full.#")
    sent = [event("sipas.test.full.thing.v1", n=i) for i in range(8)]
    published, error = await rabbit.bus.publish_many(sent)
    assert published == 5 and error is not None
    assert await rabbit.bus.queue_depth(q) == 5
    # The channel still publishes afterwards (a refused publish does not close it).
    other = [event("sipas.test.other.thing.v1")]
    assert await rabbit.bus.publish_many(other) == (1, None)


# -- topic matching ---------------------------------------------------------------------------------

KEYS = [
    "sipas.sampling.wave.created.v1",
    "sipas.sampling.wave.updated.v1",
    "sipas.sampling.wave.created.v2",
    "sipas.sampling.wave",
    "sipas.sampling",
    "sipas",
    "sipas.survey.form.created.v1",
    "other.sampling.wave.created.v1",
    "sipas.sampling.wave.created.v1.extra",
]

# pattern -> the KEYS it matches under AMQP topic rules ('*' exactly one word, '#' zero or more).
TOPIC_TABLE: dict[str, set[str]] = {
    "sipas.sampling.wave.created.v1": {"sipas.sampling.wave.created.v1"},
    "sipas.sampling.wave.*": set(),
    "sipas.sampling.wave.*.v1": {"sipas.sampling.wave.created.v1", "sipas.sampling.wave.updated.v1"},
    "sipas.sampling.wave.#": {
        "sipas.sampling.wave.created.v1",
        "sipas.sampling.wave.updated.v1",
        "sipas.sampling.wave.created.v2",
        "sipas.sampling.wave",
        "sipas.sampling.wave.created.v1.extra",
    },
    "sipas.*": {"sipas.sampling"},
    "sipas.#": set(KEYS) - {"other.sampling.wave.created.v1"},
    "#": set(KEYS),
    "*": {"sipas"},
    "*.sampling.#": {k for k in KEYS if k.split(".")[1:2] == ["sampling"]},
    "#.v1": {
        "sipas.sampling.wave.created.v1",
        "sipas.sampling.wave.updated.v1",
        "sipas.survey.form.created.v1",
        "other.sampling.wave.created.v1",
    },
    "sipas.#.v1": {"sipas.sampling.wave.created.v1", "sipas.sampling.wave.updated.v1", "sipas.survey.form.created.v1"},
    "sipas.*.*.created.v1": {"sipas.sampling.wave.created.v1", "sipas.survey.form.created.v1"},
    "#.wave.#": {
        "sipas.sampling.wave.created.v1",
        "sipas.sampling.wave.updated.v1",
        "sipas.sampling.wave.created.v2",
        "sipas.sampling.wave",
        "other.sampling.wave.created.v1",
        "sipas.sampling.wave.created.v1.extra",
    },
    "sipas.#.#": set(KEYS) - {"other.sampling.wave.created.v1"},
    "sipas.*.#": set(KEYS) - {"other.sampling.wave.created.v1", "sipas"},
}


@pytest.mark.parametrize("pattern", list(TOPIC_TABLE))
def test_topic_matches_follows_amqp_rules(pattern):
    assert {k for k in KEYS if topic_matches(pattern, k)} == TOPIC_TABLE[pattern]


async def test_bindings_route_as_the_topic_table_says(harness):
    """Bind one queue per pattern and publish every key: each queue gets exactly its keys."""
    received: dict[str, list[str]] = {p: [] for p in TOPIC_TABLE}
    closed: dict[str, asyncio.Event] = {p: asyncio.Event() for p in TOPIC_TABLE}

    def recorder(pattern: str, sentinel: str):
        async def handler(e: Envelope) -> None:
            if e.type == sentinel:
                closed[pattern].set()
            elif not e.type.startswith("zz-sentinel."):
                received[pattern].append(e.type)

        return handler

    sentinels = {}
    for i, pattern in enumerate(TOPIC_TABLE):
        # A per-queue sentinel key, published last: once a queue sees it, it has seen (in
        # order) everything routed to it before.
        sentinels[pattern] = f"zz-sentinel.{i}"
        await harness.subscribe(f"topic{i}", [pattern, sentinels[pattern]], recorder(pattern, sentinels[pattern]))
    for key in KEYS:
        await harness.bus.publish(event(key))
    for pattern in TOPIC_TABLE:
        await harness.bus.publish(event(sentinels[pattern]))
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in closed.values())), 20)

    for pattern, expected in TOPIC_TABLE.items():
        assert sorted(received[pattern]) == sorted(expected), pattern
