"""The transactional outbox and the idempotent inbox, on the test's database backend.

SQLite and the in-process bus in the embedded tier, PostgreSQL and RabbitMQ in the services tier.
The services are real (sampling's domain operation writes the outbox row, survey's consumer
reads it); the only stand-in is a bus subclass that refuses to publish on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select

from services import app_module, settings_for
from services.embedded import declare_topology, make_bus, migrate_service
from services.sampling import service as sampling_service
from services.sampling.schemas import WaveCreate
from shared.auth import Principal, Role
from shared.bus import EventBus, InMemoryBus, Subscription, wire
from shared.contracts.sampling import WaveCreated
from shared.db import create_engine, session_factory, transaction, utcnow
from shared.events import Envelope, make_event
from shared.outbox import (
    OutboxRelay, add_envelopes, idempotent_batch_handler, idempotent_handler, install_commit_hooks,
)
from tests.conftest import ON_SERVICES, all_queues, drop_backend, eventually

ROOT = Path(__file__).resolve().parents[2]
MINISTRY = Principal(key_id="test-key", role=Role.ministry, label="outbox tests")


def wave_body(code: str) -> WaveCreate:
    return WaveCreate(code=code, name=f"Wave {code}", scope="national", year=2026, methodology_version="sipas-2017")


def wave_created(code: str = "W-1") -> Envelope:
    return make_event(
        WaveCreated(
            wave_id=uuid.uuid4(),
            code=code,
            name=f"Wave {code}",
            scope="national",
            province_code=None,
            year=2026,
            methodology_version="sipas-2017",
            fieldwork_start=None,
            fieldwork_end=None,
            status="draft",
        )
    )


class ServiceDB:
    def __init__(self, name: str, platform) -> None:
        self.name = name
        self.settings = settings_for(name, platform=platform)
        self.tables = app_module(name).SPEC.tables
        self.engine = create_engine(self.settings.effective_database_url, schema=self.settings.db_schema)
        self.sessions = session_factory(self.engine)

    @property
    def outbox(self):
        return self.tables["outbox"]

    @property
    def inbox(self):
        return self.tables["inbox"]

    async def count(self, table: str, *where) -> int:
        t = self.tables[table]
        async with self.sessions() as s:
            return int(await s.scalar(select(func.count()).select_from(t).where(*where)) or 0)

    async def outbox_rows(self) -> list[dict]:
        async with self.sessions() as s:
            rows = (await s.execute(select(self.outbox).order_by(self.outbox.c.seq))).mappings().all()
        return [dict(r) for r in rows]


class Env:
    """What one test builds on its backend, and tears down afterwards."""

    def __init__(self, platform) -> None:
        self.platform = platform
        self.dbs: dict[str, ServiceDB] = {}
        self._bus: EventBus | None = None
        self.queues: list[str] = []

    async def db(self, name: str) -> ServiceDB:
        if name not in self.dbs:
            db = ServiceDB(name, self.platform)
            await migrate_service(name, db.settings)
            self.dbs[name] = db
        return self.dbs[name]

    async def bus(self) -> EventBus:
        """The test backend's bus (in-process, or RabbitMQ with the test's own exchange)."""
        if self._bus is None:
            self._bus = make_bus(self.platform)
            await self._bus.start()
        return self._bus

    def queue(self, name: str) -> str:
        q = f"{self.platform.queue_prefix}.test.{name}"
        self.queues.append(q)
        return q

    async def probe(self, name: str, patterns: list[str]) -> list[Envelope]:
        """A plain consumer that records every delivery (duplicates included)."""
        got: list[Envelope] = []

        async def record(e: Envelope) -> None:
            got.append(e)

        await (await self.bus()).subscribe(Subscription(self.queue(name), patterns, record, service="test"))
        return got

    @contextlib.asynccontextmanager
    async def app(self, name: str):
        """A real service app on the shared bus, its lifespan running (consumers, relay)."""
        await self.db(name)  # migrated (PostgreSQL apps do not migrate on start)
        bus = await self.bus()
        settings = settings_for(name, platform=self.platform)
        await declare_topology(bus, {name: settings})
        app = app_module(name).create_app(settings, bus=bus)
        async with app.router.lifespan_context(app):
            yield app
            drain = getattr(bus, "drain", None)
            if drain is not None:
                await drain()

    async def settle(self) -> None:
        """Let deliveries in flight land before counting duplicates."""
        drain = getattr(self._bus, "drain", None)
        if drain is not None:
            await drain()
        await asyncio.sleep(0.3 if ON_SERVICES else 0.05)

    async def close(self) -> None:
        try:
            if self._bus is not None:
                await self._bus.close()
            for db in self.dbs.values():
                await db.engine.dispose()
        finally:
            await drop_backend(self.platform, all_queues(self.platform) + self.queues)


@pytest.fixture
async def env(platform):
    e = Env(platform)
    try:
        yield e
    finally:
        await e.close()


# -- 1. committed with its change: delivered even if the process dies before publishing ------------

CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, json, os, sys

    from services import settings_for
    from services.embedded import migrate_service
    from services.sampling import service
    from services.sampling.app import SPEC
    from services.sampling.schemas import WaveCreate
    from shared.auth import Principal, Role
    from shared.db import create_engine, session_factory, transaction, utcnow
    from shared.settings import PlatformSettings

    async def main():
        platform = PlatformSettings(**json.loads(sys.argv[1]))
        settings = settings_for("sampling", platform=platform)
        await migrate_service("sampling", settings)
        engine = create_engine(settings.effective_database_url, schema=settings.db_schema)
        sessions = session_factory(engine)
        principal = Principal(key_id="k", role=Role.ministry, label="crashing writer")
        body = WaveCreate(code="CRASH-1", name="Crash", scope="national", year=2026, methodology_version="sipas-2017")
        async with transaction(sessions) as session:  # the wave, its audit entry and its event
            wave = await service.create_wave(session, SPEC.tables, principal, body)
        print(json.dumps({"wave_id": wave.id}), flush=True)
        os._exit(1)  # die after the commit, before any relay could publish

    asyncio.run(main())
    """
)


