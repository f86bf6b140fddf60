"""Designs and draws of a wave: the database side of ``design.py`` and ``draw.py``.

* A wave's **design** (``DesignBody``) is stored as JSON; a preview computes the strata and sizes
  from the current frame without drawing.
* A **draw** reads the closed frame (record keys and stratum columns only: never contacts),
  computes each stratum's plan, draws every stratum from its own stream, and stores the sample
  and the ordered reserve lists (``sample_unit``), the draw's hash and the frame fingerprint, in
  one transaction with the audit entry, ``wave.updated`` (status ``sampled``) and the chunked
  ``sample.drawn`` events.
* **Verify** recomputes the draw with a seed an observer supplies and returns its hash.
* **Reset** (ministry only, audited with a reason) voids the draw so the wave can be drawn again,
  and announces it (``sample.voided``) in the same transaction.

Reproducibility: the frame is read in code-point order of the record keys within each stratum
(``COLLATE "C"`` on PostgreSQL, SQLite's binary order), the strata are keyed by their column
values, and everything else is ``draw.py``'s contract, so the same frame fingerprint, design
and seed give the same ``sample_hash`` on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.sampling import frames as F
from services.sampling.design import (
    DesignError,
    StratumPlan,
    StratumSpec,
    allocate,
    plan_strata,
    required_sample_size,
    reserve_size,
    size_per_stratum,
)
from services.sampling.draw import SampleRow, draw_strata, multi_stage, sample_hash
from services.sampling.models import Wave, design, draw, frame_record, sample_unit
from services.sampling.schemas import DesignBody
from shared import audit
from shared.auth import Principal, Role
from shared.contracts.sampling import SampleDrawn, SampledUnit, SampleVoided, StratumSummary, WaveUpdated
from shared.db import utcnow
from shared.errors import BadRequest, Conflict, Forbidden, InvalidState, NotFound
from shared.outbox import add_event

CHUNK_UNITS = 1000  # sampled units per sample.drawn chunk
INSERT_CHUNK = 5000
DETAIL_COLUMNS = ("province_code", "commune_code", "level", "field", "procedure_code", "respondent_type")
# Draw ids feed uuid5 unit ids: a unit's id is fixed by its draw and record, never random.
UNIT_NAMESPACE = uuid.UUID("5b0f3c52-54d1-4c43-9a8e-0b9a3c7e2f10")


def stratum_key(values) -> str:
    """A stratum's key: its column values joined with ``|`` (a missing value is empty)."""
    return "|".join("" if v is None else str(v) for v in values)


def _design_error(exc: DesignError) -> BadRequest:
    return BadRequest(f"The design cannot be applied to this frame: {exc}")


# --------------------------------------------------------------------------------------------
# design


async def get_design(session: AsyncSession, wave_id: str) -> dict | None:
    row = (await session.execute(select(design).where(design.c.wave_id == wave_id))).mappings().first()
    return dict(row) if row else None


async def active_draw(session: AsyncSession, wave_id: str) -> dict | None:
    row = (
        await session.execute(select(draw).where(draw.c.wave_id == wave_id, draw.c.status == "active"))
    ).mappings().first()
    return dict(row) if row else None


async def put_design(session: AsyncSession, tables, principal: Principal, wave_id: str, body: DesignBody) -> dict:
    wave = await F._wave_for_frame(session, principal, wave_id)
    F._check_manager(principal, wave)
    if wave.status not in ("draft", "frame_open"):
        raise InvalidState(f"The wave is {wave.status}: its design is fixed once it is sampled.")
    if await active_draw(session, wave.id):
        raise InvalidState("The wave has been drawn: reset the draw before changing its design.")
    values = dict(body=body.model_dump(mode="json"), updated_at=utcnow(), updated_by=principal.actor)
    done = await session.execute(update(design).where(design.c.wave_id == wave.id).values(**values))
    if done.rowcount == 0:
        try:
            async with session.begin_nested():
                await session.execute(design.insert().values(wave_id=wave.id, **values))
        except IntegrityError:  # created concurrently: last writer wins, as with the update
            await session.execute(update(design).where(design.c.wave_id == wave.id).values(**values))
    await audit.record(session, tables["audit_log"], principal, "design.set", "design", wave.id, wave_id=wave.id,
                       details=values["body"])
    return {"wave_id": wave.id, "design": body, "updated_at": values["updated_at"], "updated_by": principal.actor}


