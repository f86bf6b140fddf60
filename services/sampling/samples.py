"""A drawn sample in use: listing and CSV export for supervision, replacements from the reserve
lists (danh sách dự phòng), the reserve status per group, and the contacts of sampled units.

Replacement rule: a unit that refused, could not be reached, moved, died or is ineligible is
replaced by the **next waiting reserve unit of its group** (the stratum; in a multi-stage draw
the stratum, commune and village), in the reserve list's order. When the group has no reserve
left the unit is marked ``unreplaced``: the ``unit.replaced`` event says
``reserve_exhausted: true``, the reserve status lists the group as exhausted, and the metric
``sipas_sampling_reserve_exhausted_groups`` counts such groups. Nothing runs out silently.

Each step is a conditional UPDATE (the unit must still be in use, the reserve still waiting), so
two requests racing for one unit or one reserve cannot both win, on either backend.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.sampling import frames as F
from services.sampling.drawing import active_draw, sampled_unit, unit_out
from services.sampling.metrics import REPLACEMENTS, RESERVE_EXHAUSTED
from services.sampling.models import Wave, frame_contact, sample_unit
from shared import audit
from shared.auth import SCOPED_ROLES, Principal, Role
from shared.contracts.sampling import UnitReplaced
from shared.db import utcnow
from shared.errors import Forbidden, InvalidState, NotFound
from shared.outbox import add_event

log = logging.getLogger("sipas.sampling")

IN_USE = ("selected", "released")  # a unit that holds a place in the sample
CONTACT_ROLES = {Role.ministry, Role.province, Role.vnpost, Role.service}
CSV_FIELDS = ["unit_id", "stratum", "role", "order", "status", "province_code", "commune_code", "psu", "ssu", "pi",
              "weight", "level", "field", "procedure_code", "respondent_type", "reason", "replaced_by", "replaces"]
CONTACT_FIELDS = ["full_name", "phone", "email", "address"]


def _scoped(principal: Principal, query):
    if principal.role in SCOPED_ROLES:
        return query.where(sample_unit.c.province_code == principal.province_code)
    return query


def unit_read(row: dict) -> dict:
    return {**unit_out(row), "status": row["status"], "reason": row["reason"], "replaced_by": row["replaced_by"],
            "replaces": row["replaces"]}


async def _drawn_wave(session: AsyncSession, principal: Principal, wave_id: str) -> Wave:
    wave = await F._wave_for_frame(session, principal, wave_id)
    if await active_draw(session, wave.id) is None:
        raise NotFound("This wave has not been drawn (or its draw was reset).")
    return wave


def _sample_query(wave_id: str, role: str | None, status: str | None):
    query = select(sample_unit).where(sample_unit.c.wave_id == wave_id)
    if role:
        query = query.where(sample_unit.c.role == role)
    if status:
        query = query.where(sample_unit.c.status == status)
    return query


ORDER = (sample_unit.c.stratum, sample_unit.c.psu, sample_unit.c.ssu, sample_unit.c.role.desc(), sample_unit.c.position)


async def list_sample(session: AsyncSession, principal: Principal, wave_id: str, role: str | None,
                      status: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
    """Units in a stable order: stratum, group, sample before reserve, position."""
    wave = await _drawn_wave(session, principal, wave_id)
    query = _scoped(principal, _sample_query(wave.id, role, status))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.execute(query.order_by(*ORDER).limit(limit).offset(offset))
    return [unit_read(dict(r)) for r in rows.mappings()], int(total or 0)


async def export_csv(sessions, principal: Principal, wave_id: str, role: str | None,
                     with_contacts: bool) -> AsyncIterator[str]:
    """The sample and reserve lists as CSV (UTF-8 with BOM, so spreadsheet programs read the
    Vietnamese text). Contacts only for roles that may read them; the export is audited."""
    if with_contacts and principal.role not in CONTACT_ROLES:
        raise Forbidden("This key's role may not read contact details.")
    async with sessions() as session:
        wave = await _drawn_wave(session, principal, wave_id)

    async def rows() -> AsyncIterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(CSV_FIELDS + (CONTACT_FIELDS if with_contacts else []))
        yield "\ufeff" + buf.getvalue()
        async with sessions() as session:
            query = _scoped(principal, _sample_query(wave.id, role, None))
            if with_contacts:
                query = query.add_columns(*[frame_contact.c[c].label(f"contact_{c}") for c in CONTACT_FIELDS]).outerjoin(
                    frame_contact, and_(frame_contact.c.wave_id == sample_unit.c.wave_id,
                                        frame_contact.c.record_key == sample_unit.c.record_key))
            result = await session.stream(query.order_by(*ORDER), execution_options={"yield_per": 5000})
            async for part in result.mappings().partitions():
                buf.seek(0)
                buf.truncate()
                for r in part:
                    d = unit_read(dict(r))
                    line = [d[k] for k in CSV_FIELDS]
                    if with_contacts:
                        line += [r[f"contact_{c}"] for c in CONTACT_FIELDS]
                    writer.writerow(["" if v is None else v for v in line])
                yield buf.getvalue()

    return rows(), wave


async def record_export(session: AsyncSession, tables, principal: Principal, wave_id: str, with_contacts: bool) -> None:
    await audit.record(session, tables["audit_log"], principal, "sample.export", "wave", wave_id, wave_id=wave_id,
                       details={"contacts": with_contacts})


# --------------------------------------------------------------------------------------------
# replacements


async def replace(session: AsyncSession, tables, principal: Principal | None, wave_id: str, unit_id: str,
                  reason: str, *, form_code: str | None = None) -> dict:
    """Release the next reserve of the unit's group for ``unit_id`` (idempotent: a unit already
    replaced, or already found without a reserve, returns what happened then)."""
    wave = await session.get(Wave, wave_id) if F._is_uuid(wave_id) else None
    if wave is None:
        raise NotFound(f"No wave {wave_id}.")
    if principal is not None:
        F._check_manager(principal, wave) if principal.role != Role.province else _province_may(principal, wave)
    unit = (await session.execute(select(sample_unit).where(
        sample_unit.c.wave_id == wave.id, sample_unit.c.unit_id == unit_id))).mappings().first()
    if unit is None or (principal is not None and principal.role in SCOPED_ROLES
                        and unit["province_code"] != principal.province_code):
        raise NotFound(f"No unit {unit_id} in this wave's sample.")
    unit = dict(unit)
    if unit["status"] in ("replaced", "unreplaced"):
        return await _outcome(session, unit, already=True)
    if unit["status"] not in IN_USE:
        raise InvalidState(f"Unit {unit_id} is a reserve that has not been released; only units in the sample are replaced.")
    if wave.status not in ("sampled", "in_field"):
        raise InvalidState(f"The wave is {wave.status}: replacements happen while it is sampled or in the field.")
    now = utcnow()
    claimed = await session.execute(update(sample_unit).where(
        sample_unit.c.wave_id == wave.id, sample_unit.c.unit_id == unit_id, sample_unit.c.status.in_(IN_USE)
    ).values(status="unreplaced", reason=reason, changed_at=now))
    if claimed.rowcount != 1:  # replaced concurrently: report what happened
        fresh = (await session.execute(select(sample_unit).where(
            sample_unit.c.wave_id == wave.id, sample_unit.c.unit_id == unit_id))).mappings().one()
        return await _outcome(session, dict(fresh), already=True)
    group = (sample_unit.c.wave_id == wave.id, sample_unit.c.stratum == unit["stratum"],
             sample_unit.c.psu == unit["psu"], sample_unit.c.ssu == unit["ssu"], sample_unit.c.role == "reserve")
    replacement = None
    while True:
        nxt = (await session.execute(select(sample_unit).where(*group, sample_unit.c.status == "reserve")
                                     .order_by(sample_unit.c.position).limit(1))).mappings().first()
        if nxt is None:
            break
        took = await session.execute(update(sample_unit).where(
            sample_unit.c.wave_id == wave.id, sample_unit.c.unit_id == nxt["unit_id"], sample_unit.c.status == "reserve"
        ).values(status="released", replaces=unit_id, reason=None, changed_at=now))
        if took.rowcount == 1:
            replacement = {**dict(nxt), "status": "released", "replaces": unit_id}
            break
    if replacement is not None:
        await session.execute(update(sample_unit).where(
            sample_unit.c.wave_id == wave.id, sample_unit.c.unit_id == unit_id
        ).values(status="replaced", replaced_by=replacement["unit_id"]))
    REPLACEMENTS.labels("sampling", "released" if replacement else "exhausted").inc()
    await audit.record(session, tables["audit_log"], principal, "unit.replace", "sample_unit", unit_id,
                       wave_id=wave.id, reason=reason,
                       details={"replacement": replacement["unit_id"] if replacement else None,
                                "reserve_exhausted": replacement is None, "stratum": unit["stratum"],
                                "form_code": form_code})
    await add_event(session, tables["outbox"], UnitReplaced(
        wave_id=wave.id, replaced_unit_id=unit_id, reason=reason,
        replacement=sampled_unit(replacement) if replacement else None, reserve_exhausted=replacement is None,
        draw_id=unit["draw_id"]))
    if replacement is None:
        RESERVE_EXHAUSTED.labels("sampling", wave.id).set(await exhausted_groups(session, wave.id))
    return dict(replaced_unit_id=unit_id, reason=reason, replacement=unit_read(replacement) if replacement else None,
                reserve_exhausted=replacement is None, already_handled=False)


def _province_may(principal: Principal, wave: Wave) -> None:
    """A province replaces units of its own province, in its own or a national wave."""
    if wave.province_code is not None and wave.province_code != principal.province_code:
        raise NotFound("No such wave.")


async def _outcome(session: AsyncSession, unit: dict, *, already: bool) -> dict:
    replacement = None
    if unit["replaced_by"]:
        replacement = (await session.execute(select(sample_unit).where(
            sample_unit.c.wave_id == unit["wave_id"], sample_unit.c.unit_id == unit["replaced_by"]))).mappings().first()
    return dict(replaced_unit_id=unit["unit_id"], reason=unit["reason"],
                replacement=unit_read(dict(replacement)) if replacement else None,
                reserve_exhausted=unit["status"] == "unreplaced", already_handled=already)


async def exhausted_groups(session: AsyncSession, wave_id: str) -> int:
    """Groups with a unit that lost its place and found no reserve."""
    sub = (select(sample_unit.c.stratum, sample_unit.c.psu, sample_unit.c.ssu)
           .where(sample_unit.c.wave_id == wave_id, sample_unit.c.status == "unreplaced").distinct().subquery())
    return int(await session.scalar(select(func.count()).select_from(sub)) or 0)


async def reserve_status(session: AsyncSession, principal: Principal, wave_id: str, only_exhausted: bool) -> dict:
    wave = await _drawn_wave(session, principal, wave_id)
    c = sample_unit.c

    def count(cond):
        return func.sum(case((cond, 1), else_=0))

    query = _scoped(principal, select(
        c.stratum, c.psu, c.ssu,
        count(c.role == "sample"), count(c.role == "reserve"), count(c.status == "released"),
        count(and_(c.role == "reserve", c.status == "reserve")), count(c.status == "unreplaced"),
    ).where(c.wave_id == wave.id)).group_by(c.stratum, c.psu, c.ssu).order_by(c.stratum, c.psu, c.ssu)
    groups = []
    for stratum, psu, ssu, n, reserve, released, remaining, unreplaced in (await session.execute(query)).all():
        g = dict(stratum=stratum, psu=psu, ssu=ssu, n=int(n), reserve=int(reserve), released=int(released),
                 remaining=int(remaining), unreplaced=int(unreplaced), exhausted=int(remaining) == 0)
        if not only_exhausted or g["exhausted"]:
            groups.append(g)
    exhausted = sum(1 for g in groups if g["exhausted"]) if not only_exhausted else len(groups)
    return dict(groups=groups, exhausted_groups=exhausted)


# --------------------------------------------------------------------------------------------
# contacts


async def contacts(session: AsyncSession, tables, principal: Principal, wave_id: str, unit_ids: list[str],
                   province_code: str | None, limit: int, offset: int) -> dict:
    """Contacts of units in use (the sample and released reserves), for dispatch (Vietnam Post)
    and back-checks (the province). Waiting reserves have no contact to give yet. Every read is
    audited (who, which wave, how many), never with the contact values themselves."""
    wave = await _drawn_wave(session, principal, wave_id)
    query = (
        select(sample_unit.c.unit_id, sample_unit.c.province_code, sample_unit.c.commune_code,
               *[frame_contact.c[c] for c in CONTACT_FIELDS])
        .select_from(sample_unit.outerjoin(frame_contact, and_(
            frame_contact.c.wave_id == sample_unit.c.wave_id, frame_contact.c.record_key == sample_unit.c.record_key)))
        .where(sample_unit.c.wave_id == wave.id, sample_unit.c.status != "reserve")
    )
    query = _scoped(principal, query)
    if province_code:
        query = query.where(sample_unit.c.province_code == province_code)
    if unit_ids:
        query = query.where(sample_unit.c.unit_id.in_(unit_ids))
        rows = (await session.execute(query.order_by(sample_unit.c.unit_id))).mappings().all()
        found = {r["unit_id"] for r in rows}
        missing = [u for u in unit_ids if u not in found]
        total = len(rows)
    else:
        total = int(await session.scalar(select(func.count()).select_from(query.subquery())) or 0)
        rows = (await session.execute(query.order_by(sample_unit.c.unit_id).limit(limit).offset(offset))).mappings().all()
        missing = []
    items = [dict(r) for r in rows]
    await audit.record(session, tables["audit_log"], principal, "contacts.read", "wave", wave.id, wave_id=wave.id,
                       details={"units": len(items), "requested": len(unit_ids) or None, "province_code": province_code})
    return dict(items=items, not_available=missing, total=total)
