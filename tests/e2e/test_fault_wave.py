"""The small national wave again, with faults mid-wave (services tier).

Five ``python -m services serve`` processes on PostgreSQL and a throwaway RabbitMQ node
(``tests.support.rabbit_node``, never the main node) play ``demo.scenario`` through the HTTP APIs.
While Vietnam Post's batches are coming in, three things go wrong, each at a point where events
are in flight:

1. right after round 1's refusals and unreachable units are reported (survey's relay is
   publishing ``form.status_changed`` and ``replacement.requested``; verification is consuming),
   verification is killed with SIGKILL and started again;
2. right after round 2's replacement forms are dispatched, the broker stops; the round's outcomes
   are pushed while it is down (their events wait in survey's outbox); then it starts again on
   the same port and folder, and every service reconnects on its own (``/readyz`` of all five,
   which checks the bus connection, is the proof);
3. right after the answers are pushed (verification is screening them and indexing consumes the
   decisions), indexing is killed with SIGKILL and started again.

Then the wave is finished as usual. What must hold, against an embedded run of the same seed:
the published figures are identical, and so are the counts at every stage (frame records,
forms collected, returned, valid, denied, …), indexing's accepted set and its final run have
exactly the valid forms; and at the level of events, every event any service put in its outbox
was published and taken exactly once by each consumer bound to it (inbox rows = matching
outbox rows, nothing left unpublished, nothing dead-lettered).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from unittest import mock

import pytest
from sqlalchemy import text

from demo.scenario import Scenario, http_actors
from services import app_module
from services.embedded import embedded_stack
from services.keys import issue_many
from shared.bus.rabbitmq import RabbitMQBus
from shared.db import create_engine
from shared.events import topic_matches
from shared.settings import SERVICES, PlatformSettings
from tests.conftest import DATABASE_URL, drop_backend
from tests.e2e.test_national_wave import SMALL, assert_same_figures, figures, play_in_process, wanted_keys
from tests.support.rabbit_node import RabbitNode
from tests.support.stack_process import StackProcess, stack_env

pytestmark = [pytest.mark.services, pytest.mark.slow]

Fault = Callable[[], Awaitable[None]]


class FaultyScenario(Scenario):
    """The demo scenario with faults injected right after Vietnam Post's n-th batch call of a
    kind: ``("status", n)`` after the n-th status push (dispatches, refusals, unreachable),
    ``("answers", n)`` after the n-th answers push; at those moments survey's relay is publishing
    and the consumers downstream are working. It hooks ``_batches`` only, so the scenario can
    reorganise its rounds; a fault whose point never comes fails the test."""

    def __init__(self, *args, faults: dict[tuple[str, int], Fault], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.faults = dict(faults)
        self.injected: list[tuple[str, int]] = []
        self.calls: dict[str, int] = {}

    async def _batches(self, kind: str, name: str, records: list[dict], *args, **kwargs) -> None:
        await super()._batches(kind, name, records, *args, **kwargs)
        self.calls[kind] = self.calls.get(kind, 0) + 1
        fault = self.faults.pop((kind, self.calls[kind]), None)
        if fault is not None:
            await fault()
            self.injected.append((kind, self.calls[kind]))


@pytest.fixture
def rabbit_node():
    node = RabbitNode(boot_timeout=120)  # generous: the node boots twice, on a shared machine
    try:
        yield node  # started by the test: a node that cannot start fails the test, never skips it
    finally:
        node.close()


async def queue_depth(url: str, exchange: str, queue: str) -> int:
    bus = RabbitMQBus(url, exchange=exchange)
    await bus.start()
    try:
        return await bus.queue_depth(queue)
    finally:
        await bus.close()


async def dead_letters(url: str, exchange: str, queues: list[str]) -> dict[str, int]:
    bus = RabbitMQBus(url, exchange=exchange)
    await bus.start()
    try:
        return {q: n for q in queues if (n := await bus.dead_letter_count(q))}
    finally:
        await bus.close()


async def event_ledger(schema_prefix: str) -> tuple[dict[str, int], dict[tuple[str, str], int], int]:
    """Outbox events by type (all five services), inbox rows by (service, consumer), and how many
    outbox events were never published."""
    engine = create_engine(DATABASE_URL)
    produced: dict[str, int] = {}
    taken: dict[tuple[str, str], int] = {}
    unpublished = 0
    try:
        async with engine.connect() as conn:
            for name in SERVICES:
                schema = f'"{schema_prefix}{name}"'
                # Events, not rows: a row may hold a group of events (shared.outbox.add_envelopes).
                for type_, n, pending in await conn.execute(text(
                        f"SELECT e->>'type', count(*), count(*) FILTER (WHERE o.published_at IS NULL) "
                        f"FROM {schema}.outbox o, json_array_elements(CASE WHEN o.size > 1 THEN o.envelope::json "
                        f"ELSE json_build_array(o.envelope::json) END) e GROUP BY 1")):
                    produced[type_] = produced.get(type_, 0) + n
                    unpublished += pending
                for consumer, n in await conn.execute(text(f"SELECT consumer, count(*) FROM {schema}.inbox GROUP BY consumer")):
                    taken[(name, consumer)] = n
    finally:
        await engine.dispose()
    return produced, taken, unpublished


def expected_inbox(produced: dict[str, int]) -> dict[tuple[str, str], int]:
    """Each consumer must have taken every produced event its patterns match, once."""
    want = {}
    for name in SERVICES:
        for consumer in app_module(name).SPEC.consumers:
            n = sum(count for type_, count in produced.items() if any(topic_matches(p, type_) for p in consumer.patterns))
            if n:
                want[(name, consumer.name)] = n
    return want


async def embedded_reference(tmp_path: Path):
    """The same seed on the embedded stack (SQLite + in-process bus), no faults."""
    started = time.monotonic()
    embedded = PlatformSettings(data_dir=str(tmp_path / "embedded"), log_json=True)
    async with embedded_stack(embedded) as stack:
        issued = await issue_many(embedded, [(role, f"e2e {name}", p) for name, role, p in wanted_keys()])
        report = await play_in_process(stack, {name: k.key for (name, *_), k in zip(wanted_keys(), issued)})
    return report, time.monotonic() - started


async def test_the_wave_survives_killed_consumers_and_a_broker_restart(tmp_path: Path, rabbit_node, capsys):
    started = time.monotonic()
    # The reference first, on its own: played at the same time as the faulty stack (tried), it
    # was slowed enough on a busy machine to hit the scenario's own waiting limits.
    reference, reference_seconds = await embedded_reference(tmp_path)
    await asyncio.to_thread(rabbit_node.start)
    run_dir = tmp_path / "faulty"
    run_dir.mkdir()
    env, urls, _ = stack_env(run_dir, database_url=DATABASE_URL, bus_url=rabbit_node.url)
    # Two unacked messages per queue, not the default 32: with 32 per queue, verification's five
    # queues run up to 160 handlers at once against a 15-connection pool, and on a busy machine
    # its HTTP requests waited past the pool timeout (a 500 before any fault was injected). The
    # faults still find messages in flight; the starvation itself is a separate problem.
    env["SIPAS_CONSUMER_PREFETCH"] = "2"
    procs = StackProcess(env, urls, log_dir=run_dir)
    with mock.patch.dict(os.environ, env):
        platform = PlatformSettings()
    queues = [f"{platform.queue_prefix}.{n}.{c.name}" for n in SERVICES for c in app_module(n).SPEC.consumers]
    seen: dict[str, object] = {}

    async def kill_and_restart(name: str) -> None:
        code = await asyncio.to_thread(procs.kill, name)
        assert code == -9, f"{name} was not killed by SIGKILL ({code})"
        # What the dead process left in its queues (unacked messages go back to ready).
        seen[f"{name} queued at kill"] = {
            q.rsplit(".", 1)[-1]: await queue_depth(rabbit_node.url, platform.exchange, q)
            for q in queues if q.startswith(f"{platform.queue_prefix}.{name}.")
        }
        await asyncio.to_thread(procs.restart, name)

    async def stop_broker() -> None:
        await asyncio.to_thread(rabbit_node.stop)
        seen["broker stopped at"] = round(time.monotonic() - started, 1)

    async def start_broker() -> None:
        await asyncio.to_thread(rabbit_node.start)
        # Every service reconnects by itself: /readyz checks the database and the bus connection.
        await asyncio.to_thread(procs.wait_ready, 180)
        seen["broker back at"] = round(time.monotonic() - started, 1)

    # Round 1's refusals and unreachable units are reported (status pushes 1 and 2), round 2's
    # replacements are dispatched (push 3) and reported (push 4), the answers come in (answers 1).
    faults = {
        ("status", 2): lambda: kill_and_restart("verification"),
        ("status", 3): stop_broker,  # round 2's outcomes are pushed while the broker is down
        ("status", 4): start_broker,
        ("answers", 1): lambda: kill_and_restart("indexing"),
    }
    try:
        await asyncio.to_thread(procs.start, "each")
        issued = await issue_many(platform, [(role, f"e2e {name}", p) for name, role, p in wanted_keys()])
        keys = {name: k.key for (name, *_), k in zip(wanted_keys(), issued)}
        async with http_actors(urls, keys) as actors:
            scenario = FaultyScenario(SMALL, actors, faults=faults)
            try:
                faulty = await scenario.play()
            except Exception as exc:
                raise AssertionError(f"the wave did not finish after the faults: {exc}\n{procs.logs()}") from exc
            m = actors.h("ministry")
            accepted = (await actors.clients["indexing"].get(f"/v1/waves/{faulty.wave_id}/accepted", headers=m)).json()
            run = (await actors.clients["indexing"].get(f"/v1/runs/{faulty.run_id}", headers=m)).json()

        assert scenario.injected == list(faults), f"not every fault was injected: {scenario.injected}"
        faulty_seconds = time.monotonic() - started - reference_seconds

        # Same counts at every stage and the same published figures as the run without faults.
        assert faulty.counts == reference.counts
        assert_same_figures(figures(faulty), figures(reference))
        valid = faulty.counts["forms valid"]
        assert accepted["accepted_forms"] == valid
        assert run["accepted_forms"] == valid

        # Event level: all published, each taken exactly once by each consumer, none parked.
        async def settled() -> tuple:
            deadline = time.monotonic() + 30
            while True:
                produced, taken, unpublished = await event_ledger(platform.schema_prefix)
                if (unpublished == 0 and taken == expected_inbox(produced)) or time.monotonic() > deadline:
                    return produced, taken, unpublished
                await asyncio.sleep(0.2)

        produced, taken, unpublished = await settled()
        assert unpublished == 0, "outbox rows left unpublished"
        assert taken == expected_inbox(produced), "an event was lost or taken twice by a consumer"
        assert await dead_letters(rabbit_node.url, platform.exchange, queues) == {}
        redelivered = procs.logs(tail=None).count("already handled")
    finally:
        with contextlib.suppress(Exception):
            procs.stop()
        await drop_backend(platform)  # the queues go with the throwaway node
    with capsys.disabled():
        print(f"\nfault wave: reference {reference_seconds:.1f} s {_stages(reference)}, faulty {faulty_seconds:.1f} s "
              f"{_stages(faulty)}, total {time.monotonic() - started:.1f} s; "
              f"{seen}; redeliveries skipped by the inbox: {redelivered}; "
              f"events produced {sum(produced.values())}, inbox rows {sum(taken.values())}")


def _stages(report) -> dict[str, float]:
    return {k: round(v, 1) for k, v in report.stage_seconds.items()}
