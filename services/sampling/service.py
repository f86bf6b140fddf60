"""Sampling's domain operations. Each runs in the caller's transaction and writes its audit entry
and its events there too, so a change, its audit trail and its announcement commit together."""

from __future__ import annotations

from sqlalchemy import Table, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.sampling.models import Wave
from services.sampling.schemas import WaveCreate, WaveUpdate
from shared import audit
from shared.auth import SCOPED_ROLES, Principal, Role, ensure_province_visible, ensure_province_writable
from shared.contracts.sampling import WaveCreated, WaveUpdated
from shared.db import utcnow
from shared.errors import BadRequest, Conflict, Forbidden, InvalidState, NotFound
from shared.outbox import add_event

# Status moves forward only; ``sampled`` is reached by drawing, not by editing.
TRANSITIONS: dict[str, set[str]] = {
    "draft": {"frame_open"},
    "frame_open": {"draft"},
    "sampled": {"in_field"},
    "in_field": {"closed"},
    "closed": set(),
}


def _wave_event(cls, wave: Wave):
    return cls(
        wave_id=wave.id,
        code=wave.code,
        name=wave.name,
        scope=wave.scope,
        province_code=wave.province_code,
        year=wave.year,
        methodology_version=wave.methodology_version,
        fieldwork_start=wave.fieldwork_start,
        fieldwork_end=wave.fieldwork_end,
        status=wave.status,
    )


async def create_wave(session: AsyncSession, tables: dict[str, Table], principal: Principal, body: WaveCreate) -> Wave:
    if body.scope == "national" and principal.role != Role.ministry:
        raise Forbidden("Only the ministry creates national waves.")
    if body.scope == "provincial":
        ensure_province_writable(principal, body.province_code, "province")
    existing = await session.scalar(select(Wave.id).where(Wave.code == body.code))
    if existing:
        raise Conflict(f"A wave with code {body.code} exists already.", wave_id=existing)
    wave = Wave(**body.model_dump(exclude={"seed"}), seed=body.resolved_seed())
    session.add(wave)
    try:
        await session.flush()
    except IntegrityError as exc:  # a concurrent create with the same code
        raise Conflict(f"A wave with code {body.code} exists already.") from exc
    await audit.record(session, tables["audit_log"], principal, "wave.create", "wave", wave.id, wave_id=wave.id,
                       details=body.model_dump(mode="json", exclude={"seed"}))
    await add_event(session, tables["outbox"], _wave_event(WaveCreated, wave))
    return wave


async def get_wave(session: AsyncSession, principal: Principal, wave_id: str) -> Wave:
    from services.sampling.frames import _is_uuid

    wave = await session.get(Wave, wave_id) if _is_uuid(wave_id) else None
    if wave is None:
        raise NotFound(f"No wave {wave_id}.")
    ensure_province_visible(principal, wave.province_code, "wave")
    return wave


async def list_waves(session: AsyncSession, principal: Principal, limit: int, offset: int) -> tuple[list[Wave], int]:
    query = select(Wave)
    if principal.role in SCOPED_ROLES:
        query = query.where((Wave.province_code.is_(None)) | (Wave.province_code == principal.province_code))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Wave.year.desc(), Wave.code).limit(limit).offset(offset))
    return list(rows), total or 0


async def update_wave(
    session: AsyncSession, tables: dict[str, Table], principal: Principal, wave_id: str, body: WaveUpdate
) -> Wave:
    wave = await get_wave(session, principal, wave_id)
    if principal.role not in (Role.ministry, Role.province):
        raise Forbidden("Only the ministry or the wave's province changes a wave.")
    ensure_province_writable(principal, wave.province_code, "wave")
    changes = body.model_dump(exclude_unset=True, exclude={"reason"})
    if "status" in changes and changes["status"] != wave.status:
        if changes["status"] not in TRANSITIONS[wave.status]:
            raise InvalidState(
                f"A wave cannot go from {wave.status} to {changes['status']}.",
                allowed=sorted(TRANSITIONS[wave.status]),
            )
    if wave.status == "closed":
        raise InvalidState("A closed wave cannot change.")
    if wave.status != "draft" and {"methodology_version"} & changes.keys():
        raise InvalidState("The methodology version is fixed once the frame is open.")
    start = changes.get("fieldwork_start", wave.fieldwork_start)
    end = changes.get("fieldwork_end", wave.fieldwork_end)
    if start and end and end < start:
        raise InvalidState("fieldwork_end is before fieldwork_start.")
    before = {k: getattr(wave, k) for k in changes}
    for key, value in changes.items():
        setattr(wave, key, value)
    wave.updated_at = utcnow()
    await session.flush()
    await audit.record(
        session, tables["audit_log"], principal, "wave.update", "wave", wave.id, wave_id=wave.id, reason=body.reason,
        details={"before": {k: str(v) for k, v in before.items()}, "after": {k: str(v) for k, v in changes.items()}},
    )
    await add_event(session, tables["outbox"], _wave_event(WaveUpdated, wave))
    return wave