async def test_an_event_committed_by_a_process_that_died_is_delivered_exactly_once(env, platform):
    args = platform.model_dump(mode="json", include={"environment", "data_dir", "database_url", "schema_prefix"})
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASHING_WRITER, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    wave_id = json.loads(proc.stdout.strip().splitlines()[-1])["wave_id"]

    sampling = await env.db("sampling")
    [row] = await sampling.outbox_rows()
    assert row["type"] == WaveCreated.event_type and row["published_at"] is None
    event_id = row["event_id"]

    probe = await env.probe("crash-probe", ["sipas.sampling.#"])
    async with env.app("survey"), env.app("sampling"):  # the relay starts here
        await eventually(lambda: [str(e.id) for e in probe] == [event_id])
        survey = await env.db("survey")
        await eventually(lambda: _equals(survey.count("wave", survey.tables["wave"].c.id == wave_id), 1))
        await env.settle()
    await env.settle()

    assert [str(e.id) for e in probe] == [event_id]  # delivered once, not once per start
    assert probe[0].payload().code == "CRASH-1"
    assert await survey.count("inbox", survey.inbox.c.event_id == event_id) == 1
    [row] = await sampling.outbox_rows()
    assert row["published_at"] is not None and row["attempts"] == 0


# -- 2. a rolled-back transaction publishes nothing -----------------------------------------------


async def test_a_rolled_back_transaction_publishes_nothing(env):
    probe = await env.probe("rollback-probe", ["sipas.sampling.#"])
    async with env.app("sampling") as app:
        sessions, tables = app.state.sessions, app.state.tables
        with pytest.raises(RuntimeError, match="boom"):
            async with transaction(sessions) as session:
                await sampling_service.create_wave(session, tables, MINISTRY, wave_body("ROLLED-BACK"))
                assert await session.scalar(select(func.count()).select_from(tables["outbox"])) == 1
                raise RuntimeError("boom")
        sampling = await env.db("sampling")
        assert await sampling.outbox_rows() == []
        assert await sampling.count("wave") == 0
        assert await app.state.relay.publish_pending() == 0
        await env.settle()
        assert probe == []

        # The same path, committed, does publish (so the probe would have seen a leak).
        async with transaction(sessions) as session:
            await sampling_service.create_wave(session, tables, MINISTRY, wave_body("COMMITTED"))
        await eventually(lambda: len(probe) == 1)
    assert [e.payload().code for e in probe] == ["COMMITTED"]


