"""Fieldwork progress: form counts per wave, province and enumerator, as JSON and as Prometheus
gauges. Withdrawn forms (their draw was reset) are not part of the fieldwork and are not
counted. Labels are wave codes, province codes, staff codes of enumerators and statuses -- never
a respondent's data. The gauges are refreshed from the database when ``/metrics`` is scraped
(``ProgressOnScrape``), so every replica reports the same, current figures."""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.survey.forms import STATUSES, WITHDRAWN
from services.survey.models import form, wave

FORMS = Gauge("sipas_survey_forms", "Forms by wave, province and status", ["wave", "province", "status"])
ENUMERATOR_FORMS = Gauge(
    "sipas_survey_enumerator_forms", "Forms by wave, enumerator (staff code) and status", ["wave", "enumerator", "status"]
)
RESERVE_EXHAUSTED = Gauge("sipas_survey_reserve_exhausted", "Lost units whose stratum has no reserve left", ["wave", "province"])


def _empty() -> dict[str, int]:
    return {s: 0 for s in STATUSES} | {"total": 0, "reserve_exhausted": 0}


async def progress(session: AsyncSession, wave_id: str, province_code: str | None = None) -> dict[str, Any]:
    query = (
        select(form.c.province_code, form.c.enumerator_id, form.c.status,
               func.count().label("n"),
               func.sum(func.cast(form.c.reserve_exhausted, form.c.serial.type)).label("exhausted"))
        .where(form.c.wave_id == wave_id, form.c.status != WITHDRAWN)
        .group_by(form.c.province_code, form.c.enumerator_id, form.c.status)
    )
    if province_code is not None:
        query = query.where(form.c.province_code == province_code)
    totals = _empty()
    provinces: dict[str, dict[str, int]] = {}
    enumerators: dict[str, dict[str, int]] = {}
    for r in (await session.execute(query)).mappings():
        n, exhausted = int(r["n"]), int(r["exhausted"] or 0)
        targets = [totals, provinces.setdefault(r["province_code"], _empty())]
        if r["enumerator_id"] is not None:
            targets.append(enumerators.setdefault(r["enumerator_id"], _empty()))
        for t in targets:
            t[r["status"]] += n
            t["total"] += n
            t["reserve_exhausted"] += exhausted
    return {
        "wave_id": wave_id,
        "totals": totals,
        "by_province": [{"province_code": k, **v} for k, v in sorted(provinces.items())],
        "by_enumerator": [{"enumerator_id": k, **v} for k, v in sorted(enumerators.items())],
    }


async def refresh_gauges(sessions) -> None:
    async with sessions() as session:
        waves = {r.id: r.code for r in await session.execute(select(wave.c.id, wave.c.code))}
        rows = (await session.execute(
            select(form.c.wave_id, form.c.province_code, form.c.enumerator_id, form.c.status,
                   func.count().label("n"),
                   func.sum(func.cast(form.c.reserve_exhausted, form.c.serial.type)).label("exhausted"))
            .where(form.c.status != WITHDRAWN)
            .group_by(form.c.wave_id, form.c.province_code, form.c.enumerator_id, form.c.status)
        )).mappings().all()
    by_province: dict[tuple, int] = {}
    by_enum: dict[tuple, int] = {}
    exhausted: dict[tuple, int] = {}
    for r in rows:
        w = waves.get(r["wave_id"], r["wave_id"])
        by_province[(w, r["province_code"], r["status"])] = by_province.get((w, r["province_code"], r["status"]), 0) + r["n"]
        if r["enumerator_id"]:
            key = (w, r["enumerator_id"], r["status"])
            by_enum[key] = by_enum.get(key, 0) + r["n"]
        exhausted[(w, r["province_code"])] = exhausted.get((w, r["province_code"]), 0) + int(r["exhausted"] or 0)
    # Every status of every series is set, so a count that fell to zero reads 0, not its old value.
    for w, p in {(k[0], k[1]) for k in by_province}:
        for s in STATUSES:
            FORMS.labels(w, p, s).set(by_province.get((w, p, s), 0))
    for w, e in {(k[0], k[1]) for k in by_enum}:
        for s in STATUSES:
            ENUMERATOR_FORMS.labels(w, e, s).set(by_enum.get((w, e, s), 0))
    for key, n in exhausted.items():
        RESERVE_EXHAUSTED.labels(*key).set(n)


class ProgressOnScrape:
    """ASGI middleware: refresh the progress gauges right before ``GET /metrics`` answers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == "/metrics":
            app = scope.get("app")
            sessions = getattr(getattr(app, "state", None), "sessions", None)
            if sessions is not None:
                try:
                    await refresh_gauges(sessions)
                except Exception:  # metrics must answer even if the query fails
                    pass
        await self.app(scope, receive, send)
