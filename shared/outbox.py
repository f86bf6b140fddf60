"""Transactional outbox and idempotent inbox.

Publishing an event straight after a commit loses it if the process dies in between. Instead,
``add_event`` writes the event as a row in the same transaction as the change it announces; the
relay publishes rows in order and marks them sent only after the broker confirmed. A crash at any
point leaves either no change and no event, or both (published on the next start, possibly twice).

Consumers get at-least-once delivery, so ``idempotent_handler`` records each event id in the
``inbox`` table in the same transaction as the handler's effect: a redelivered event finds its id
and changes nothing. ``INSERT ... ON CONFLICT DO NOTHING`` (both SQLite and PostgreSQL) makes this
safe even for two concurrent deliveries of one event: the second waits on the unique key, then
sees the conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Table, bindparam, case, func, select, text, update
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from shared.bus import EventBus
from shared.db import UTCDateTime, json_loads, insert_for, utcnow
from shared.events import Envelope, EventData, make_event
from shared.observability import EVENTS_PUBLISHED, reset_correlation_id, set_correlation_id

log = logging.getLogger("sipas.outbox")


@functools.lru_cache(maxsize=16)
def _inbox_insert(dialect: str, inbox: Table):
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING event_id`` into the inbox, built once:
    constructing the statement cost more than running it, on every event."""
    return insert_for(dialect, inbox).on_conflict_do_nothing(index_elements=["consumer", "event_id"]).returning(inbox.c.event_id)


async def add_event(session: AsyncSession, outbox: Table, data: EventData) -> Envelope:
    """Stage an event in the caller's transaction; it is published only if that commits."""
    envelope = make_event(data)
    await add_envelopes(session, outbox, [envelope.model_dump(mode="json")])
    return envelope


async def add_envelopes(session: AsyncSession, outbox: Table, envelopes: list[dict]) -> None:
    """Stage events already built as envelope dicts (``make_event(...).model_dump(mode="json")``
    or the same shape built by hand on a bulk path) as one outbox row: a group, published in
    list order, each event with its own id as if staged one by one.

    The group is encoded once by orjson and inserted as one value: 10,000 envelopes are one row
    to write, claim and mark instead of 10,000."""
    if envelopes:
        await add_group(session, outbox, encode_group(envelopes))


@dataclass(frozen=True)
class StagedGroup:
    """One outbox row about to be staged: its column values (the envelopes encoded) and the
    envelopes themselves, which this process's relay takes from memory once the row has
    committed instead of reading and parsing the row back (``OutboxRelay.committed``)."""

    row: dict[str, Any]
    envelopes: list[dict]


def encode_group(envelopes: list[dict]) -> StagedGroup:
    """The outbox row of a non-empty group, its envelopes encoded. Apart from ``add_group`` so
    that a bulk path can build it while the database runs its previous statement."""
    if len(envelopes) == 1:
        body: Any = envelopes[0]
        kind = body["type"]
    else:
        body = envelopes
        kind = ", ".join(dict.fromkeys(e["type"] for e in envelopes))[:200]
    return StagedGroup({"event_id": envelopes[0]["id"], "type": kind, "envelope": orjson.dumps(body).decode(),
                        "size": len(envelopes), "created_at": utcnow()}, envelopes)


async def add_group(session: AsyncSession, outbox: Table, group: StagedGroup) -> None:
    """Insert a group built by ``encode_group`` in the caller's transaction; once that commits,
    the relay of this process (``install_commit_hooks``) is handed the envelopes and woken."""
    await session.execute(_group_insert(session.bind.dialect.name, outbox.name), group.row)
    relay = session.info.get("outbox_relay")
    if relay is not None:
        session.info.setdefault("after_commit", []).append(functools.partial(relay.committed, group))


@functools.lru_cache(maxsize=16)
def _group_insert(dialect: str, table: str):
    return text(f"INSERT INTO {table} (event_id, type, envelope, size, created_at) "
                f"VALUES (:event_id, :type, :envelope, :size, :created_at)").bindparams(
        bindparam("created_at", type_=UTCDateTime()))


def row_envelopes(envelope: str) -> list[dict]:
    """The envelopes an outbox row holds (one, or its group's list), as dicts."""
    body = json_loads(envelope)
    return body if isinstance(body, list) else [body]


# The relay deletes old published rows at most this often, between rounds (retention_days).
PRUNE_EVERY_SECONDS = 600.0
PRUNE_CHUNK = 10_000