# -- 3. a duplicate delivery has one effect -------------------------------------------------------


def audit_effect(table, calls: list, *, delay: float = 0.0, fail_first: int = 0):
    """A deliberately non-idempotent effect: one audit_log row per call."""

    async def effect(session, payload, envelope: Envelope) -> None:
        calls.append(envelope.id)
        await session.execute(
            table.insert().values(
                at=utcnow(), actor="test", role="system", action="effect", entity="event", entity_id=str(envelope.id)
            )
        )
        if delay:
            await asyncio.sleep(delay)  # keep the transaction (and the inbox row's lock) open
        if len(calls) <= fail_first:
            raise RuntimeError("effect failed")

    return effect


async def test_the_same_event_delivered_twice_takes_effect_once(env):
    survey = await env.db("survey")
    audit = survey.tables["audit_log"]
    calls, deliveries = [], []
    handler = idempotent_handler(survey.sessions, survey.inbox, "dupes", audit_effect(audit, calls))

    async def counted(e: Envelope) -> None:
        deliveries.append(e.id)
        await handler(e)

    bus = await env.bus()
    await bus.subscribe(Subscription(env.queue("dupes"), ["sipas.sampling.wave.#"], counted, service="survey"))
    sent = wave_created()
    await bus.publish(sent)
    await bus.publish(sent.model_copy())  # same id: a redelivery
    await eventually(lambda: len(deliveries) == 2)
    await env.settle()

    assert deliveries == [sent.id, sent.id]
    assert calls == [sent.id]
    assert await survey.count("audit_log", audit.c.entity_id == str(sent.id)) == 1
    assert await survey.count("inbox", survey.inbox.c.event_id == str(sent.id)) == 1
    assert await bus.dead_letter_count(env.queues[-1]) == 0


async def test_concurrent_deliveries_of_one_event_take_effect_once(env):
    """Several deliveries of one event at the same time (two consumers of a queue, a redelivery
    racing the original): the inbox's unique key lets one through. The effect holds its
    transaction open, so the others really wait on the key (ON CONFLICT under concurrency)."""
    survey = await env.db("survey")
    audit = survey.tables["audit_log"]
    calls: list = []
    handler = idempotent_handler(survey.sessions, survey.inbox, "racing", audit_effect(audit, calls, delay=0.3))
    sent = wave_created()

    await asyncio.gather(*(handler(sent.model_copy()) for _ in range(4)))

    assert calls == [sent.id]
    assert await survey.count("audit_log", audit.c.entity_id == str(sent.id)) == 1
    assert await survey.count("inbox", survey.inbox.c.event_id == str(sent.id)) == 1


async def test_a_failed_effect_keeps_no_inbox_row_so_the_retry_takes_effect(env):
    survey = await env.db("survey")
    audit = survey.tables["audit_log"]
    calls: list = []
    handler = idempotent_handler(survey.sessions, survey.inbox, "retrying", audit_effect(audit, calls, fail_first=1))
    sent = wave_created()

    with pytest.raises(RuntimeError):
        await handler(sent)
    assert await survey.count("inbox", survey.inbox.c.event_id == str(sent.id)) == 0
    assert await survey.count("audit_log", audit.c.entity_id == str(sent.id)) == 0

    await handler(sent)
    await handler(sent)
    assert calls == [sent.id, sent.id]
    assert await survey.count("inbox", survey.inbox.c.event_id == str(sent.id)) == 1
    assert await survey.count("audit_log", audit.c.entity_id == str(sent.id)) == 1