async def read_design(session: AsyncSession, principal: Principal, wave_id: str) -> dict:
    wave = await F._wave_for_frame(session, principal, wave_id)
    row = await get_design(session, wave.id)
    if row is None:
        raise NotFound("This wave has no design yet.")
    return {"wave_id": wave.id, "design": DesignBody.model_validate(row["body"]), "updated_at": row["updated_at"],
            "updated_by": row["updated_by"]}


async def _stratum_counts(session: AsyncSession, wave_id: str, strata_by: list[str]) -> list[tuple[str, int]]:
    cols = [frame_record.c[f] for f in strata_by]
    rows = (
        await session.execute(
            select(*cols, func.count()).where(frame_record.c.wave_id == wave_id).group_by(*cols)
        )
    ).all()
    counts: dict[str, int] = {}
    for r in rows:
        key = stratum_key(r[:-1])
        counts[key] = counts.get(key, 0) + int(r[-1])
    return sorted(counts.items())


async def _commune_counts(session: AsyncSession, wave_id: str, strata_by: list[str]) -> dict[str, int]:
    """Number of communes with residents, per stratum (for the multi-stage preview)."""
    cols = [frame_record.c[f] for f in strata_by]
    rows = (
        await session.execute(
            select(*cols, frame_record.c.commune_code).where(frame_record.c.wave_id == wave_id).distinct()
        )
    ).all()
    out: Counter[str] = Counter()
    for r in rows:
        out[stratum_key(r[:-1])] += 1
    return dict(out)


def plan(body: DesignBody, counts: list[tuple[str, int]]) -> tuple[StratumPlan, ...]:
    """Sizes and reserves of a stratified design on the frame's stratum sizes."""
    specs = [
        StratumSpec(key, n, (body.p_by_stratum or {}).get(key, body.p) if body.allocation == "neyman" else
                    (body.p_by_stratum or {}).get(key))
        for key, n in counts
    ]
    if not specs:
        raise BadRequest("The frame is empty: there is nothing to draw from.")
    population = sum(n for _, n in counts)
    try:
        if body.sizing == "fixed":
            sizes = body.sizes or {}
            unknown = sorted(set(sizes) - {k for k, _ in counts})
            if unknown:
                raise BadRequest(f"sizes names strata the frame does not have: {unknown[:10]}",
                                 strata=[k for k, _ in counts][:50])
            too_big = [f"{k}: {sizes[k]} > {n}" for k, n in counts if sizes.get(k, 0) > n]
            if too_big:
                raise BadRequest(f"Sample sizes larger than their stratum: {too_big[:10]}")
            sized = {k: max(min(sizes.get(k, 0), n), min(body.minimum_per_stratum, n)) for k, n in counts}
        elif body.sizing == "per_stratum":
            sized = size_per_stratum(specs, body.margin, body.confidence, body.p, body.design_effect,
                                     body.response_rate, body.minimum_per_stratum)
        else:
            total = body.total or required_sample_size(body.margin, body.confidence, body.p, population,
                                                       body.design_effect, body.response_rate)
            if total > population:
                raise BadRequest(f"The sample size {total} is larger than the frame ({population} records).")
            sized = allocate(specs, total, body.allocation, body.minimum_per_stratum)
        return plan_strata(specs, sized, body.reserve_share)
    except DesignError as exc:
        raise _design_error(exc) from None


async def preview(session: AsyncSession, principal: Principal, wave_id: str, body: DesignBody) -> dict:
    wave = await F._wave_for_frame(session, principal, wave_id)
    row = await F.frame_row(session, wave.id)
    if row is None:
        raise InvalidState("This wave has no frame yet: sizes are computed from the frame.")
    counts = await _stratum_counts(session, wave.id, body.strata_by)
    strata = []
    if body.method == "stratified":
        for p in plan(body, counts):
            strata.append(dict(stratum=p.key, population=p.population, n=p.n, n_reserve=p.n_reserve,
                               pi=p.pi if p.n else 0.0))
    else:
        _require_resident(row)
        ms = body.multi_stage
        communes = await _commune_counts(session, wave.id, body.strata_by)
        for key, population in counts:
            n = min(ms.communes_per_stratum, communes.get(key, 0)) * ms.villages_per_commune * ms.people_per_village
            n = min(n, population)
            strata.append(dict(stratum=key, population=population, n=n, n_reserve=min(population - n, reserve_size(
                n, population, body.reserve_share)), pi=None, communes=communes.get(key, 0)))
    return dict(frame_status=row["status"], population=sum(s["population"] for s in strata),
                n=sum(s["n"] for s in strata), n_reserve=sum(s["n_reserve"] for s in strata), strata=strata)


