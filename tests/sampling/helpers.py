"""Builders for sampling tests: a wave with an open frame, generated frame records, the
sampling outbox (what sampling announced)."""

from __future__ import annotations

import random

from sqlalchemy import select

SEED = 20260101
# Two provinces of the 2025 map and a few of their communes (GSO codes, from vietnam-provinces).
COMMUNES = {"01": ["00004", "00008", "00025", "00070"], "79": ["26506", "26526", "26536"]}
FIELDS = ["land", "business_registration", "civil_status"]
LEVELS = ["commune", "province"]
from shared.outbox import row_envelopes


def wave_body(code: str = "SIPAS-2026", *, scope: str = "national", province: str | None = None,
              seed: int | None = SEED, year: int = 2026) -> dict:
    body = {"code": code, "name": f"Wave {code}", "scope": scope, "year": year, "methodology_version": "sipas-2017",
            "fieldwork_start": "2026-08-01", "fieldwork_end": "2026-10-31"}
    if province:
        body["province_code"] = province
    if seed is not None:
        body["seed"] = seed
    return body


async def open_wave(clients, headers, **kw) -> dict:
    r = await clients.sampling.post("/v1/waves", json=wave_body(**kw), headers=headers)
    assert r.status_code == 201, r.text
    wave = r.json()
    r = await clients.sampling.patch(f"/v1/waves/{wave['id']}", json={"status": "frame_open"}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def transactions(province: str, n: int, *, start: int = 0, seed: int = 1) -> list[dict]:
    """``n`` valid transaction records of ``province`` with contacts (deterministic)."""
    rng = random.Random(f"{seed}:{province}")
    out = []
    for i in range(start, start + n):
        out.append({
            "transaction_id": f"T{province}-{i:06d}",
            "province_code": province,
            "commune_code": rng.choice(COMMUNES[province]),
            "procedure_code": f"P-{rng.randrange(1, 9):03d}",
            "field": rng.choice(FIELDS),
            "level": rng.choice(LEVELS),
            "received_on": "2026-03-01",
            "result_on": "2026-03-10",
            "respondent_type": "citizen",
            "full_name": f"Nguyễn Văn {i}",
            "phone": f"09{rng.randrange(10**7, 10**8)}",
            "address": f"Số {i}, Phường Hoàn Kiếm",
        })
    return out


def residents(province: str, villages_per_commune: int, people: int) -> list[dict]:
    out = []
    for c in COMMUNES[province]:
        for v in range(villages_per_commune):
            for p in range(people + (v * 3) % 7):
                out.append({"person_id": f"R{c}-{v:02d}-{p:04d}", "province_code": province, "commune_code": c,
                            "village_code": f"T{v:02d}", "household_id": f"H{c}{v:02d}{p // 3:03d}",
                            "full_name": f"Trần Thị {p}"})
    return out


async def push(clients, headers, wave_id: str, batch_id: str, records: list[dict], kind: str = "transaction"):
    return await clients.sampling.post(f"/v1/waves/{wave_id}/frame/batches",
                                       json={"batch_id": batch_id, "kind": kind, "records": records}, headers=headers)


async def drawn_wave(clients, ministry, *, records=None, design=None, **kw) -> dict:
    """A national wave with a closed frame, a design and a draw; returns {wave, draw}."""
    wave = await open_wave(clients, ministry, **kw)
    records = records if records is not None else transactions("01", 300) + transactions("79", 200)
    for i in range(0, len(records), 10_000):
        r = await push(clients, ministry, wave["id"], f"b{i}", records[i : i + 10_000])
        assert r.status_code == 200, r.text
    r = await clients.sampling.post(f"/v1/waves/{wave['id']}/frame/close", headers=ministry)
    assert r.status_code == 200, r.text
    design = design or {"strata_by": ["province_code", "level"], "total": 60, "allocation": "proportional",
                        "reserve_share": 0.5}
    r = await clients.sampling.put(f"/v1/waves/{wave['id']}/design", json=design, headers=ministry)
    assert r.status_code == 200, r.text
    r = await clients.sampling.post(f"/v1/waves/{wave['id']}/draw", headers=ministry)
    assert r.status_code == 201, r.text
    return {"wave": wave, "draw": r.json()}


async def sampling_events(stack, event_type: str, wave_id: str) -> list[dict]:
    """Envelopes of one wave that sampling staged in its outbox, oldest first (a module's tests
    share one service: each reads its own wave's events only)."""
    app = stack.apps["sampling"]
    outbox = app.state.tables["outbox"]
    async with app.state.sessions() as session:
        rows = await session.execute(select(outbox.c.envelope).where(outbox.c.type == event_type).order_by(outbox.c.seq))
        return [e for (body,) in rows for e in row_envelopes(body) if e["data"]["wave_id"] == wave_id]


async def all_units(clients, headers, wave_id: str, **params) -> list[dict]:
    r = await clients.sampling.get(f"/v1/waves/{wave_id}/sample", params={"limit": 5000, **params}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]