async def test_a_batch_is_one_transaction_that_skips_handled_events_and_keeps_nothing_if_one_fails(env):
    """The batch handler (what consumers use on a backlog): a redelivered event in a batch is
    skipped by the inbox, a failing effect rolls back the whole batch (no inbox row, no effect),
    and the per-event fallback then gives every event exactly one effect."""
    survey = await env.db("survey")
    audit = survey.tables["audit_log"]
    sent = [wave_created() for _ in range(5)]
    calls: list = []
    one = idempotent_handler(survey.sessions, survey.inbox, "batch", audit_effect(audit, calls))
    await one(sent[0])  # handled before: the batch must not apply it again

    failing = set()

    async def effect(session, payload, envelope: Envelope) -> None:
        await audit_effect(audit, calls)(session, payload, envelope)
        if envelope.id in failing:
            raise RuntimeError("effect failed")

    batch = idempotent_batch_handler(survey.sessions, survey.inbox, "batch", effect)
    failing.add(sent[3].id)
    with pytest.raises(RuntimeError):
        await batch(sent)
    for e in sent[1:]:
        assert await survey.count("inbox", survey.inbox.c.event_id == str(e.id)) == 0
        assert await survey.count("audit_log", audit.c.entity_id == str(e.id)) == 0

    failing.clear()
    await batch([*sent, sent[2].model_copy()])  # and a duplicate inside the batch itself
    await batch(sent)  # the whole batch redelivered
    for e in sent:
        assert await survey.count("inbox", survey.inbox.c.event_id == str(e.id)) == 1
        assert await survey.count("audit_log", audit.c.entity_id == str(e.id)) == 1


# -- 7. the relay publishes in order, and a failure stops the batch --------------------------------


class FlakyBus(InMemoryBus):
    """The in-process bus, refusing to publish chosen events (a broker that is down for them)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.refuse: set = set()
        self.published: list = []
        self.delay = 0.0

    async def publish_many(self, events) -> tuple[int, Exception | None]:
        """What the relay calls: the events before the first refused one go out, the rest not."""
        ids = [str(wire(e)["id"]) for e in events]
        taken = next((i for i, e in enumerate(ids) if e in self.refuse), len(events))
        if self.delay:
            await asyncio.sleep(self.delay)
        await super().publish_many(events[:taken])
        self.published.extend(ids[:taken])
        return taken, ConnectionError("broker unavailable (test)") if taken < len(events) else None


async def recording_bus(queue: str) -> tuple[FlakyBus, list[str]]:
    """A started FlakyBus with one consumer that records the ids it handles, in order."""
    bus = FlakyBus()
    await bus.start()
    received: list[str] = []

    async def record(e: Envelope) -> None:
        received.append(str(e.id))

    await bus.subscribe(Subscription(queue, ["sipas.#"], record))
    return bus, received


async def stage_waves(db: ServiceDB, codes: list[str]) -> list[str]:
    """Create waves, one transaction each; return their outbox event ids in commit order."""
    for code in codes:
        async with transaction(db.sessions) as session:
            await sampling_service.create_wave(session, db.tables, MINISTRY, wave_body(code))
    return [r["event_id"] for r in await db.outbox_rows()]


async def test_the_relay_publishes_in_order_and_a_failure_holds_back_later_rows(env):
    sampling = await env.db("sampling")
    ids = await stage_waves(sampling, [f"ORDER-{i}" for i in range(8)])
    bus, received = await recording_bus("order")
    relay = OutboxRelay(sampling.sessions, sampling.outbox, bus, service="sampling", poll_seconds=0.05)
    try:
        bus.refuse = {ids[3]}
        assert await relay.publish_pending() == 3
        assert await relay.publish_pending() == 0  # still refused: nothing after it goes out
        rows = await sampling.outbox_rows()
        assert [r["published_at"] is not None for r in rows] == [True] * 3 + [False] * 5
        assert rows[3]["attempts"] == 2 and "broker unavailable" in rows[3]["last_error"]
        assert [r["attempts"] for r in rows[4:]] == [0] * 4
        assert bus.published == ids[:3]

        bus.refuse = set()  # the broker is back: the running relay catches up on its own
        relay.start()
        await eventually(lambda: _equals(relay.backlog(), 0))
        await bus.drain()
        assert bus.published == ids
        assert received == ids
        rows = await sampling.outbox_rows()
        assert all(r["published_at"] is not None for r in rows)
        assert rows[3]["attempts"] == 2
    finally:
        await relay.stop()
        await bus.close()


async def test_the_relay_works_through_the_backlog_in_batches_in_order(env):
    sampling = await env.db("sampling")
    ids = await stage_waves(sampling, [f"BATCH-{i}" for i in range(7)])
    bus = FlakyBus()
    await bus.start()
    relay = OutboxRelay(sampling.sessions, sampling.outbox, bus, service="sampling", batch=3)
    try:
        assert [await relay.publish_pending() for _ in range(4)] == [3, 3, 1, 0]
        assert bus.published == ids
    finally:
        await bus.close()


async def stage_groups(db: ServiceDB, sizes: list[int]) -> list[list[str]]:
    """Stage groups of wave.created events, one transaction and one outbox row each (a size of
    1 is a single event); return each group's event ids, in order."""
    groups = []
    for g, size in enumerate(sizes):
        envelopes = [wave_created(f"G{g}-{i}").model_dump(mode="json") for i in range(size)]
        async with transaction(db.sessions) as session:
            await add_envelopes(session, db.outbox, envelopes)
        groups.append([e["id"] for e in envelopes])
    return groups


