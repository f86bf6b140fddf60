"""Test data and drivers for the publication tests.

Upstream services are played as they behave on the wire: waves arrive as sampling's wave events,
runs as indexing's ``run.completed`` event, and the run's figures are served at indexing's
``GET /v1/runs/{run_id}/export`` by a small stand-in app installed as publication's indexing
peer (the same HTTP contract; publication never imports indexing).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from shared.contracts.indexing import IndexRunCompleted
from shared.contracts.sampling import WaveCreated
from shared.events import make_event
from tests.conftest import eventually
from tests.support.stack_process import free_port

PROVINCES = ["01", "02", "04", "79", "92"]


def cell(domain, domain_code, indicator, code, value, *, n=120, flag="ok", weighting="none", se=1.2):
    suppressed = flag == "suppressed"
    return {
        "domain": domain, "domain_code": domain_code, "indicator": indicator, "code": code, "weighting": weighting,
        "value": None if suppressed else value, "se": None if suppressed else se,
        "ci_low": None if suppressed else round(value - 1.96 * se, 4),
        "ci_high": None if suppressed else round(value + 1.96 * se, 4),
        "n": n, "cv": None if suppressed else round(se / value, 4), "deff": 1.3, "flag": flag,
    }


def make_export(wave_id: str, run_id: str, *, shift: float = 0.0, methodology="sipas-2023", provinces=PROVINCES,
                previous: dict[str, int] | None = None, extra_cell_fields: bool = False) -> dict:
    """A final run's export: national and provincial SIPAS, parts, elements, items, expectations;
    province 92 is unreliable; one item cell is suppressed; rankings by SIPAS."""
    cells = [cell("nation", "VN", "sipas", "sipas", 80.0 + shift, n=len(provinces) * 120, se=0.4)]
    cells.append(cell("nation", "VN", "sipas", "sipas", 79.5 + shift, n=len(provinces) * 120, se=0.5, weighting="design"))
    cells.append(cell("nation", "VN", "part", "service", 81.0 + shift, n=600))
    cells.append(cell("nation", "VN", "element", "E1", 78.0 + shift, n=600))
    values = {}
    for i, p in enumerate(provinces):
        v = 70.0 + 4 * i + shift
        values[p] = v
        flag = "unreliable" if p == "92" else "ok"
        cells += [
            cell("province", p, "sipas", "sipas", v, flag=flag),
            cell("province", p, "part", "service", v + 1, flag=flag),
            cell("province", p, "element", "E1", v - 1, flag=flag),
            cell("province", p, "item", "E1.1", v - 2, flag="suppressed" if p == "04" else flag, n=4 if p == "04" else 120),
            cell("province", p, "expectation", "faster", 42.0, flag=flag),
        ]
    ordered = sorted(values, key=lambda p: -values[p])
    rankings = []
    for rank, p in enumerate(ordered, 1):
        prev = (previous or {}).get(p)
        rankings.append({
            "province_code": p, "indicator": "sipas", "value": values[p], "rank": rank, "previous_rank": prev,
            "rank_change": (prev - rank) if prev else None, "previous_value": None,
            "comparable": True, "comparability_note": None,
        })
    export = {
        "run": {
            "run_id": run_id, "wave_id": wave_id, "kind": "final", "methodology_version": methodology,
            "accepted_fingerprint": "fp-" + run_id[:8], "accepted_forms": len(provinces) * 120,
            "code_version": "test", "parameters": {}, "completed_at": "2026-11-01T00:00:00Z", "previous_wave_id": None,
        },
        "cells": cells,
        "rankings": rankings,
    }
    if extra_cell_fields:  # what an upstream mistake could add: publication must drop it
        for c in export["cells"]:
            c["respondent_name"] = "Nguyễn Văn A"
            c["phone"] = "0901234567"
        export["run"]["contacts"] = [{"name": "Trần Thị B", "address": "12 Lê Lợi"}]
    return export


def fake_indexing(exports: dict[str, dict]) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/runs/{run_id}/export")
    async def export(run_id: str, request: Request):
        if "x-internal-token" not in request.headers:
            return JSONResponse({"status": 401}, status_code=401)
        if run_id not in exports:
            return JSONResponse({"type": "urn:sipas:problem:not-found", "title": "not found", "status": 404},
                                status_code=404)
        return exports[run_id]

    return app


class Scenario:
    """Drives publication through its APIs, with upstream events and exports as above."""

    def __init__(self, stack, clients) -> None:
        self.stack = stack
        self.clients = clients
        self.app = stack.apps["publication"]
        self.api = clients.publication
        self.exports: dict[str, dict] = {}
        self.app.state.peers["indexing"] = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=fake_indexing(self.exports)), base_url="http://indexing")
        self.ministry: dict = {}
        self.observer: dict = {}

    async def keys(self) -> None:
        self.ministry = await self.clients.key("ministry")
        self.observer = await self.clients.key("observer", label="Ủy ban MTTQ")

    async def wave(self, *, year=2026, code=None, fieldwork_start=dt.date(2026, 8, 1), methodology="sipas-2023") -> str:
        wave_id = uuid.uuid4()
        await self.stack.bus.publish(make_event(WaveCreated(
            wave_id=wave_id, code=code or f"SIPAS-{year}-{wave_id.hex[:4]}", name=f"SIPAS {year}", scope="national",
            province_code=None, year=year, methodology_version=methodology, fieldwork_start=fieldwork_start,
            fieldwork_end=fieldwork_start + dt.timedelta(days=90) if fieldwork_start else None, status="closed",
        )))

        async def seen():
            r = await self.api.get(f"/v1/waves/{wave_id}", headers=self.ministry)
            assert r.status_code == 200, r.text

        await eventually(seen)
        return str(wave_id)

    async def run(self, wave_id: str, *, kind="final", **export_kwargs) -> str:
        run_id = str(uuid.uuid4())
        export = make_export(wave_id, run_id, **export_kwargs)
        export["run"]["kind"] = kind
        self.exports[run_id] = export
        await self.stack.bus.publish(make_event(IndexRunCompleted(
            run_id=uuid.UUID(run_id), wave_id=uuid.UUID(wave_id), kind=kind,
            methodology_version=export["run"]["methodology_version"],
            accepted_fingerprint=export["run"]["accepted_fingerprint"], accepted_forms=export["run"]["accepted_forms"],
            code_version="test", completed_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), national_sipas=80.0,
        )))

        async def seen():
            r = await self.api.get("/v1/runs", params={"wave_id": wave_id}, headers=self.ministry)
            assert run_id in [x["run_id"] for x in r.json()["items"]], r.text

        await eventually(seen)
        return run_id

    async def draft(self, run_id: str, footnotes=("Số liệu sơ bộ",)) -> dict:
        r = await self.api.post("/v1/releases", json={"run_id": run_id, "footnotes": list(footnotes)}, headers=self.ministry)
        assert r.status_code == 201, r.text
        return r.json()

    async def approve_and_publish(self, release_id: str, version: int = 1, publish_at: str | None = None) -> dict:
        r = await self.api.post(f"/v1/releases/{release_id}/versions/{version}/approve", headers=self.ministry)
        assert r.status_code == 200, r.text
        body = {"publish_at": publish_at} if publish_at else None
        r = await self.api.post(f"/v1/releases/{release_id}/versions/{version}/publish", json=body, headers=self.ministry)
        assert r.status_code == 200, r.text
        return r.json()

    async def published_release(self, **wave_kwargs) -> tuple[str, str]:
        """A wave with a published release (version 1); returns (wave_id, release_id)."""
        if not self.ministry:
            await self.keys()
        wave_id = await self.wave(**wave_kwargs)
        run_id = await self.run(wave_id)
        release = await self.draft(run_id)
        await self.approve_and_publish(release["id"])
        return wave_id, release["id"]


class Clock:
    """A settable clock for publication (``app.state.clock``): embargoes are checked to the
    second without sleeping."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


# --- a real HTTP subscriber (uvicorn on a free local port) ---


class Receiver:
    """A webhook subscriber that answers with the statuses it is told to, in order, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[dict] = []
        # Set ``gate`` to hold every request until it is set; ``arrived`` is set when one waits.
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request):
            body = await request.body()
            if self.gate is not None:
                self.arrived.set()
                await self.gate.wait()
            status = self.statuses.pop(0) if self.statuses else 200
            self.received.append({"headers": dict(request.headers), "body": body, "status": status})
            return Response(status_code=status)

        self.app = app

    @property
    def successes(self) -> list[dict]:
        return [r for r in self.received if 200 <= r["status"] < 300]


@asynccontextmanager
async def serve(app: FastAPI):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
