"""Shared test data for the indexing tests: a methodology document built from the R fixture's
design, forms built from its rows, and synthetic accepted forms."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from services.indexing.compute import AcceptedForms
from shared.methodology import parse_methodology

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "estimation-check"


def fixture_methodology(**aggregation) -> object:
    """A methodology version whose elements/items are those of the R fixture (a1 → access.a1)."""
    design = json.loads((FIXTURE / "design.json").read_text())
    label = {"vi": "x"}
    elements = [
        {"code": e, "label": label, "items": [{"code": f"{e}.{c}", "text": label, "type": "likert5"} for c in items]}
        for e, items in design["elements"].items()
    ]
    doc = {
        "id": "check-2024", "title": label, "valid_from": 2024, "frame_kind": "transaction",
        "likert_scale": [{"code": i, "label": label} for i in range(1, 6)],
        "parts": [{"code": "service", "label": label, "elements": elements}],
        "expectation": {"code": "expectation", "text": label, "max_choices": 1,
                        "options": [{"code": "faster", "label": label}, {"code": "cheaper", "label": label}]},
        "aggregation": {"weighting": "design", **aggregation},
    }
    return parse_methodology(doc)


def fixture_rows() -> tuple[list[dict], dict[str, int]]:
    """The fixture's responses as accepted-form rows, and the frame sizes (its fpc column)."""
    design = json.loads((FIXTURE / "design.json").read_text())
    item_of = {c: f"{e}.{c}" for e, items in design["elements"].items() for c in items}
    rows, sizes = [], {}
    with open(FIXTURE / "responses.csv", encoding="utf-8-sig", newline="") as fh:
        for r in csv.DictReader(fh):
            answers = {}
            for c, code in item_of.items():
                v = r[c].strip().lower()
                answers[code] = None if v == "" else ("na" if v == "na" else int(v))
            rows.append({
                "form_code": f"F{int(r['respondent_id']):05d}", "decision_version": 1, "stratum": r["stratum"],
                "psu": r["psu"], "weight": float(r["weight"]), "province_code": r["province"],
                "commune_code": None, "level": r["level"], "field": None, "procedure_code": None,
                "respondent_type": None, "channel": "paper", "answers": answers,
            })
            sizes[r["stratum"]] = int(float(r["fpc"]))
    return rows, sizes


def fixture_forms() -> tuple[AcceptedForms, dict[str, int]]:
    rows, sizes = fixture_rows()
    return AcceptedForms.from_rows(rows), sizes


# ---------------------------------------------------------------------------------------------
# Events into the running stack
# ---------------------------------------------------------------------------------------------

import datetime as dt  # noqa: E402
import uuid  # noqa: E402

from shared.contracts.sampling import SampleDrawn, StratumSummary, WaveCreated  # noqa: E402
from shared.contracts.verification import ResponseAccepted, ResponseRejected  # noqa: E402
from shared.events import make_event  # noqa: E402

NOW = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def wave_event(year: int, methodology: str, *, fieldwork_start: dt.date | None = None,
               province_code: str | None = None) -> WaveCreated:
    return WaveCreated(wave_id=uuid.uuid4(), code=f"SIPAS-{year}-{uuid.uuid4().hex[:6]}", name=f"SIPAS {year}",
                       scope="provincial" if province_code else "national", province_code=province_code,
                       year=year, methodology_version=methodology,
                       fieldwork_start=fieldwork_start, fieldwork_end=None, status="in_field")


def strata_event(wave_id, sizes: dict[str, int]) -> SampleDrawn:
    return SampleDrawn(wave_id=wave_id, draw_id=uuid.uuid4(), methodology_version="x", sample_hash="h", chunk=0,
                       chunks=1, strata=[StratumSummary(stratum=s, population=p, n=1, n_reserve=0)
                                         for s, p in sizes.items()], units=[])


def accepted(wave_id, row: dict, *, version: int = 1, methodology: str = "check-2024") -> ResponseAccepted:
    return ResponseAccepted(
        wave_id=wave_id, form_code=row["form_code"], unit_id=uuid.uuid5(uuid.NAMESPACE_URL, row["form_code"]),
        decision_version=version, decided_at=NOW, methodology_version=methodology, stratum=row["stratum"],
        province_code=row["province_code"], commune_code=row.get("commune_code"), psu=row["psu"], ssu=None,
        pi=1.0 / row["weight"], weight=row["weight"], level=row.get("level"), field=row.get("field"),
        procedure_code=row.get("procedure_code"), respondent_type=row.get("respondent_type"),
        channel=row.get("channel") or "paper", answers=row["answers"])


def rejected(wave_id, form_code: str, *, version: int) -> ResponseRejected:
    return ResponseRejected(wave_id=wave_id, form_code=form_code, unit_id=uuid.uuid5(uuid.NAMESPACE_URL, form_code),
                            decision_version=version, decided_at=NOW, reverses=True, reason="back-check: not visited",
                            reasons=["back_check_failed"])


async def publish(stack, *events) -> None:
    """Publish in order. The in-process bus returns from a publish only once the event is handled,
    so there the events go out in small concurrent batches (each queue still keeps the order);
    RabbitMQ returns on the broker's confirm, so one at a time is fast and keeps its channel calm."""
    import asyncio

    from shared.bus.memory import InMemoryBus

    if not isinstance(stack.bus, InMemoryBus):
        for e in events:
            await stack.bus.publish(make_event(e))
        return
    for start in range(0, len(events), 25):
        await asyncio.gather(*(stack.bus.publish(make_event(e)) for e in events[start:start + 25]))


def seed_methodologies(stack, *methodologies) -> None:
    """The survey service's methodology endpoint is built concurrently; until it serves these test
    documents, put them in the indexing app's methodology cache (what fetch_methodology reads)."""
    app = stack.apps["indexing"]
    cache = getattr(app.state, "methodologies", None) or {}
    for m in methodologies:
        cache[m.id] = m
    app.state.methodologies = cache


def synthetic_rows(spec: dict[str, tuple[int, float]], *, seed: int = 1, weight: float = 10.0,
                   level: str = "commune") -> list[dict]:
    """Forms for provinces: {province: (count, probability of a satisfied answer)}; one stratum
    per province, single-stage, fixture items."""
    import numpy as np

    rng = np.random.default_rng(seed)
    design = json.loads((FIXTURE / "design.json").read_text())
    codes = [f"{e}.{c}" for e, items in design["elements"].items() for c in items]
    rows = []
    for prov, (count, p) in spec.items():
        for i in range(count):
            sat = rng.random(len(codes)) < p
            vals = np.where(sat, rng.integers(4, 6, len(codes)), rng.integers(1, 4, len(codes)))
            rows.append({
                "form_code": f"P{prov}-{i:04d}", "stratum": f"{prov}-{level}", "psu": f"u{i}", "weight": weight,
                "province_code": prov, "level": level, "answers": {c: int(v) for c, v in zip(codes, vals)},
            })
    return rows