async def test_a_group_row_goes_out_event_by_event_and_resumes_where_the_broker_stopped(env):
    """One outbox row holding several events (a Vietnam Post batch stages 10,000 that way): each
    event is published on its own, in order; if the broker fails halfway, the row remembers how
    many went out and the next round starts after them (none twice, none skipped)."""
    sampling = await env.db("sampling")
    groups = await stage_groups(sampling, [1, 7, 1])
    ids = [i for g in groups for i in g]
    rows = await sampling.outbox_rows()
    assert [r["size"] for r in rows] == [1, 7, 1]
    assert [r["event_id"] for r in rows] == [g[0] for g in groups]
    bus, received = await recording_bus("groups")
    relay = OutboxRelay(sampling.sessions, sampling.outbox, bus, service="sampling")
    try:
        assert await relay.backlog() == 9  # events, not rows
        bus.refuse = {groups[1][4]}
        assert await relay.publish_pending() == 5  # the single, then four of the group
        rows = await sampling.outbox_rows()
        assert [r["published_at"] is not None for r in rows] == [True, False, False]
        assert (rows[1]["sent"], rows[1]["attempts"]) == (4, 1) and "broker unavailable" in rows[1]["last_error"]
        assert await relay.backlog() == 4

        bus.refuse = set()
        assert await relay.publish_pending() == 4
        await bus.drain()
        assert bus.published == ids
        assert received == ids
        rows = await sampling.outbox_rows()
        assert all(r["published_at"] is not None for r in rows)
        assert [r["sent"] for r in rows] == [1, 7, 1]
        assert await relay.backlog() == 0
    finally:
        await bus.close()


async def test_a_round_takes_at_most_the_event_budget_and_the_next_resumes_a_group_it_cut(env):
    sampling = await env.db("sampling")
    groups = await stage_groups(sampling, [4, 3, 1, 10, 1])
    bus = FlakyBus()
    await bus.start()
    relay = OutboxRelay(sampling.sessions, sampling.outbox, bus, service="sampling", event_budget=5)
    try:
        assert await relay.backlog() == 19
        assert await relay.publish_pending() == 5  # the group of 4, one of the group of 3
        assert [(r["sent"], r["published_at"] is not None) for r in await sampling.outbox_rows()] == [
            (4, True), (1, False), (0, False), (0, False), (0, False)]
        assert await relay.backlog() == 14
        assert [await relay.publish_pending() for _ in range(4)] == [5, 5, 4, 0]
        assert bus.published == [i for g in groups for i in g]  # in order, each once
        assert all(r["published_at"] is not None and r["attempts"] == 0 for r in await sampling.outbox_rows())
    finally:
        await bus.close()


async def test_the_running_relay_drains_groups_beyond_one_round(env):
    """The relay's loop goes on while a round was cut short by the budget, not only when it
    claimed ``batch`` rows: three 10-event groups with a budget of 5 need three rounds."""
    sampling = await env.db("sampling")
    groups = await stage_groups(sampling, [10, 10, 10])
    bus = FlakyBus()
    await bus.start()
    relay = OutboxRelay(sampling.sessions, sampling.outbox, bus, service="sampling", event_budget=5,
                        poll_seconds=30)
    relay.start()
    try:
        await eventually(lambda: _equals(relay.backlog(), 0), timeout=5)  # well before a second poll
        assert bus.published == [i for g in groups for i in g]
    finally:
        await relay.stop()
        await bus.close()


async def hooked_relay(db: ServiceDB, bus: EventBus, **kw) -> OutboxRelay:
    """A relay whose database's sessions hand it what they stage (as every service's do)."""
    db.sessions = session_factory(db.engine)
    relay = OutboxRelay(db.sessions, db.outbox, bus, service=db.name, **kw)
    install_commit_hooks(db.sessions, relay)
    return relay


