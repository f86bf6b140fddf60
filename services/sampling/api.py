"""Sampling's HTTP API (OpenAPI contract for the ministry, provinces, portals and observers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from services.sampling import service
from services.sampling.schemas import AuditEntry, AuditPage, WaveCreate, WavePage, WaveRead, WaveUpdate
from shared import audit
from shared.auth import CurrentPrincipal, Principal, Role, require_roles
from shared.service import read_session, unit_of_work

router = APIRouter(prefix="/v1", tags=["waves"])


@router.post("/waves", response_model=WaveRead, status_code=201, summary="Create a wave")
async def create_wave(
    body: WaveCreate,
    request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.ministry, Role.province))],
) -> WaveRead:
    async with unit_of_work(request) as session:
        wave = await service.create_wave(session, request.app.state.tables, principal, body)
    return WaveRead.model_validate(wave)


@router.get("/waves", response_model=WavePage, summary="List waves visible to the caller")
async def list_waves(
    request: Request,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> WavePage:
    async with read_session(request) as session:
        waves, total = await service.list_waves(session, principal, limit, offset)
    return WavePage(items=[WaveRead.model_validate(w) for w in waves], total=total)


@router.get("/waves/{wave_id}", response_model=WaveRead, summary="Read a wave")
async def get_wave(wave_id: str, request: Request, principal: CurrentPrincipal) -> WaveRead:
    async with read_session(request) as session:
        return WaveRead.model_validate(await service.get_wave(session, principal, wave_id))


@router.patch("/waves/{wave_id}", response_model=WaveRead, summary="Change a wave or move its status")
async def update_wave(
    wave_id: str,
    body: WaveUpdate,
    request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.ministry, Role.province))],
) -> WaveRead:
    async with unit_of_work(request) as session:
        wave = await service.update_wave(session, request.app.state.tables, principal, wave_id, body)
    return WaveRead.model_validate(wave)


@router.get("/waves/{wave_id}/audit", response_model=AuditPage, tags=["audit"], summary="Audit log of a wave")
async def wave_audit(
    wave_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.ministry, Role.observer, Role.province))],
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    async with read_session(request) as session:
        await service.get_wave(session, principal, wave_id)  # existence and province scope
        rows = await audit.entries(session, request.app.state.tables["audit_log"], wave_id=wave_id, after=after, limit=limit)
    items = [AuditEntry(**r) for r in rows]
    return AuditPage(items=items, next_after=items[-1].seq if len(items) == limit else None)