def _require_resident(frame_row: dict) -> None:
    if frame_row["kind"] != "resident":
        raise BadRequest("A multi-stage design needs a resident frame (communes, villages, people).")


# --------------------------------------------------------------------------------------------
# computing a draw (shared by draw and verify)


@dataclass
class Computed:
    strata: list[dict]
    rows: list[SampleRow]
    sample_hash: str


async def _groups(session: AsyncSession, wave_id: str, strata_by: list[str], extra: list[str]) -> AsyncIterator[tuple]:
    """Stream the frame stratum by stratum: (key, [(extra..., record_key), ...]), keys in
    code-point order within a stratum. Only key and design columns are read, never contacts."""
    cols = [frame_record.c[f] for f in strata_by]
    extra_cols = [frame_record.c[f] for f in extra]
    query = (
        select(*cols, *extra_cols, frame_record.c.record_key)
        .where(frame_record.c.wave_id == wave_id)
        .order_by(*cols, F.ordered_by_key(session, frame_record.c.record_key))
    )
    result = await session.stream(query, execution_options={"yield_per": 20_000})
    width = len(cols)
    current: tuple | None = None
    members: list = []
    async for part in result.partitions():
        for r in part:
            head = tuple(r[:width])
            if head != current:
                if current is not None:
                    yield stratum_key(current), members
                current, members = head, []
            members.append(r[width:] if extra else r[width])
    if current is not None:
        yield stratum_key(current), members


async def compute(session: AsyncSession, wave_id: str, kind: str, body: DesignBody, seed: int) -> Computed:
    counts = await _stratum_counts(session, wave_id, body.strata_by)
    rows: list[SampleRow] = []
    strata: list[dict] = []
    try:
        if body.method == "stratified":
            plans = {p.key: p for p in plan(body, counts)}
            async for key, ids in _groups(session, wave_id, body.strata_by, []):
                p = plans.get(key)
                if p is None:  # pragma: no cover - counts and stream read the same closed frame
                    raise Conflict("The frame changed while drawing.")
                if p.n:
                    rows.extend(draw_strata({key: ids}, [p], seed)[key].rows())
            strata = [dict(stratum=p.key, population=p.population, n=p.n, n_reserve=p.n_reserve) for p in plans.values()]
        else:
            if kind != "resident":
                raise BadRequest("A multi-stage design needs a resident frame (communes, villages, people).")
            ms = body.multi_stage
            async for key, members in _groups(session, wave_id, body.strata_by, ["commune_code", "village_code"]):
                commune_sizes: Counter[str] = Counter()
                villages: dict[str, Counter[str]] = defaultdict(Counter)
                residents: dict[str, list[str]] = defaultdict(list)
                for commune, village, record_key in members:
                    v = f"{commune}:{village}"
                    commune_sizes[commune] += 1
                    villages[commune][v] += 1
                    residents[v].append(record_key)
                for v in residents:
                    residents[v].sort()
                result = multi_stage(
                    sorted(commune_sizes.items()), {c: sorted(vs.items()) for c, vs in villages.items()}, residents,
                    n_communes=min(ms.communes_per_stratum, len(commune_sizes)),
                    villages_per_commune=ms.villages_per_commune, people_per_village=ms.people_per_village,
                    seed=seed, stratum_key=key, village_method=ms.village_method, reserve_share=body.reserve_share,
                )
                got = result.rows()
                rows.extend(got)
                strata.append(dict(stratum=key, population=len(members), n=sum(1 for r in got if r.role == "sample"),
                                   n_reserve=sum(1 for r in got if r.role == "reserve"),
                                   communes=len(commune_sizes), communes_selected=len(result.communes.selected)))
    except DesignError as exc:
        raise _design_error(exc) from None
    strata.sort(key=lambda s: s["stratum"])
    return Computed(strata, rows, sample_hash(rows))


