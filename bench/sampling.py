"""Sampling benchmarks (issue 3).

    python -m bench.sampling               # 1,000,000 frame records by batch API and by CSV; draw 40,000 from 5,000,000
    python -m bench.sampling --quick       # 50,000 records; draw 4,000 from 200,000: a smoke run
    python -m bench.sampling --backend sqlite|postgresql|both   (default: both; PostgreSQL is skipped when unreachable)

1. **Frame import by the batch API**: transaction records with contacts pushed through
   ``POST /v1/waves/{id}/frame/batches`` (10,000 records per request, in-process ASGI, one request
   at a time): each record parsed, validated, checked against the administrative units,
   deduplicated, and written with its contact. The request bodies are encoded before timing (a
   portal encodes its own). Baseline, measured batch by batch beside the API (so a load swing on
   a shared machine hits both): a bare bulk insert (10,000-row SQLAlchemy executemany per
   transaction) of the same ``frame_record`` rows into a copy of the table (the copy has the
   primary key but not the province index, so the baseline writes less than the service).
   Target on PostgreSQL: ≥ 0.4 of the baseline's rate. On PostgreSQL a binary COPY of the same
   rows is also measured and reported as a stronger reference (the fastest way in).
2. **Frame import by CSV upload**: the same number of records as one CSV file (written before
   timing), streamed from disk in 64 KiB chunks through ``POST /v1/waves/{id}/frame/csv``;
   compared with the same baseline rate.
3. **Draw**: a stratified sample (province × level, proportional, 50 % reserves) from a frame of
   5,000,000 records, loaded with the bare loader (COPY on PostgreSQL, executemany on SQLite;
   without contacts) and then closed through the API (the fingerprint: its time is reported
   apart). Reports the draw's time and the process's peak resident memory above what it held
   before the draw. The draw reads record keys and stratum columns only, never ``frame_contact``.

Only the sampling service runs, so the figures are the service's own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.common import Result, drop_schemas, parser, report

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
    from services.sampling.models import frame_record
    from shared.auth import Role, new_key, store_key
    from shared.db import utcnow
    from shared.settings import PlatformSettings

    uid = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="sipas-bench-sampling-"))
    common = dict(environment="test", data_dir=tmp, outbox_poll_seconds=0.2, log_json=False, log_level="WARNING")
    if backend == "postgresql":
        platform = PlatformSettings(**common, database_url=PG_URL, schema_prefix=f"bench{uid}_")
    else:
        platform = PlatformSettings(**common)
    postgres = backend == "postgresql"
    communes = _communes()
    results: list[Result] = []
    try:
        async with embedded_stack(platform, services=("sampling",)) as stack:
            app = stack.apps["sampling"]
            engine = app.state.engine
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

            def bare_rows(wave_id: str, records: list[dict]) -> list[dict]:
                """The frame_record rows the service writes for these records (contacts apart)."""
                return [{"wave_id": wave_id, "record_key": r["transaction_id"], "village_code": None,
                         "household_id": None, "agency": None,
                         **{c: r[c] for c in ("province_code", "commune_code", "procedure_code", "field", "level",
                                              "respondent_type")},
                         "received_on": dt.date.fromisoformat(r["received_on"]),
                         "result_on": dt.date.fromisoformat(r["result_on"])} for r in records]

            # 1. batch API, each batch beside the bare inserts of the same rows (so a load swing on
            # the machine hits both): SQLAlchemy executemany into a copy of frame_record (the
            # baseline of the target), and on PostgreSQL binary COPY into another copy (a stronger
            # reference: the fastest way rows get into a PostgreSQL table).
            wave_id = await new_wave("BENCH-API")
            copy_md = MetaData()
            bare = Table(f"frame_record_bare_{uid}", copy_md, *[c._copy() for c in frame_record.columns])
            copied = Table(f"frame_record_copy_{uid}", copy_md, *[c._copy() for c in frame_record.columns])
            async with engine.begin() as conn:
                await conn.run_sync(copy_md.create_all)
            columns = [c.name for c in frame_record.columns]
            bodies = tmp / "batches"
            bodies.mkdir()
            gen = _records(n_import, "A", communes)
            n_batches = 0
            while chunk := list(itertools.islice(gen, BATCH)):  # request bodies encoded before timing
                (bodies / f"{n_batches}.json").write_bytes(json.dumps({"batch_id": f"b{n_batches}",
                                                                       "records": chunk}).encode())
                n_batches += 1
            api_s = bare_s = copy_s = 0.0
            per_batch = []
            for b in range(n_batches):
                content = (bodies / f"{b}.json").read_bytes()
                records = json.loads(content)["records"]
                rows = bare_rows(wave_id, records)
                tuples = [tuple(r[c] for c in columns) for r in rows]
                t0 = time.perf_counter()
                r = await client.post(f"/v1/waves/{wave_id}/frame/batches", content=content,
                                      headers={**headers, "Content-Type": "application/json"})
                per_batch.append(time.perf_counter() - t0)
                api_s += per_batch[-1]
                assert r.status_code == 200 and r.json()["accepted"] == len(records), r.text[:500]
                t0 = time.perf_counter()
                async with engine.begin() as conn:
                    await conn.execute(bare.insert(), rows)
                bare_s += time.perf_counter() - t0
                if postgres:
                    t0 = time.perf_counter()
                    async with engine.begin() as conn:
                        raw = (await conn.get_raw_connection()).driver_connection
                        await raw.copy_records_to_table(copied.name, records=tuples, columns=columns)
                    copy_s += time.perf_counter() - t0
                (bodies / f"{b}.json").unlink()
            api_rate, bare_rate = n_import / api_s, n_import / bare_s
            async with engine.begin() as conn:
                await conn.execute(text(f"DROP TABLE {bare.name}"))
                await conn.execute(text(f"DROP TABLE {copied.name}"))
            target = "≥ 0.4 of bare insert on PostgreSQL" if postgres else None
            baseline_name = "bare bulk insert (executemany) of the same frame_record rows"
            _emit(results, Result(
                f"[{backend}] frame import, batch API, {n_import:,} records", api_rate, "records/s", baseline=bare_rate,
                baseline_name=baseline_name, target=target,
                note=f"batch of {BATCH:,}: median {statistics.median(per_batch):.2f} s, max {max(per_batch):.2f} s; "
                     "the API also parses and validates each record, checks its units and duplicates, and stores its "
                     "contact in a second table", extra={"seconds": api_s, "bare_seconds": bare_s}))
            if postgres:
                copy_rate = n_import / copy_s
                _emit(results, Result(
                    f"[{backend}] frame import, batch API vs a bare COPY", api_rate, "records/s", baseline=copy_rate,
                    baseline_name="binary COPY of the same frame_record rows (reference, stronger than the target's)",
                    note=f"bare COPY {copy_rate:,.0f} rows/s", extra={"copy_seconds": copy_s}))

            # 2. CSV upload: the file is written before timing and streamed from disk in 64 KiB chunks.
            wave_id = await new_wave("BENCH-CSV")
            csv_path = tmp / "frame.csv"
            with csv_path.open("wb") as f:
                for chunk in _csv_chunks(_records(n_import, "C", communes)):
                    f.write(chunk)
            csv_mib = csv_path.stat().st_size / 2**20

            async def body():
                with csv_path.open("rb") as f:
                    while data := f.read(64 * 1024):
                        yield data

            start = time.perf_counter()
            r = await client.post(f"/v1/waves/{wave_id}/frame/csv", params={"batch_id": "file"}, content=body(),
                                  headers={**headers, "Content-Type": "text/csv"})
            csv_seconds = time.perf_counter() - start
            assert r.status_code == 200 and r.json()["accepted"] == n_import, r.text[:500]
            csv_path.unlink()
            _emit(results, Result(
                f"[{backend}] frame import, CSV upload, {n_import:,} records", n_import / csv_seconds, "records/s",
                baseline=bare_rate, baseline_name=baseline_name + " (measured beside the batch API)", target=target,
                note=f"one streamed file of {csv_mib:,.0f} MiB, {csv_seconds:.1f} s"))

            # 3. Draw from a large frame. The frame is loaded with the bare loader (COPY on
            # PostgreSQL, executemany on SQLite), without contacts: the import is measured above,
            # and the draw never reads contacts.
            wave_id = await new_wave("BENCH-DRAW")
            t0 = time.perf_counter()
            for chunk in _frame_rows(wave_id, n_frame, communes, columns):
                async with engine.begin() as conn:
                    if postgres:
                        raw = (await conn.get_raw_connection()).driver_connection
                        await raw.copy_records_to_table("frame_record", records=chunk, columns=columns)
                    else:  # the driver's executemany with tuples: SQLite's fastest bulk path
                        await conn.exec_driver_sql(
                            f"INSERT INTO frame_record ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                            [tuple(v.isoformat() if isinstance(v, dt.date) else v for v in row) for row in chunk])
            async with engine.begin() as conn:
                await conn.execute(app.state.tables["frame"].insert().values(
                    wave_id=wave_id, kind="transaction", status="open", record_count=n_frame, opened_at=utcnow()))
                if postgres:
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
            _emit(results, Result(
                f"[{backend}] draw {n_draw:,} (+{drawn['n_reserve']:,} reserves) from {n_frame:,} records", draw_seconds,
                "s", higher_is_better=False,
                note=f"{len(drawn['strata'])} strata; peak RSS +{mem.peak - mem.start:.0f} MiB above {mem.start:.0f} MiB; "
                     f"closing the frame (fingerprint) {close_seconds:.1f} s; bare load of the frame {load_seconds:.1f} s",
                extra={"peak_rss_increase_mib": mem.peak - mem.start, "close_seconds": close_seconds,
                       "load_seconds": load_seconds}))
            _emit(results, Result(f"[{backend}] draw: peak memory above the process's", mem.peak - mem.start, "MiB",
                                  higher_is_better=False))
            await client.aclose()
    finally:
        if postgres:
            await drop_schemas(PG_URL, platform.schema_prefix, ["sampling"])
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _emit(results: list[Result], result: Result) -> None:
    """Keep a result and print it at once (stderr): a full run takes long on a loaded machine,
    and what was measured before an interruption is still worth having."""
    results.append(result)
    ratio = f" (ratio {result.ratio:.2f} to {result.baseline:,.0f})" if result.ratio is not None else ""
    print(f"measured: {result.name}: {result.value:,.1f} {result.unit}{ratio}; {result.note or ''}",
          file=sys.stderr, flush=True)


def _frame_rows(wave_id: str, n: int, communes: dict[str, list[str]], columns: list[str], size: int = 100_000):
    """A large transaction frame as frame_record tuples (in ``columns`` order), in chunks: the
    same shape as ``_records`` but cheaper to make by the million."""
    rng = random.Random("D")
    provinces = sorted(communes)
    received, result = dt.date(2026, 3, 2), dt.date(2026, 3, 11)
    procedures = [f"P-{i:03d}" for i in range(1, 60)]
    base = {"wave_id": wave_id, "village_code": None, "household_id": None, "agency": None,
            "received_on": received, "result_on": result, "respondent_type": "citizen"}
    order = {c: i for i, c in enumerate(columns)}
    template = [base.get(c) for c in columns]
    ik, ip, ic, iproc, ifield, ilevel = (order[c] for c in ("record_key", "province_code", "commune_code",
                                                              "procedure_code", "field", "level"))
    for start in range(0, n, size):
        chunk = []
        for i in range(start, min(n, start + size)):
            p = provinces[i % len(provinces)]
            row = template.copy()
            row[ik], row[ip], row[ic] = f"D-{p}-{i:08d}", p, rng.choice(communes[p])
            row[iproc], row[ifield], row[ilevel] = rng.choice(procedures), rng.choice(FIELDS), rng.choice(LEVELS)
            chunk.append(tuple(row))
        yield chunk


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