# --------------------------------------------------------------------------------------------
# Administrative maps


async def import_units(session: AsyncSession, tables: dict[str, Table], principal: Principal, body) -> dict:
    """Add an older or other map (e.g. 63 provinces with districts). Units already present (same
    set, level, code) are kept as they are; the import is all or nothing."""
    from services.sampling import units

    if body.unit_set == units.CURRENT_SET:
        raise BadRequest(f"The {units.CURRENT_SET} map comes from the vietnam-provinces package; import other maps "
                         "under their own unit_set name.")
    by_code = {(u.level, u.code): u for u in body.units}
    if len(by_code) != len(body.units):
        raise BadRequest("The import lists a unit (level, code) twice.")
    provinces = {u.code for u in body.units if u.level == "province"}
    parents = {u.code: u for u in body.units if u.level in ("province", "district")}
    def province_of(u, depth: int = 0) -> str | None:
        if u.level == "province":
            return u.code
        if u.province_code is not None:
            return u.province_code
        parent = parents.get(u.parent_code) if u.parent_code else None
        return province_of(parent, depth + 1) if parent is not None and depth < 3 else None

    rows, problems = [], []
    for u in body.units:
        province = province_of(u)
        if province is None or province not in provinces:
            problems.append(f"{u.level} {u.code}: province unknown (give province_code or a parent in the import)")
            continue
        rows.append(dict(unit_set=body.unit_set, level=u.level, code=u.code, name=units.nfc(u.name),
                         parent_code=u.parent_code, province_code=province, valid_from=body.valid_from,
                         valid_to=body.valid_to))
    if problems:
        raise BadRequest(f"{len(problems)} units cannot be placed; nothing was imported.", problems=problems[:50])
    added = await units.upsert_units(session, rows)
    await audit.record(session, tables["audit_log"], principal, "units.import", "unit_set", body.unit_set,
                       details={"received": len(rows), "added": added})
    return {"unit_set": body.unit_set, "received": len(rows), "added": added}


async def import_crosswalk(session: AsyncSession, tables: dict[str, Table], principal: Principal, body) -> dict:
    """Old→new links between two maps; every code must exist in its map (all or nothing)."""
    from services.sampling import units
    from services.sampling.models import admin_unit

    known: dict[str, set[tuple[str, str]]] = {}
    for name in {body.from_set, body.to_set}:
        rows = await session.execute(
            select(admin_unit.c.level, admin_unit.c.code).where(admin_unit.c.unit_set == name)
        )
        known[name] = {(lvl, code) for lvl, code in rows.all()}
    unknown = [f"{body.from_set} {link.from_level} {link.from_code}" for link in body.links
               if (link.from_level, link.from_code) not in known[body.from_set]]
    unknown += [f"{body.to_set} {link.to_level} {link.to_code}" for link in body.links
                if (link.to_level, link.to_code) not in known[body.to_set]]
    if unknown:
        raise BadRequest(f"{len(unknown)} links name units that are not in their map; nothing was imported.",
                         unknown=sorted(set(unknown))[:50])
    rows = [dict(from_set=body.from_set, to_set=body.to_set, **link.model_dump()) for link in body.links]
    added = await units.add_crosswalk(session, rows)
    await audit.record(session, tables["audit_log"], principal, "crosswalk.import", "crosswalk",
                       f"{body.from_set}->{body.to_set}", details={"received": len(rows), "added": added})
    return {"unit_set": body.to_set, "received": len(rows), "added": added}