async def spoil_stored_envelopes(db: ServiceDB) -> None:
    """Overwrite every stored envelope with what no consumer could take: whatever the relay
    publishes correctly after this it took from memory."""
    async with transaction(db.sessions) as session:
        await session.execute(db.outbox.update().values(envelope='{"spoiled": true}'))


async def test_the_relay_publishes_what_this_process_committed_from_memory_in_order(env):
    """A committed group reaches the relay with its envelopes (no read-back of the row), a group
    cut by the round's budget resumes from memory too, and the memory is let go once published."""
    sampling = await env.db("sampling")
    bus, received = await recording_bus("memory")
    relay = await hooked_relay(sampling, bus, event_budget=4)
    try:
        groups = await stage_groups(sampling, [1, 10, 3])
        assert relay._staged_events == 14
        await spoil_stored_envelopes(sampling)
        assert [await relay.publish_pending() for _ in range(5)] == [4, 4, 4, 2, 0]
        await bus.drain()
        ids = [i for g in groups for i in g]
        assert bus.published == ids and received == ids
        assert relay._staged_events == 0 and not relay._staged
        assert all(r["published_at"] is not None and r["sent"] == r["size"] for r in await sampling.outbox_rows())
    finally:
        await bus.close()


async def test_rolled_back_groups_never_reach_the_relay_and_old_ones_are_read_back(env):
    """Only a commit hands a group over: a rolled-back transaction's, or a rolled-back
    savepoint's, is dropped while the rest of the transaction's goes. Past ``staged_limit``
    events the oldest groups leave memory and the relay reads them back from their rows."""
    sampling = await env.db("sampling")
    bus, received = await recording_bus("memory-limit")
    relay = await hooked_relay(sampling, bus, staged_limit=6)
    try:
        with contextlib.suppress(RuntimeError):
            async with transaction(sampling.sessions) as session:
                await add_envelopes(session, sampling.outbox, [wave_created("RB-1").model_dump(mode="json")])
                raise RuntimeError("rolled back")
        kept = [wave_created(f"KEPT-{i}").model_dump(mode="json") for i in range(2)]
        async with transaction(sampling.sessions) as session:
            await add_envelopes(session, sampling.outbox, kept[:1])
            with contextlib.suppress(RuntimeError):
                async with session.begin_nested():
                    await add_envelopes(session, sampling.outbox, [wave_created("RB-2").model_dump(mode="json")])
                    raise RuntimeError("savepoint rolled back")
            await add_envelopes(session, sampling.outbox, kept[1:])
        assert list(relay._staged) == [e["id"] for e in kept]

        groups = await stage_groups(sampling, [4, 3])  # 2 + 4 + 3 > 6: the oldest two groups leave
        assert list(relay._staged) == [groups[1][0]] and relay._staged_events == 3
        assert await relay.publish_pending() == 9
        await bus.drain()
        assert received == [e["id"] for e in kept] + [i for g in groups for i in g]
    finally:
        await bus.close()


async def test_the_relay_claims_through_the_unpublished_index_however_many_rows_were_published(env):
    """Behind a long-published history and a backlog, the claim must read the unpublished index,
    not walk the primary key past every published row (it did, on PostgreSQL: 300 events/s)."""
    from sqlalchemy import text

    sampling = await env.db("sampling")
    now = utcnow()
    envelope = make_event(WaveCreated(wave_id=uuid.uuid4(), code="PLAN", name="Plan", scope="national",
                                      province_code=None, year=2026, methodology_version="sipas-2017",
                                      fieldwork_start=None, fieldwork_end=None, status="draft")).model_dump(mode="json")
    rows = [{"event_id": str(uuid.uuid4()), "type": envelope["type"], "envelope": orjson.dumps(envelope).decode(), "created_at": now,
             "published_at": now if i < 20_000 else None} for i in range(30_000)]
    async with transaction(sampling.sessions) as session:
        await session.execute(sampling.outbox.insert(), rows)
    relay = OutboxRelay(sampling.sessions, sampling.outbox, InMemoryBus(), service="sampling")
    async with sampling.engine.connect() as conn:
        dialect = conn.dialect.name
        await conn.execute(text("ANALYZE outbox" if dialect == "postgresql" else "ANALYZE"))
        sql = str(relay.claim_query(dialect).compile(conn.engine, compile_kwargs={"literal_binds": True}))
        explain = "EXPLAIN " if dialect == "postgresql" else "EXPLAIN QUERY PLAN "
        plan = "\n".join(str(r[-1]) for r in (await conn.execute(text(explain + sql))).all())
    assert "ix_outbox_unpublished" in plan, plan
    assert "pkey" not in plan and "Sort" not in plan, plan
    async with sampling.sessions() as session:
        claimed = [r[0] for r in (await session.execute(relay.claim_query(dialect))).all()]
    first_unpublished = (await sampling.outbox_rows())[20_000]["seq"]
    assert claimed == list(range(first_unpublished, first_unpublished + relay.batch))


