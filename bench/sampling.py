"""Sampling benchmarks (issue 3).

    python -m bench.sampling               # 1,000,000 frame records by batch API and by CSV; draw 40,000 from 5,000,000
    python -m bench.sampling --quick       # 50,000 records; draw 4,000 from 200,000: a smoke run
    python -m bench.sampling --backend sqlite|postgresql|both   (default: both; PostgreSQL is skipped when unreachable)

1. **Frame import by the batch API**: transaction records with contacts pushed through
   ``POST /v1/waves/{id}/frame/batches`` (10,000 records per request, in-process ASGI, one request
   at a time): each record validated, checked against the administrative units, deduplicated, and
   written with its contact. Baseline: a bare bulk insert (10,000-row executemany per transaction)
   of the same ``frame_record`` rows into a copy of the table in the same database. Target on
   PostgreSQL: ≥ 0.4 of the baseline's rate.
2. **Frame import by CSV upload**: the same number of records as one CSV file, streamed in 64 KiB
   chunks through ``POST /v1/waves/{id}/frame/csv``; same baseline.
3. **Draw**: a stratified sample (province × level, proportional, 50 % reserves) from a frame of
   5,000,000 records (loaded by bulk insert, then closed: the fingerprint is part of the timing
   of the close, reported separately). Reports the draw's time and the process's peak resident
   memory above what it held before the draw. The draw reads record keys and stratum columns
   only, never ``frame_contact``.

Only the sampling service runs, so the figures are the service's own.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.common import Result, parser, report, drop_schemas

PG_URL = os.environ.get("SIPAS_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BATCH = 10_000
FIELDS = ["land", "construction", "business_registration", "civil_status", "justice", "tax", "social_insurance"]
LEVELS = ["commune", "province", "central"]


async def _pg_reachable() -> bool:
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(PG_URL.replace("+asyncpg", "")), 3)
        await conn.close()
        return True
    except Exception:
        return False


def _communes() -> dict[str, list[str]]:
    from vietnam_provinces import Ward

    out: dict[str, list[str]] = {}
    for w in Ward.iter_all():
        out.setdefault(f"{int(w.province_code):02d}", []).append(f"{int(w.code):05d}")
    return out


def _records(n: int, prefix: str, communes: dict[str, list[str]]):
    rng = random.Random(prefix)
    provinces = sorted(communes)
    for i in range(n):
        p = provinces[i % len(provinces)]
        yield {
            "transaction_id": f"{prefix}-{p}-{i:08d}", "province_code": p, "commune_code": rng.choice(communes[p]),
            "procedure_code": f"P-{rng.randrange(1, 60):03d}", "field": rng.choice(FIELDS), "level": rng.choice(LEVELS),
            "received_on": "2026-03-02", "result_on": "2026-03-11", "respondent_type": "citizen",
            "full_name": f"Nguyễn Văn {i}", "phone": f"09{rng.randrange(10**7, 10**8)}", "address": f"Số {i % 500}, xã {p}",
        }


CSV_COLUMNS = ["transaction_id", "province_code", "commune_code", "procedure_code", "field", "level", "received_on",
               "result_on", "respondent_type", "full_name", "phone", "address"]


def _csv_chunks(records, size: int = 64 * 1024):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records:
        w.writerow([r[c] for c in CSV_COLUMNS])
        if buf.tell() >= size:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode("utf-8")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples the resident set every 20 ms in a thread (the draw runs in the event loop)."""

    def __enter__(self):
        self.start = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mib())


