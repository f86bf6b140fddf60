"""Sampling's domain operations. Each runs in the caller's transaction and writes its audit entry
and its events there too, so a change, its audit trail and its announcement commit together."""

from __future__ import annotations

from sqlalchemy import Table, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.sampling.models import Wave
from services.sampling.schemas import WaveCreate, WaveUpdate
from shared import audit
from shared.auth import Principal, Role, SCOPED_ROLES, ensure_province_visible, ensure_province_writable
from shared.contracts.sampling import WaveCreated, WaveUpdated
from shared.db import utcnow
from shared.errors import Conflict, Forbidden, InvalidState, NotFound
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
    wave = await session.get(Wave, wave_id)
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