class OutboxRelay:
    """Publishes outbox rows in order; one per service process.

    A round hands the bus up to ``batch`` rows (and at most ``event_budget`` events) at once
    (``EventBus.publish_many``): RabbitMQ confirms them together, and the in-process bus lets
    consumers take them as one batch.

    It polls (``poll_seconds``) and is also woken right after a commit that staged events, so the
    usual latency is a few milliseconds while a missed wake-up costs at most one poll interval.
    On PostgreSQL, rows are claimed with ``FOR UPDATE SKIP LOCKED`` so several replicas of a
    service can run relays without publishing a row twice in the normal case.

    **Envelopes from memory.** A row staged by this process is handed to the relay when it
    commits (``committed``), envelopes and all, so the round that claims it publishes them as
    they are instead of reading the row back and parsing it: for a 5,000-form Vietnam Post
    batch that was 8 MB read and 10,000 envelopes parsed and validated, a fifth of the push's
    CPU. The row stays the durable copy and the claim, the order and the marking are the same
    either way; the memory only saves the read. It holds at most ``staged_limit`` events (the
    oldest are dropped, to be read back as before: a relay far behind, or rows another replica
    published).

    The relay does not validate envelopes: they were built from validated payloads
    (``make_event``) or checked against their contract on a bulk path (survey's ``Payload``),
    and every consumer validates what it receives, dead-lettering what fails. A relay that
    refused a row would hold back every later event of its service.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Table,
        bus: EventBus,
        *,
        service: str,
        poll_seconds: float = 0.5,
        batch: int = 200,
        event_budget: int = 10_000,
        retention_days: float = 0.0,
        staged_limit: int | None = None,
    ) -> None:
        self.sessions = sessions
        self.outbox = outbox
        self.bus = bus
        self.service = service
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.event_budget = event_budget
        self.retention = dt.timedelta(days=retention_days) if retention_days > 0 else None
        self._pruned_at = -PRUNE_EVERY_SECONDS  # so the first idle moment prunes
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._claims: dict[str, Any] = {}
        # Committed rows' envelopes by the row's event_id, oldest first, and how many events.
        self._staged: OrderedDict[str, list[dict]] = OrderedDict()
        self._staged_events = 0
        self.staged_limit = 4 * event_budget if staged_limit is None else staged_limit

    def notify(self) -> None:
        self._wake.set()

    def committed(self, group: StagedGroup) -> None:
        """A row staged by this process has committed: keep its envelopes for the round that
        claims it, and wake the relay (called from the session's after-commit hook)."""
        key = group.row["event_id"]
        self._staged[key] = group.envelopes
        self._staged_events += len(group.envelopes)
        while self._staged_events > self.staged_limit and self._staged:
            _, dropped = self._staged.popitem(last=False)
            self._staged_events -= len(dropped)
        self._wake.set()

    def _forget(self, key: str) -> None:
        dropped = self._staged.pop(key, None)
        if dropped is not None:
            self._staged_events -= len(dropped)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay:{self.service}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # Last attempt to flush what is committed (a clean shutdown leaves nothing behind).
        with contextlib.suppress(Exception):
            await self.publish_pending()

    async def _run(self) -> None:
        while True:
            try:
                while (await self._round())[1]:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay of %s failed; retrying", self.service)
            if self.retention is not None and time.monotonic() - self._pruned_at >= PRUNE_EVERY_SECONDS:
                self._pruned_at = time.monotonic()
                try:
                    await self.prune()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("pruning the outbox of %s failed; trying again later", self.service)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
            self._wake.clear()

    def claim_query(self, dialect: str):
        """The next ``batch`` unpublished rows, oldest first: ``seq``, ``event_id``, ``size``,
        ``sent`` and the envelope of single-event rows (a group's list is read only once the round takes it,
        ``publish_pending``).

        Ordered by ``(published_at, seq)``, the unpublished index's own order, though
        ``published_at`` is NULL in every row it returns: ordered by ``seq`` alone, PostgreSQL
        preferred walking the primary key from the start, past every published row, once its
        statistics said most rows were unpublished. Behind a 200,000-event backlog of an
        outbox that had published 200,000 before, that was 100 ms a round against 3.6 ms: the
        relay fell to 300 events a second. SQLite, once ``ANALYZE`` has run, makes the same
        choice (a scan in rowid order) whatever the order, so it is told the index by name
        (``INDEXED BY``, which SQLAlchemy does not render for SQLite)."""
        if dialect not in self._claims:  # built once: building it cost more than running it
            self._claims[dialect] = self._claim_query(dialect)
        return self._claims[dialect]

    def _claim_query(self, dialect: str):
        t = self.outbox
        single = case((t.c.size == 1, t.c.envelope)).label("envelope")
        if dialect == "sqlite":
            return text(
                f"SELECT seq, event_id, size, sent, CASE WHEN size = 1 THEN envelope END AS envelope FROM {t.name} "
                "INDEXED BY ix_outbox_unpublished WHERE published_at IS NULL ORDER BY published_at, seq LIMIT :n"
            ).bindparams(n=self.batch).columns(t.c.seq, t.c.event_id, t.c.size, t.c.sent, t.c.envelope)
        query = (
            select(t.c.seq, t.c.event_id, t.c.size, t.c.sent, single)
            .where(t.c.published_at.is_(None))
            .order_by(t.c.published_at, t.c.seq)
            .limit(self.batch)
        )
        if dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return query

    async def publish_pending(self) -> int:
        """Publish one round: up to ``batch`` rows and ``event_budget`` events (a group that
        does not fit is published in part and resumed by the next round). Returns how many events
        were published."""
        return (await self._round())[0]

    async def _round(self) -> tuple[int, bool]:
        """(events published, whether more rows were waiting behind this round's)."""
        t = self.outbox
        async with self.sessions() as session, session.begin():
            claimed = (await session.execute(self.claim_query(session.bind.dialect.name))).all()
            # The oldest rows, up to the round's event budget; a group may be taken in part (the
            # rest of it starts the next round): [seq, event_id, size, sent, take, envelope]
            rows, budget = [], self.event_budget
            for seq, key, size, sent, envelope in claimed:
                if budget <= 0:
                    break
                take = min(size - sent, budget)
                rows.append([seq, key, size, sent, take, envelope])
                budget -= take
            unread = [r[0] for r in rows if r[2] > 1 and r[1] not in self._staged]
            if unread:  # groups staged by another process, or dropped from memory
                texts = dict((await session.execute(select(t.c.seq, t.c.envelope).where(t.c.seq.in_(unread)))).all())
            envelopes: list[dict] = []
            for seq, key, size, sent, take, envelope in rows:
                staged = self._staged.get(key)
                if staged is None:
                    staged = row_envelopes(envelope if size == 1 else texts[seq])
                    if size > 1:
                        await asyncio.sleep(0)  # the requests on this loop run between groups
                envelopes += staged[sent:sent + take]
            published, error = await self.bus.publish_many(envelopes) if envelopes else (0, None)
            for kind, n in Counter(e["type"] for e in envelopes[:published]).items():
                EVENTS_PUBLISHED.labels(self.service, kind).inc(n)
            done, unfinished, left = [], None, published
            for seq, key, size, sent, take, _ in rows:
                n = min(left, take)
                left -= n
                if sent + n < size:  # cut by the budget or by the broker: it resumes here
                    unfinished = (seq, sent + n)
                    break
                done.append(seq)
                self._forget(key)
            if done:
                await session.execute(update(t).where(t.c.seq.in_(done)).values(published_at=utcnow(), sent=t.c.size))
            if error is not None and unfinished is not None:  # broker down: keep the rest, retry later, in order
                seq, sent = unfinished
                await session.execute(update(t).where(t.c.seq == seq).values(
                    sent=sent, attempts=t.c.attempts + 1, last_error=str(error)[:500]))
                log.warning("publishing %s failed: %s", envelopes[published]["type"], error)
            elif unfinished is not None:
                await session.execute(update(t).where(t.c.seq == unfinished[0]).values(sent=unfinished[1]))
        # The backlog gauge is counted when /metrics is scraped (shared/service.py), not here:
        # counting every unpublished row after each round made a relay draining a 400,000-event
        # backlog scan it once per 200 rows, beside the requests that were filling it.
        return published, error is None and (len(claimed) == self.batch or budget <= 0)

    async def prune(self, now: dt.datetime | None = None) -> int:
        """Delete rows published more than the retention period ago; return how many.

        A published row is only history (nothing re-reads it: consumers keep their own inbox),
        and a national wave leaves hundreds of thousands of them, a few kilobytes each, in the
        services that stage answers. Deleted ``PRUNE_CHUNK`` at a time, each chunk its own
        transaction, so no long lock holds back the writers staging new events."""
        if self.retention is None:
            return 0
        cutoff = (now or utcnow()) - self.retention
        t, total = self.outbox, 0
        while True:
            async with self.sessions() as session, session.begin():
                oldest = (select(t.c.seq).where(t.c.published_at < cutoff)
                          .order_by(t.c.published_at, t.c.seq).limit(PRUNE_CHUNK).scalar_subquery())
                deleted = (await session.execute(t.delete().where(t.c.seq.in_(oldest)))).rowcount or 0
            total += deleted
            if deleted < PRUNE_CHUNK:
                return total

    async def backlog(self) -> int:
        async with self.sessions() as session:
            return int(
                await session.scalar(
                    select(func.coalesce(func.sum(self.outbox.c.size - self.outbox.c.sent), 0))
                    .where(self.outbox.c.published_at.is_(None))
                )
                or 0
            )


async def record_inbox(session: AsyncSession, inbox: Table, consumer: str, event: Envelope) -> bool:
    """Record that ``consumer`` handled ``event``; False if it already had."""
    return bool(await record_inbox_many(session, inbox, consumer, [event]))


async def record_inbox_many(session: AsyncSession, inbox: Table, consumer: str, events: list[Envelope]) -> set[str]:
    """Record several events in one statement; return the ids that were new (the others were
    handled before, or appear twice in ``events``)."""
    now = utcnow()
    rows = list({str(e.id): {"consumer": consumer, "event_id": str(e.id), "type": e.type, "received_at": now}
                 for e in events}.values())
    result = await session.execute(_inbox_insert(session.bind.dialect.name, inbox), rows)
    return set(result.scalars())


EffectFn = Callable[[AsyncSession, Any, Envelope], Awaitable[None]]


def idempotent_handler(
    sessions: async_sessionmaker[AsyncSession], inbox: Table, consumer: str, effect: EffectFn
) -> Callable[[Envelope], Awaitable[None]]:
    """Wrap ``effect(session, payload, envelope)`` so each event takes effect exactly once.

    The inbox row and the effect share one transaction: if the effect fails, neither is kept and
    the bus retries; if it succeeds, a redelivery is recognised and skipped.
    """

    async def handle(event: Envelope) -> None:
        token = set_correlation_id(event.correlation_id)
        try:
            payload = event.payload()
            async with sessions() as session, session.begin():
                if not await record_inbox(session, inbox, consumer, event):
                    log.info("skipping %s %s: already handled", event.type, event.id)
                    return
                await effect(session, payload, event)
            log.info("handled %s", event.type, extra={"event_id": str(event.id), "consumer": consumer})
        finally:
            reset_correlation_id(token)

    return handle


def idempotent_batch_handler(
    sessions: async_sessionmaker[AsyncSession], inbox: Table, consumer: str, effect: EffectFn,
    batch_effect: Callable[[AsyncSession, list[tuple[Any, Envelope]]], Awaitable[None]] | None = None,
) -> Callable[[list[Envelope]], Awaitable[None]]:
    """``idempotent_handler`` for several events in one transaction: the same inbox rows and
    effects, one commit. If any effect fails nothing is kept, and the bus falls back to the
    per-event handler (``EventBus.handle_batch``). ``batch_effect``, if given, takes all the
    batch's new events at once instead of ``effect`` one by one."""

    async def handle_batch(events: list[Envelope]) -> None:
        async with sessions() as session, session.begin():
            new = await record_inbox_many(session, inbox, consumer, events)
            fresh: list[Envelope] = []
            for event in events:
                key = str(event.id)
                if key not in new:
                    log.info("skipping %s %s: already handled", event.type, event.id)
                    continue
                new.discard(key)  # a second copy in the same batch is a redelivery too
                fresh.append(event)
            if batch_effect is not None:
                if fresh:
                    await batch_effect(session, [(event.payload(), event) for event in fresh])
            else:
                for event in fresh:
                    token = set_correlation_id(event.correlation_id)
                    try:
                        await effect(session, event.payload(), event)
                    finally:
                        reset_correlation_id(token)
        log.info("handled %d events", len(events), extra={"consumer": consumer})

    return handle_batch


def install_commit_hooks(sessions: async_sessionmaker[AsyncSession], relay: OutboxRelay) -> None:
    """Make sessions from this factory hand the relay what they staged, right after the commit
    (``OutboxRelay.committed``: the envelopes, and a wake-up)."""
    sessions.kw["info"] = {**sessions.kw.get("info", {}), "outbox_relay": relay}


@sa_event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    session.info.pop("savepoint_marks", None)
    for fn in session.info.pop("after_commit", []):
        fn()


@sa_event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction) -> None:
    if transaction.nested:  # what was to run after the commit before this savepoint began
        session.info.setdefault("savepoint_marks", {})[transaction] = len(session.info.get("after_commit", []))


@sa_event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit(session: Session, previous_transaction) -> None:
    """What a rolled-back transaction, or savepoint, meant to do after the commit never happens:
    a session that goes on and commits must not announce the rolled-back change."""
    if previous_transaction.nested:
        mark = session.info.get("savepoint_marks", {}).pop(previous_transaction, None)
        if mark is not None and "after_commit" in session.info:
            del session.info["after_commit"][mark:]
    elif previous_transaction.parent is None:
        session.info.pop("after_commit", None)
        session.info.pop("savepoint_marks", None)