# --------------------------------------------------------------------------------------------
# draw, verify, reset


async def _details(session: AsyncSession, wave_id: str, keys: list[str]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    cols = [frame_record.c.record_key] + [frame_record.c[c] for c in DETAIL_COLUMNS]
    for start in range(0, len(keys), 1000):
        part = keys[start : start + 1000]
        for r in (await session.execute(
            select(*cols).where(frame_record.c.wave_id == wave_id, frame_record.c.record_key.in_(part))
        )).all():
            out[r[0]] = tuple(r[1:])
    return out


def unit_out(row: dict) -> dict:
    """A stored sample unit as the API and the events show it. The replacement group of a
    stratified draw is the stratum alone, and each unit is its own cluster (``psu`` = its id)."""
    stratified = row["psu"] == ""
    return dict(
        unit_id=row["unit_id"], stratum=row["stratum"], role=row["role"], order=row["position"],
        province_code=row["province_code"], commune_code=row["commune_code"],
        psu=row["unit_id"] if stratified else row["psu"], ssu=None if stratified else row["ssu"],
        pi=row["pi"], weight=row["weight"], level=row["level"], field=row["field"],
        procedure_code=row["procedure_code"], respondent_type=row["respondent_type"],
    )


def sampled_unit(row: dict) -> SampledUnit:
    return SampledUnit(**unit_out(row))


async def run_draw(session: AsyncSession, tables, principal: Principal, wave_id: str) -> dict:
    wave = await F._wave_for_frame(session, principal, wave_id)
    F._check_manager(principal, wave)
    if await active_draw(session, wave.id):
        raise InvalidState("The wave has been drawn already. A new draw needs a reset by the ministry, which is audited.")
    if wave.status != "frame_open":
        raise InvalidState(f"The wave is {wave.status}: it is drawn from frame_open, once its frame is closed.")
    frow = await F.frame_row(session, wave.id)
    if frow is None or frow["status"] != "closed":
        raise InvalidState("Close the frame first: a draw needs the frame's fingerprint.")
    drow = await get_design(session, wave.id)
    if drow is None:
        raise InvalidState("Set the wave's design first (PUT /v1/waves/{wave_id}/design).")
    body = DesignBody.model_validate(drow["body"])
    computed = await compute(session, wave.id, frow["kind"], body, wave.seed)

    generation = int(await session.scalar(select(func.coalesce(func.max(draw.c.generation), 0)).where(
        draw.c.wave_id == wave.id))) + 1
    draw_id = str(uuid.uuid4())
    now = utcnow()
    n_sample = sum(1 for r in computed.rows if r.role == "sample")
    try:
        async with session.begin_nested():
            await session.execute(draw.insert().values(
                id=draw_id, wave_id=wave.id, generation=generation, status="active", sample_hash=computed.sample_hash,
                frame_fingerprint=frow["fingerprint"], design=drow["body"], strata=computed.strata, n_sample=n_sample,
                n_reserve=len(computed.rows) - n_sample, drawn_at=now, drawn_by=principal.actor))
    except IntegrityError as exc:
        raise Conflict("The wave is being drawn by another request.") from exc

    details = await _details(session, wave.id, [r.unit_id for r in computed.rows])
    stored: list[dict] = []
    for r in computed.rows:
        d = dict(zip(DETAIL_COLUMNS, details[r.unit_id]))
        stored.append(dict(
            wave_id=wave.id, unit_id=str(uuid.uuid5(UNIT_NAMESPACE, f"{draw_id}:{r.unit_id}")), draw_id=draw_id,
            record_key=r.unit_id, stratum=r.stratum, psu=r.psu, ssu=r.ssu, role=r.role, position=r.order,
            pi=r.pi, weight=r.weight, status="selected" if r.role == "sample" else "reserve", reason=None,
            replaced_by=None, replaces=None, changed_at=None, **d))
    conn = await session.connection()
    for start in range(0, len(stored), INSERT_CHUNK):
        await conn.execute(sample_unit.insert(), stored[start : start + INSERT_CHUNK])

    wave.status = "sampled"
    wave.updated_at = now
    await session.flush()
    await audit.record(session, tables["audit_log"], principal, "sample.draw", "draw", draw_id, wave_id=wave.id,
                       details={"generation": generation, "sample_hash": computed.sample_hash, "n_sample": n_sample,
                                "n_reserve": len(stored) - n_sample, "frame_fingerprint": frow["fingerprint"]})
    from services.sampling.service import _wave_event

    await add_event(session, tables["outbox"], _wave_event(WaveUpdated, wave))
    sampled = [sampled_unit(u) for u in stored if u["role"] == "sample"]
    chunks = max(1, -(-len(sampled) // CHUNK_UNITS))
    summaries = [StratumSummary(stratum=s["stratum"], population=s["population"], n=s["n"], n_reserve=s["n_reserve"])
                 for s in computed.strata]
    for i in range(chunks):
        await add_event(session, tables["outbox"], SampleDrawn(
            wave_id=wave.id, draw_id=draw_id, methodology_version=wave.methodology_version,
            sample_hash=computed.sample_hash, chunk=i, chunks=chunks, strata=summaries if i == 0 else [],
            units=sampled[i * CHUNK_UNITS : (i + 1) * CHUNK_UNITS]))
    return await read_draw_row(session, draw_id)


async def read_draw_row(session: AsyncSession, draw_id: str) -> dict:
    row = (await session.execute(select(draw).where(draw.c.id == draw_id))).mappings().one()
    return dict(row)


async def current_draw(session: AsyncSession, principal: Principal, wave_id: str) -> dict:
    wave = await F._wave_for_frame(session, principal, wave_id)
    row = await active_draw(session, wave.id)
    if row is None:
        raise NotFound("This wave has not been drawn (or its draw was reset).")
    return row


async def verify(session: AsyncSession, principal: Principal, wave_id: str, seed: int) -> dict:
    """Recompute the wave's draw with ``seed`` on the stored frame and the draw's design; an
    observer compares the hash with the published one (the seed itself is never shown)."""
    wave = await F._wave_for_frame(session, principal, wave_id)
    row = await active_draw(session, wave.id)
    if row is None:
        raise InvalidState("This wave has not been drawn: there is nothing to verify.")
    frow = await F.frame_row(session, wave.id)
    computed = await compute(session, wave.id, frow["kind"], DesignBody.model_validate(row["design"]), seed)
    return dict(sample_hash=computed.sample_hash, frame_fingerprint=frow["fingerprint"], drawn_hash=row["sample_hash"],
                matches=computed.sample_hash == row["sample_hash"])


async def reset(session: AsyncSession, tables, principal: Principal, wave_id: str, reason: str) -> Wave:
    if principal.role not in (Role.ministry, Role.service):
        raise Forbidden("Only the ministry resets a drawn wave.")
    wave = await F._wave_for_frame(session, principal, wave_id)
    row = await active_draw(session, wave.id)
    if row is None:
        raise InvalidState("This wave has no draw to reset.")
    if wave.status != "sampled":
        raise InvalidState(f"The wave is {wave.status}: a draw can be reset only before fieldwork starts.")
    now = utcnow()
    done = await session.execute(update(draw).where(draw.c.id == row["id"], draw.c.status == "active").values(
        status="voided", voided_at=now, void_reason=reason))
    if done.rowcount != 1:
        raise Conflict("The draw was reset concurrently.")
    await session.execute(delete(sample_unit).where(sample_unit.c.wave_id == wave.id))
    wave.status = "frame_open"
    wave.updated_at = now
    await session.flush()
    await audit.record(session, tables["audit_log"], principal, "sample.reset", "draw", row["id"], wave_id=wave.id,
                       reason=reason, details={"generation": row["generation"], "sample_hash": row["sample_hash"]})
    from services.sampling.service import _wave_event

    await add_event(session, tables["outbox"], _wave_event(WaveUpdated, wave))
    # Names the voided draw, so survey withdraws its forms and verification its units: the wave
    # going back to frame_open does not say which draw is gone (a re-draw may already follow).
    await add_event(session, tables["outbox"], SampleVoided(wave_id=wave.id, draw_id=row["id"], reason=reason,
                                                            voided_at=now))
    return wave
