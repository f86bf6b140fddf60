"""The in-process bus holds an event until its consumers have handled it, so the outbox never
marks sent what a crash could still lose."""

from __future__ import annotations

import asyncio

from shared.bus import InMemoryBus, Subscription
from shared.contracts.sampling import WaveCreated
from shared.events import make_event


def _event():
    import uuid

    return make_event(WaveCreated(wave_id=uuid.uuid4(), code="W", name="W", scope="national", province_code=None,
                                  year=2026, methodology_version="sipas-2017", fieldwork_start=None,
                                  fieldwork_end=None, status="draft"))


async def test_publish_returns_only_after_every_consumer_handled_the_event():
    bus = InMemoryBus(max_attempts=2, retry_base_seconds=0.001)
    await bus.start()
    release = asyncio.Event()
    handled = []

    async def slow(event):
        await release.wait()
        handled.append(event.id)

    async def fast(event):
        handled.append(event.id)

    await bus.subscribe(Subscription("q.slow", ["sipas.#"], slow))
    await bus.subscribe(Subscription("q.fast", ["sipas.#"], fast))
    publishing = asyncio.create_task(bus.publish(_event()))
    await asyncio.sleep(0.05)
    assert not publishing.done(), "publish returned before the slow consumer handled the event"
    release.set()
    await asyncio.wait_for(publishing, 2)
    assert len(handled) == 2
    await bus.close()


async def test_an_event_that_ends_in_the_dead_letter_queue_also_releases_the_publisher():
    bus = InMemoryBus(max_attempts=2, retry_base_seconds=0.001)
    await bus.start()

    async def broken(event):
        raise RuntimeError("always")

    await bus.subscribe(Subscription("q.broken", ["sipas.#"], broken))
    await asyncio.wait_for(bus.publish(_event()), 2)
    assert await bus.dead_letter_count("q.broken") == 1
    await bus.close()


async def test_a_queue_bound_after_events_of_a_type_were_published_gets_the_next_ones():
    """The bus remembers which queues each event type goes to; binding a queue must refresh it."""
    bus = InMemoryBus()
    await bus.start()
    got: dict[str, list] = {"first": [], "later": [], "other": []}

    def into(name):
        async def record(event):
            got[name].append(event.id)
        return record

    await bus.subscribe(Subscription("q.first", ["sipas.sampling.#"], into("first")))
    await bus.subscribe(Subscription("q.other", ["sipas.survey.#"], into("other")))
    before = _event()
    await bus.publish(before)
    await bus.subscribe(Subscription("q.later", ["sipas.sampling.wave.#"], into("later")))
    after = _event()
    await bus.publish(after)
    assert got == {"first": [before.id, after.id], "later": [after.id], "other": []}
    await bus.declare("q.held", ["sipas.sampling.wave.created.v1"])  # declared, nobody consumes it
    await bus.publish(_event())
    assert await bus.queue_depth("q.held") == 1
    await bus.close()
