"""Publication benchmark (issue 7): a published release's GET, 200 with ETag and 304.

    python -m bench.publication            # 20,000 requests per measure
    python -m bench.publication --quick    # 2,000 requests: a smoke run

The publication service runs alone (embedded: SQLite, in-process bus) with one published
release of 34 provinces. Each measure drives the ASGI app directly on one event loop (one
core, no network or HTTP parser, so only the application's own cost is measured):

1. ``GET /v1/public/releases/{id}`` answered 200 with its body and strong ETag (the release
   document precomputed at publication, read with the visible version in one query);
2. the same GET with ``If-None-Match`` answered 304.

Baseline, side by side in the same process: a raw ASGI app serving the same bytes with the
same headers (and 304 on a matching tag). Requests per second (16 in flight) and p99 latency
(one at a time). Targets: ≥ 0.35 of the raw app for 200, ≥ 0.6 for 304.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import Result, parser, report

CONCURRENCY = 16
PROVINCES = [f"{i:02d}" for i in range(1, 35)]


def _export(wave_id: str, run_id: str) -> dict:
    def cell(domain, code_, indicator, code, value, n=400):
        return {"domain": domain, "domain_code": code_, "indicator": indicator, "code": code, "weighting": "none",
                "value": value, "se": 0.8, "ci_low": value - 1.57, "ci_high": value + 1.57, "n": n, "cv": 0.01,
                "deff": 1.2, "flag": "ok"}

    cells = [cell("nation", "VN", "sipas", "sipas", 80.1, 13600), cell("nation", "VN", "part", "policy", 79.0),
             cell("nation", "VN", "part", "service", 81.0)]
    cells += [cell("nation", "VN", "element", f"E{e}", 75.0 + e) for e in range(1, 9)]
    for i, p in enumerate(PROVINCES):
        cells.append(cell("province", p, "sipas", "sipas", 70 + i * 0.5))
        cells += [cell("province", p, "element", f"E{e}", 70 + e) for e in range(1, 9)]
        cells += [cell("province", p, "item", f"E{e}.{k}", 70 + k) for e in range(1, 9) for k in range(1, 4)]
    ranks = [{"province_code": p, "indicator": "sipas", "value": 70 + i * 0.5, "rank": 34 - i, "previous_rank": None,
              "rank_change": None, "previous_value": None, "comparable": True, "comparability_note": None}
             for i, p in enumerate(PROVINCES)]
    return {"run": {"run_id": run_id, "wave_id": wave_id, "kind": "final", "methodology_version": "sipas-2023",
                    "accepted_fingerprint": "bench", "accepted_forms": 13600, "code_version": "bench",
                    "completed_at": "2026-11-01T00:00:00Z"}, "cells": cells, "rankings": ranks}


async def _published_app(tmp: Path):
    """The publication app alone, with one published release; returns (app, path, exit stack)."""
    import contextlib

    from services.embedded import embedded_stack
    from services.publication import service
    from services.publication.schemas import ReleaseCreate, RunExport
    from shared.auth import Principal, Role
    from shared.contracts.indexing import IndexRunCompleted
    from shared.contracts.sampling import WaveCreated
    from shared.db import transaction
    from shared.events import make_event
    from shared.settings import PlatformSettings
    from shared.waves import wave_replica_effect

    stack = contextlib.AsyncExitStack()
    platform = PlatformSettings(environment="test", data_dir=tmp, log_json=False)
    s = await stack.enter_async_context(embedded_stack(platform, services=["publication"]))
    app = s.apps["publication"]
    app.state.settings.tuning.anonymous_rate_per_minute = 10**9
    app.state.settings.tuning.anonymous_burst = 10**9
    tables = app.state.tables
    wave_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    wave = WaveCreated(wave_id=uuid.UUID(wave_id), code="SIPAS-2026", name="SIPAS 2026", scope="national",
                       province_code=None, year=2026, methodology_version="sipas-2023",
                       fieldwork_start=dt.date(2026, 8, 1), fieldwork_end=dt.date(2026, 10, 31), status="closed")
    run = IndexRunCompleted(run_id=uuid.UUID(run_id), wave_id=uuid.UUID(wave_id), kind="final",
                            methodology_version="sipas-2023", accepted_fingerprint="bench", accepted_forms=13600,
                            code_version="bench", completed_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), national_sipas=80.1)
    ministry = Principal("bench", Role.ministry, "bench")
    export = RunExport.model_validate(_export(wave_id, run_id))
    async with transaction(app.state.sessions) as session:
        await wave_replica_effect(tables["wave"])(session, wave, make_event(wave))
        await service.record_run(session, tables["index_run"], run)
        release_id = await service.create_release(session, tables, ministry, ReleaseCreate(run_id=run_id), export)
        await service.approve(session, tables, ministry, release_id, 1)
        await service.release_version(session, tables, ministry, release_id, 1, None)
    return app, f"/v1/public/releases/{release_id}", stack


def _raw_app(body: bytes, etag: str, cache_control: str):
    """The baseline: bare ASGI, same bytes and headers, 304 on a matching tag."""
    headers = [(b"content-type", b"application/json"), (b"etag", etag.encode()),
               (b"cache-control", cache_control.encode()), (b"vary", b"Accept")]
    full = headers + [(b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send):
        for name, value in scope["headers"]:
            if name == b"if-none-match" and value.decode() == etag:
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
        await send({"type": "http.response.start", "status": 200, "headers": full})
        await send({"type": "http.response.body", "body": body})

    return app


async def _call(app, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, dict]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"publication"), *headers], "client": ("127.0.0.1", 50000),
             "server": ("publication", 80)}
    out: dict = {"body": b""}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        else:
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["body"], out["headers"]


async def _measure(app, path: str, headers, n: int, expect: int) -> tuple[float, float]:
    """(requests/second with CONCURRENCY in flight, p99 ms one at a time)."""
    for _ in range(min(200, n)):  # warm up
        status, _, _ = await _call(app, path, headers)
        assert status == expect, status
    latencies = []
    for _ in range(max(200, n // 4)):
        start = time.perf_counter()
        await _call(app, path, headers)
        latencies.append(time.perf_counter() - start)
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    per_worker = n // CONCURRENCY

    async def worker():
        for _ in range(per_worker):
            await _call(app, path, headers)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    rps = per_worker * CONCURRENCY / (time.perf_counter() - start)
    return rps, p99


async def _run(n: int) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        app, path, stack = await _published_app(Path(tmp))
        try:
            status, body, headers = await _call(app, path, [])
            assert status == 200, body
            etag = headers["etag"]
            raw = _raw_app(body, etag, headers["cache-control"])
            cond = [(b"if-none-match", etag.encode())]
            results = []
            for label, hdrs, expect, target in (("200 with ETag", [], 200, 0.35), ("304 Not Modified", cond, 304, 0.6)):
                rps, p99 = await _measure(app, path, hdrs, n, expect)
                raw_rps, raw_p99 = await _measure(raw, path, hdrs, n, expect)
                results.append(Result(f"published release GET, {label}: requests/s", rps, "req/s", raw_rps,
                                      "raw ASGI app, same bytes", target=f">= {target} of raw",
                                      note=f"body {len(body):,} bytes; {CONCURRENCY} in flight; one event loop"))
                results.append(Result(f"published release GET, {label}: p99 latency", p99, "ms", raw_p99,
                                      "raw ASGI app, same bytes", higher_is_better=False,
                                      note="one request at a time"))
            return results
        finally:
            await stack.aclose()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    results = asyncio.run(_run(2_000 if args.quick else 20_000))
    report("Publication: a published release's GET (in-process ASGI, one core)", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