async def _run(backend: str, n_import: int, n_frame: int, n_draw: int) -> list[Result]:
    import httpx
    from sqlalchemy import MetaData, Table, func, select, text

    from services.embedded import embedded_stack
    from services.sampling.frames import RECORD_COLUMNS
    from services.sampling.models import frame_record
    from shared.auth import Role, new_key, store_key
    from shared.settings import PlatformSettings

    uid = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="sipas-bench-sampling-"))
    common = dict(environment="test", data_dir=tmp, outbox_poll_seconds=0.2, log_json=False, log_level="WARNING")
    if backend == "postgresql":
        platform = PlatformSettings(**common, database_url=PG_URL, schema_prefix=f"bench{uid}_")
    else:
        platform = PlatformSettings(**common)
    communes = _communes()
    results: list[Result] = []
    try:
        async with embedded_stack(platform, services=("sampling",)) as stack:
            app = stack.apps["sampling"]
            key = new_key(Role.ministry, "bench ministry")
            async with app.state.sessions() as session, session.begin():
                await store_key(session, app.state.tables["api_key"], key)
            headers = {"X-API-Key": key.key}
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sampling", timeout=3600)

            async def new_wave(code: str) -> str:
                r = await client.post("/v1/waves", headers=headers, json={
                    "code": code, "name": code, "scope": "national", "year": 2026, "methodology_version": "sipas-2017",
                    "seed": 20260101})
                assert r.status_code == 201, r.text
                wave_id = r.json()["id"]
                r = await client.patch(f"/v1/waves/{wave_id}", json={"status": "frame_open"}, headers=headers)
                assert r.status_code == 200, r.text
                return wave_id

            # 1. batch API
            wave_id = await new_wave("BENCH-API")
            records = list(_records(n_import, "A", communes))
            per_batch = []
            start = time.perf_counter()
            for b in range(0, n_import, BATCH):
                t0 = time.perf_counter()
                r = await client.post(f"/v1/waves/{wave_id}/frame/batches", headers=headers,
                                      json={"batch_id": f"b{b}", "records": records[b:b + BATCH]})
                per_batch.append(time.perf_counter() - t0)
                assert r.status_code == 200 and r.json()["accepted"] == len(records[b:b + BATCH]), r.text[:500]
            api_rate = n_import / (time.perf_counter() - start)

            # Baseline: the same frame_record rows, bare bulk insert into a copy of the table.
            copy_md = MetaData()
            bare = Table(f"frame_record_bare_{uid}", copy_md, *[c._copy() for c in frame_record.columns])
            async with app.state.engine.begin() as conn:
                await conn.run_sync(copy_md.create_all)
                rows = [dict(r) for r in (await conn.execute(
                    select(frame_record).where(frame_record.c.wave_id == wave_id))).mappings()]
            start = time.perf_counter()
            for b in range(0, len(rows), BATCH):
                async with app.state.engine.begin() as conn:
                    await conn.execute(bare.insert(), rows[b:b + BATCH])
            bare_rate = len(rows) / (time.perf_counter() - start)
            async with app.state.engine.begin() as conn:
                await conn.execute(text(f"DROP TABLE {bare.name}"))
            del rows
            target = "≥ 0.4 of bare insert on PostgreSQL" if backend == "postgresql" else None
            results.append(Result(
                f"[{backend}] frame import, batch API, {n_import:,} records", api_rate, "records/s", baseline=bare_rate,
                baseline_name="bare bulk insert of the frame_record rows", target=target,
                note=f"batch of {BATCH:,}: median {statistics.median(per_batch):.2f} s, max {max(per_batch):.2f} s; "
                     "the API also stores each record's contact (a second table) and checks units and duplicates"))

            # 2. CSV upload
            wave_id = await new_wave("BENCH-CSV")

            async def body():
                for chunk in _csv_chunks(_records(n_import, "C", communes)):
                    yield chunk

            start = time.perf_counter()
            r = await client.post(f"/v1/waves/{wave_id}/frame/csv", params={"batch_id": "file"}, content=body(),
                                  headers={**headers, "Content-Type": "text/csv"})
            csv_seconds = time.perf_counter() - start
            assert r.status_code == 200 and r.json()["accepted"] == n_import, r.text[:500]
            results.append(Result(
                f"[{backend}] frame import, CSV upload, {n_import:,} records", n_import / csv_seconds, "records/s",
                baseline=bare_rate, baseline_name="bare bulk insert of the frame_record rows", target=target,
                note=f"one streamed file, {csv_seconds:.1f} s"))

            # 3. draw from a large frame (loaded by bulk insert: the import is measured above)
            wave_id = await new_wave("BENCH-DRAW")
            t0 = time.perf_counter()
            gen = _records(n_frame, "D", communes)
            while True:
                chunk = []
                for r in gen:
                    chunk.append({"wave_id": wave_id, "record_key": r["transaction_id"],
                                  **{c: r.get(c) for c in RECORD_COLUMNS}})
                    if len(chunk) == 50_000:
                        break
                if not chunk:
                    break
                for row in chunk:
                    row["received_on"] = row["result_on"] = None
                async with app.state.engine.begin() as conn:
                    await conn.execute(frame_record.insert(), chunk)
            async with app.state.engine.begin() as conn:
                await conn.execute(app.state.tables["frame"].insert().values(
                    wave_id=wave_id, kind="transaction", status="open", record_count=n_frame,
                    opened_at=__import__("shared.db", fromlist=["utcnow"]).utcnow()))
                if backend == "postgresql":
                    await conn.execute(text("ANALYZE frame_record"))
                assert (await conn.scalar(select(func.count()).select_from(frame_record)
                                          .where(frame_record.c.wave_id == wave_id))) == n_frame
            load_seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            r = await client.post(f"/v1/waves/{wave_id}/frame/close", headers=headers)
            assert r.status_code == 200, r.text
            close_seconds = time.perf_counter() - t0
            design = {"strata_by": ["province_code", "level"], "total": n_draw, "allocation": "proportional",
                      "minimum_per_stratum": 20, "reserve_share": 0.5}
            r = await client.put(f"/v1/waves/{wave_id}/design", json=design, headers=headers)
            assert r.status_code == 200, r.text
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                r = await client.post(f"/v1/waves/{wave_id}/draw", headers=headers)
                draw_seconds = time.perf_counter() - t0
            assert r.status_code == 201, r.text[:500]
            drawn = r.json()
            results.append(Result(
                f"[{backend}] draw {n_draw:,} (+{drawn['n_reserve']:,} reserves) from {n_frame:,} records", draw_seconds,
                "s", higher_is_better=False,
                note=f"{len(drawn['strata'])} strata; peak RSS +{mem.peak - mem.start:.0f} MiB above {mem.start:.0f} MiB; "
                     f"closing the frame (fingerprint) {close_seconds:.1f} s; bulk load of the frame {load_seconds:.1f} s",
                extra={"peak_rss_increase_mib": mem.peak - mem.start, "close_seconds": close_seconds}))
            results.append(Result(f"[{backend}] draw: peak memory above the process's", mem.peak - mem.start, "MiB",
                                  higher_is_better=False))
            await client.aclose()
    finally:
        if backend == "postgresql":
            await drop_schemas(PG_URL, platform.schema_prefix, ["sampling"])
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--records", type=int, help="frame records to import (default 1,000,000; quick 50,000)")
    p.add_argument("--frame", type=int, help="frame size to draw from (default 5,000,000; quick 200,000)")
    args = p.parse_args(argv)
    n_import = args.records or (50_000 if args.quick else 1_000_000)
    n_frame = args.frame or (200_000 if args.quick else 5_000_000)
    n_draw = 4_000 if args.quick else 40_000
    import logging

    logging.disable(logging.WARNING)

    async def run_all() -> list[Result]:
        out: list[Result] = []
        backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
        for backend in backends:
            if backend == "postgresql" and not await _pg_reachable():
                print(f"PostgreSQL at {PG_URL.split('@')[-1]} is not reachable: skipped", file=sys.stderr)
                continue
            out += await _run(backend, n_import, n_frame, n_draw)
        return out

    results = asyncio.run(run_all())
    report("Sampling: frame import (batch API, CSV) and a large draw", results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
