"""Survey benchmarks (issue 4).

    python -m bench.survey                 # 200,000 forms pushed in 5,000-form batches; 1,000 online answers
    python -m bench.survey --quick         # 20,000 forms, 300 online answers: a smoke run
    python -m bench.survey --backend sqlite|postgresql|both   (default: both; PostgreSQL is skipped when unreachable)
    python -m bench.survey --pushers 2     # two Vietnam Post requests in flight at once (default one)
    python -m bench.survey --forms 50000   # another number of pushed forms (A/B runs between two checkouts)
    python -m bench.survey --bus rabbitmq  # the relay publishes to RabbitMQ (a durable queue takes the events)

1. **Vietnam Post answer batches**: completed forms pushed through the HTTP API
   (``POST /v1/vnpost/answer-batches``, 5,000 forms per request, in-process ASGI, one request at a
   time unless ``--pushers``), sustained over the whole run: each record validated against ``sipas-2017``, the
   response row, the form's status move and its history, two outbox events per form
   (``response.submitted``, ``form.status_changed``), the batch and its per-record results,
   with the outbox relay publishing the events meanwhile. Bodies are JSON-encoded before the
   clock starts (the sender's work, on the sender's machine). Baseline: a bare bulk insert of
   the same response rows (5,000-row executemany per transaction) into a copy of the
   ``response`` table with its keys (primary key, one response per form, the wave index) in the
   same database, timed once the relay is idle. The note gives the ratio against a copy with the
   primary key only too (the baseline before 2026-12-06). Target on
   PostgreSQL: ≥ 0.35 of the baseline's rate.
2. **Online submissions**: ``POST /v1/online/forms/{code}/response`` one after another on one
   core (event loop): requests per second and p99 latency.

Only the survey service runs (its relay publishes to the in-process bus, which has no other
consumer), so the figures are the service's own. With ``--bus rabbitmq`` the relay publishes to
RabbitMQ (``SIPAS_BENCH_BUS_URL``, a throwaway exchange) with one durable queue bound to every
survey event, as verification's would be: the production path, broker and all on this machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import Result, parser, report, drop_schemas

PG_URL = os.environ.get("SIPAS_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BUS_URL = os.environ.get("SIPAS_BENCH_BUS_URL", "amqp://guest:guest@127.0.0.1:5672/")
BATCH = 5000


def _answers(m, i: int) -> dict:
    answers = {item.code: 1 + (i + j) % 5 for j, item in enumerate(m.items()) if item.type == "likert5"}
    answers[m.expectation.code] = [o.code for o in m.expectation.options][: 1 + i % 2]
    for q in m.profile:
        answers[q.code] = q.options[i % len(q.options)].code
    return answers


async def _pg_reachable() -> bool:
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(PG_URL.replace("+asyncpg", "")), 3)
        await conn.close()
        return True
    except Exception:
        return False


async def _run(backend: str, n_forms: int, n_online: int, pushers: int = 1, bus: str = "memory") -> list[Result]:
    import httpx
    from sqlalchemy import func, select, text

    from services.embedded import embedded_stack
    from services.survey.documents import load_builtin
    from services.survey.models import form, response
    from shared.auth import Role, new_key, store_key
    from shared.contracts.sampling import SampledUnit, SampleDrawn, StratumSummary, WaveCreated
    from shared.db import utcnow
    from shared.events import make_event
    from shared.settings import PlatformSettings

    uid = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="sipas-bench-survey-"))
    common = dict(environment="test", data_dir=tmp, outbox_poll_seconds=0.2, log_json=False, log_level="WARNING")
    if bus == "rabbitmq":
        common.update(bus_url=BUS_URL, exchange=f"bench-{uid}", queue_prefix=f"bench-{uid}")
    label = backend if bus == "memory" else f"{backend}, RabbitMQ"
    if backend == "postgresql":
        platform = PlatformSettings(**common, database_url=PG_URL, schema_prefix=f"bench{uid}_")
    else:
        platform = PlatformSettings(**common)
    m = load_builtin("sipas-2017")
    results: list[Result] = []
    queues: list[str] = []  # on RabbitMQ, deleted at the end
    try:
        async with embedded_stack(platform, services=("survey",)) as stack:
            app = stack.apps["survey"]
            if bus == "rabbitmq":  # what verification's queue would take: every survey event, persisted
                queues += [*app.state.queues, f"bench-{uid}.sink"]
                await stack.bus.declare(f"bench-{uid}.sink", ["sipas.survey.#"])
            vn = new_key(Role.vnpost, "bench vnpost")
            async with app.state.sessions() as session, session.begin():
                await store_key(session, app.state.tables["api_key"], vn)
            headers = {"X-API-Key": vn.key}
            wave_id = uuid.uuid4()
            await stack.bus.publish(make_event(WaveCreated(
                wave_id=wave_id, code="BENCH-2026", name="Bench", scope="national", province_code=None, year=2026,
                methodology_version="sipas-2017", fieldwork_start=None, fieldwork_end=None, status="in_field")))
            total = n_forms + n_online
            units = [SampledUnit(unit_id=uuid.uuid4(), stratum=f"{i % 34:02d}-s", role="sample", order=0,
                                 province_code=f"{i % 34:02d}", commune_code=None, psu="p", ssu=None, pi=0.01, weight=100.0)
                     for i in range(total)]
            chunks = -(-total // BATCH)
            draw = uuid.uuid4()
            await asyncio.sleep(0.2)  # the wave event first
            for c in range(chunks):
                await stack.bus.publish(make_event(SampleDrawn(
                    wave_id=wave_id, draw_id=draw, methodology_version="sipas-2017", sample_hash="b", chunk=c, chunks=chunks,
                    strata=[StratumSummary(stratum="s", population=10**6, n=total, n_reserve=0)] if c == 0 else [],
                    units=units[c * BATCH:(c + 1) * BATCH])))
            codes_query = select(form.c.form_code).where(form.c.wave_id == str(wave_id)).order_by(form.c.serial)
            if bus == "memory":
                await stack.bus.drain()
            else:  # the broker delivers the draw to survey's queue: wait for its forms
                waited = time.perf_counter()
                while time.perf_counter() - waited < 600:
                    async with app.state.sessions() as session:
                        if await session.scalar(select(func.count()).select_from(codes_query.subquery())) >= total:
                            break
                    await asyncio.sleep(0.5)
            async with app.state.sessions() as session:
                codes = list((await session.scalars(codes_query)).all())
            assert len(codes) == total, f"{len(codes)} forms created, want {total}"
            # The setup's form.status_changed events have no consumer here and are not what is
            # measured: mark them published, so the relay starts the pushes with no backlog.
            outbox = app.state.tables["outbox"]
            async with app.state.sessions() as session, session.begin():
                await session.execute(outbox.update().where(outbox.c.published_at.is_(None)).values(published_at=utcnow()))
            print(f"  [{backend}] {total:,} forms ready", file=sys.stderr)
            push_codes, online_codes = codes[:n_forms], codes[n_forms:]
            bodies = [{"batch_id": f"bench-{uid}-{b}", "wave_id": str(wave_id),
                       "records": [{"form_code": c, "answers": _answers(m, i), "enumerator_id": "DTV-1"}
                                   for i, c in enumerate(push_codes[b * BATCH:(b + 1) * BATCH])]}
                      for b in range(-(-n_forms // BATCH))]

            # 1. Vietnam Post batches through the API. The bodies are encoded before the clock
            # starts: Vietnam Post's systems serialise them on their own machines, not in ours.
            payloads = [json.dumps(body).encode() for body in bodies]
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://survey", timeout=600)
            per_batch = []
            todo = list(zip(bodies, payloads))

            async def pusher() -> None:
                while todo:
                    body, payload = todo.pop(0)
                    t0 = time.perf_counter()
                    r = await client.post("/v1/vnpost/answer-batches", content=payload,
                                          headers={**headers, "content-type": "application/json"})
                    per_batch.append(time.perf_counter() - t0)
                    assert r.status_code == 200 and r.json()["counts"]["applied"] == len(body["records"]), r.text[:500]
                    if len(per_batch) % 10 == 0:
                        print(f"  [{backend}] {len(per_batch)}/{len(bodies)} batches, last {per_batch[-1]:.2f} s", file=sys.stderr)

            await _quiesce(app.state.engine)
            start, cpu_start = time.perf_counter(), time.process_time()
            await asyncio.gather(*(pusher() for _ in range(pushers)))
            api_seconds = time.perf_counter() - start
            cpu_per_batch = (time.process_time() - cpu_start) / len(bodies)  # this process: service, relay, client
            api_rate = n_forms / api_seconds

            # Baseline: the same response rows, bare bulk insert into a copy of the table, once the
            # relay has published the pushes' events (the baseline gets a quiet service; the
            # pushes paid for the relay running beside them, as they do in production).
            backlog_after_push = await app.state.relay.backlog()
            waited = time.perf_counter()
            while await app.state.relay.backlog() and time.perf_counter() - waited < 180:
                await asyncio.sleep(0.1)
            catch_up = time.perf_counter() - waited
            backlog_left = await app.state.relay.backlog()
            if backlog_left:  # the relay did not catch up: keep it from running beside the baseline
                await app.state.relay.stop()
            async with app.state.engine.begin() as conn:
                rows = [dict(r) for r in (await conn.execute(select(response).where(response.c.wave_id == str(wave_id)))).mappings()]
            for r in rows:
                r["id"] = str(uuid.uuid4())
                r["form_id"] = str(uuid.uuid4())
            bare_rates = {}
            for keyed in (True, False):
                await _quiesce(app.state.engine)
                bare = _response_copy(f"response_bare_{uid}", keyed)
                async with app.state.engine.begin() as conn:
                    await conn.run_sync(bare.metadata.create_all)
                start = time.perf_counter()
                for b in range(0, len(rows), BATCH):
                    async with app.state.engine.begin() as conn:
                        await conn.execute(bare.insert(), rows[b:b + BATCH])
                bare_rates[keyed] = len(rows) / (time.perf_counter() - start)
                async with app.state.engine.begin() as conn:
                    await conn.execute(text(f"DROP TABLE {bare.name}"))
            bare_rate = bare_rates[True]
            print(f"  [{backend}] baseline done; relay backlog after the pushes {backlog_after_push:,}, "
                  f"left before the baseline {backlog_left:,}", file=sys.stderr)
            results.append(Result(
                f"[{label}] Vietnam Post push, {n_forms:,} forms in {len(bodies)} batches"
                + (f", {pushers} pushers at once" if pushers > 1 else ""), api_rate, "forms/s",
                baseline=bare_rate, baseline_name="bare bulk insert of the response rows",
                target="≥ 0.35 of bare insert on PostgreSQL" if backend == "postgresql" else None,
                note=(f"against a copy with the primary key only (before 2026-12-06): {api_rate / bare_rates[False]:.2f}; "
                      f"batch of 5,000: median {statistics.median(per_batch):.2f} s, max {max(per_batch):.2f} s, "
                      f"{cpu_per_batch:.2f} s of this process's CPU; "
                      f"first quarter of the batches median {statistics.median(per_batch[:max(1, len(per_batch) // 4)]):.2f} s, "
                      f"last quarter {statistics.median(per_batch[-max(1, len(per_batch) // 4):]):.2f} s"),
                extra={"batches": len(bodies), "seconds": api_seconds, "cpu_seconds_per_batch": cpu_per_batch, "outbox_backlog_after_push": backlog_after_push,
                       "relay_catch_up_seconds": catch_up if not backlog_left else None,
                       "outbox_backlog_before_baseline": backlog_left}))

            if not backlog_left:  # sustained: until the last event of the pushes left the outbox
                caught_up = api_seconds + results[-1].extra["relay_catch_up_seconds"]
                results.append(Result(
                    f"[{label}] Vietnam Post push, pushed and published", n_forms / caught_up, "forms/s",
                    note=(f"{n_forms:,} forms pushed and their {2 * n_forms:,} events published by the relay: "
                          f"{api_seconds:.0f} s of pushes, then {caught_up - api_seconds:.1f} s until the outbox "
                          f"was empty ({backlog_after_push:,} events were waiting when the pushes ended)")))

            # 2. Online submissions, one at a time.
            from services.survey.online import RateLimiter

            app.state.online_limiter = RateLimiter(burst=10**9, per_second=10**9)
            latencies = []
            start = time.perf_counter()
            for i, code in enumerate(online_codes):
                t0 = time.perf_counter()
                r = await client.post(f"/v1/online/forms/{code}/response", json={"answers": _answers(m, i)})
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 201, r.text[:500]
            online_seconds = time.perf_counter() - start
            latencies.sort()
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            results.append(Result(f"[{label}] online submissions, {n_online:,} sequential", n_online / online_seconds,
                                  "requests/s", note=f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
                                  extra={"p99_ms": p99 * 1000}))
            results.append(Result(f"[{label}] online submission p99 latency", p99 * 1000, "ms", higher_is_better=False))
            await client.aclose()
    finally:
        if backend == "postgresql":
            await drop_schemas(PG_URL, platform.schema_prefix, ["survey"])
        if bus == "rabbitmq":
            await _drop_broker_objects(uid, queues)
    return results


async def _drop_broker_objects(uid: str, queues: list[str]) -> None:
    """Delete the run's queues (survey's consumers' and the sink, with their dead-letter
    queues) and exchanges from the broker."""
    import aio_pika

    connection = await aio_pika.connect(BUS_URL)
    try:
        channel = await connection.channel()
        for queue in queues:
            for name in (queue, f"{queue}.dlq"):
                await channel.queue_delete(name)
        for exchange in (f"bench-{uid}", f"bench-{uid}.dlx"):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def _quiesce(engine) -> None:
    """Start each timed phase on a settled database: the survey tables vacuumed and analysed,
    dirty pages written out. The setup writes 201,000 forms and the pushes update as many and
    write some 1.5 GB of WAL; the autovacuum and checkpoint they set off would otherwise land in
    whichever phase came next (the baseline ran up to twice as slow right after the pushes as
    on its own, flattering the ratio). CHECKPOINT needs a superuser on PostgreSQL (the
    benchmark's default URL is one); skipped where refused."""
    from sqlalchemy import text

    try:
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text("VACUUM (ANALYZE) form, form_history, response, outbox, vnpost_batch"))
                await conn.execute(text("CHECKPOINT"))
            else:
                await conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    except Exception as exc:  # not allowed: run the phase as it is
        print(f"  (no checkpoint before the phase: {str(exc).splitlines()[0][:120]})", file=sys.stderr)


def _response_copy(name: str, keyed: bool):
    """A table shaped like ``response`` for the baseline. ``keyed``: with its unique key and
    index too (the rows the push stores are stored with them; the baseline is the same storage
    without the service's logic). Without them, only the primary key, as the benchmark did
    before 2026-12-06; that figure is kept in the note."""
    from sqlalchemy import Index, MetaData, Table, UniqueConstraint

    from services.survey.models import response

    table = Table(name, MetaData(), *[c._copy() for c in response.columns])
    if keyed:
        UniqueConstraint(table.c.form_id, name=f"uq_{name}_form")
        Index(f"ix_{name}_wave", table.c.wave_id)
    return table


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--pushers", type=int, default=1,
                   help="Vietnam Post requests in flight at once (default 1: one batch after another)")
    p.add_argument("--forms", type=int, default=None, help="forms pushed (default 200,000; --quick 20,000)")
    p.add_argument("--bus", choices=["memory", "rabbitmq"], default="memory",
                   help="where the relay publishes (default: the in-process bus)")
    args = p.parse_args(argv)
    # 1,000 online answers give a p99 from ten slowest requests, enough for the figure, and keep
    # the full run (both backends) within about 15 minutes on a busy machine.
    n_forms, n_online = (20_000, 300) if args.quick else (200_000, 1_000)
    n_forms = args.forms or n_forms
    import logging

    logging.disable(logging.WARNING)

    async def run_all() -> list[Result]:
        out: list[Result] = []
        backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
        for backend in backends:
            if backend == "postgresql" and not await _pg_reachable():
                print(f"PostgreSQL at {PG_URL.split('@')[-1]} is not reachable: skipped", file=sys.stderr)
                continue
            out += await _run(backend, n_forms, n_online, args.pushers, args.bus)
        return out

    results = asyncio.run(run_all())
    report("Survey: Vietnam Post batches and online submissions", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