async def test_the_relay_deletes_published_rows_past_the_retention_and_nothing_else(env, monkeypatch):
    import datetime as dt

    import shared.outbox as outbox_module

    sampling = await env.db("sampling")
    now = utcnow()
    envelope = make_event(WaveCreated(wave_id=uuid.uuid4(), code="OLD", name="Old", scope="national",
                                      province_code=None, year=2026, methodology_version="sipas-2017",
                                      fieldwork_start=None, fieldwork_end=None, status="draft")).model_dump(mode="json")

    def row(published_at):
        return {"event_id": str(uuid.uuid4()), "type": envelope["type"], "envelope": orjson.dumps(envelope).decode(),
                "created_at": now - dt.timedelta(days=30), "published_at": published_at}

    old = [row(now - dt.timedelta(days=8, minutes=i)) for i in range(25)]
    kept = [row(now - dt.timedelta(days=6)) for _ in range(5)] + [row(None) for _ in range(5)]
    async with transaction(sampling.sessions) as session:
        await session.execute(sampling.outbox.insert(), old + kept)
    keep_ids = {r["event_id"] for r in kept}

    forever = OutboxRelay(sampling.sessions, sampling.outbox, InMemoryBus(), service="sampling")
    assert await forever.prune() == 0 and len(await sampling.outbox_rows()) == 35

    monkeypatch.setattr(outbox_module, "PRUNE_CHUNK", 10)  # three chunks: 10, 10, 5
    relay = OutboxRelay(sampling.sessions, sampling.outbox, InMemoryBus(), service="sampling", retention_days=7)
    assert await relay.prune() == 25
    assert {r["event_id"] for r in await sampling.outbox_rows()} == keep_ids
    assert await relay.prune() == 0

    # The running relay prunes on its own, between rounds.
    async with transaction(sampling.sessions) as session:
        await session.execute(sampling.outbox.insert(), [row(now - dt.timedelta(days=9)) for _ in range(3)])
    bus = InMemoryBus()
    await bus.start()
    running = OutboxRelay(sampling.sessions, sampling.outbox, bus, service="sampling", poll_seconds=0.05,
                          retention_days=7)
    running.start()
    try:
        async def only_kept():
            assert {r["event_id"] for r in await sampling.outbox_rows()} == keep_ids
        await eventually(only_kept, timeout=10)
    finally:
        await running.stop()
        await bus.close()


@pytest.mark.services
async def test_two_relays_on_one_outbox_publish_each_row_once(env):
    """Replicas of a service each run a relay; FOR UPDATE SKIP LOCKED keeps them from
    publishing a row twice (PostgreSQL)."""
    sampling = await env.db("sampling")
    assert sampling.engine.dialect.name == "postgresql"
    ids = await stage_waves(sampling, [f"TWO-{i}" for i in range(10)])
    buses = [FlakyBus(), FlakyBus()]
    for b in buses:
        b.delay = 0.02  # publishing takes a while: the two relays overlap
        await b.start()
    relays = [OutboxRelay(sampling.sessions, sampling.outbox, b, service="sampling") for b in buses]
    try:
        counts = await asyncio.gather(*(r.publish_pending() for r in relays))
        assert sum(counts) == 10
        published = [str(i) for b in buses for i in b.published]
        assert sorted(published) == sorted(ids)  # each once, none twice
    finally:
        for b in buses:
            await b.close()


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected
