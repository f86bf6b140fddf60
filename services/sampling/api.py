"""Sampling's HTTP API (OpenAPI contract for the ministry, provinces, portals and observers)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from services.sampling import drawing, frames, samples, service, units
from services.sampling.schemas import (
    AuditEntry,
    AuditPage,
    BatchReport,
    Contact,
    ContactPage,
    CrosswalkImport,
    CrosswalkPage,
    CrosswalkRead,
    DesignBody,
    DesignPreview,
    DesignRead,
    DrawRead,
    FrameBatch,
    FrameRead,
    ImportResult,
    ReplacementRequest,
    ReplacementResult,
    ReserveStatus,
    ResetRequest,
    SamplePage,
    SampleUnitRead,
    UnitImport,
    UnitLevel,
    UnitPage,
    UnitRead,
    UnitSetSummary,
    VerifyRequest,
    VerifyResult,
    WaveCreate,
    WavePage,
    WaveRead,
    WaveUpdate,
)
from shared import audit
from shared.auth import CurrentPrincipal, Principal, Role, require_roles
from shared.errors import UnsupportedMediaType, problem_responses
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


# --------------------------------------------------------------------------------------------
# Administrative units and the crosswalk

units_router = APIRouter(prefix="/v1", tags=["units"])
UNIT_SET = r"^[a-z0-9][a-z0-9.-]{1,39}$"
UNIT_CODE = r"^[0-9]{2,5}$"


@units_router.get("/unit-sets", response_model=list[UnitSetSummary], summary="Administrative maps known")
async def list_unit_sets(request: Request, principal: CurrentPrincipal) -> list[UnitSetSummary]:
    async with read_session(request) as session:
        return [UnitSetSummary(**s) for s in await units.unit_sets(session)]


@units_router.get("/units", response_model=UnitPage, summary="Administrative units of a map")
async def list_units(
    request: Request,
    principal: CurrentPrincipal,
    unit_set: Annotated[str, Query(pattern=UNIT_SET)] = units.CURRENT_SET,
    level: Annotated[UnitLevel | None, Query()] = None,
    province_code: Annotated[str | None, Query(pattern=UNIT_CODE)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> UnitPage:
    async with read_session(request) as session:
        rows, total = await units.list_units(session, unit_set, level, province_code, limit, offset)
    return UnitPage(items=[UnitRead(**r) for r in rows], total=total)


@units_router.post("/units/import", response_model=ImportResult, summary="Import an older or other administrative map")
async def import_units(
    body: UnitImport, request: Request, principal: Annotated[Principal, Depends(require_roles(Role.ministry))]
) -> ImportResult:
    async with unit_of_work(request) as session:
        return ImportResult(**await service.import_units(session, request.app.state.tables, principal, body))


@units_router.post("/crosswalk", response_model=ImportResult, summary="Add old→new unit links (for trends)")
async def import_crosswalk(
    body: CrosswalkImport, request: Request, principal: Annotated[Principal, Depends(require_roles(Role.ministry))]
) -> ImportResult:
    async with unit_of_work(request) as session:
        return ImportResult(**await service.import_crosswalk(session, request.app.state.tables, principal, body))


@units_router.get("/crosswalk", response_model=CrosswalkPage, summary="Old→new unit links")
async def read_crosswalk(
    request: Request,
    principal: CurrentPrincipal,
    from_set: Annotated[str, Query(pattern=UNIT_SET)],
    to_set: Annotated[str, Query(pattern=UNIT_SET)] = units.CURRENT_SET,
    from_code: Annotated[str | None, Query(pattern=UNIT_CODE)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> CrosswalkPage:
    async with read_session(request) as session:
        rows, total = await units.crosswalk(session, from_set, to_set, from_code, limit, offset)
    return CrosswalkPage(items=[CrosswalkRead(**r) for r in rows], total=total)


# --------------------------------------------------------------------------------------------
# Frames

frames_router = APIRouter(prefix="/v1/waves/{wave_id}/frame", tags=["frames"])
FRAME_WRITERS = require_roles(Role.portal, Role.ministry, Role.province)
CSV_TYPES = ("text/csv", "application/csv", "application/octet-stream", "text/plain")


@frames_router.post(
    "/batches", response_model=BatchReport, summary="Push a batch of frame records (portal)",
    responses=problem_responses(413),
)
async def push_batch(
    wave_id: str, body: FrameBatch, request: Request, principal: Annotated[Principal, Depends(FRAME_WRITERS)]
) -> BatchReport:
    async with unit_of_work(request) as session:
        report = await frames.push_batch(session, request.app.state.tables, principal, wave_id, body.kind,
                                         body.batch_id, body.records)
    return BatchReport(**report)


@frames_router.post(
    "/csv", response_model=BatchReport, summary="Upload a whole frame file as CSV (UTF-8), streamed",
    responses=problem_responses(413, 415),
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def upload_csv(
    wave_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(FRAME_WRITERS)],
    batch_id: Annotated[str, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")],
    kind: Annotated[Literal["transaction", "resident"], Query()] = "transaction",
) -> BatchReport:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in CSV_TYPES:
        raise UnsupportedMediaType(f"Send the file as text/csv (got {ctype or 'no content type'}).")
    async with unit_of_work(request) as session:
        report = await frames.upload_csv(session, request.app.state.tables, principal, wave_id, kind, batch_id,
                                         request.stream())
    return BatchReport(**report)


@frames_router.get("", response_model=FrameRead, summary="A wave's frame: status, size, fingerprint")
async def read_frame(wave_id: str, request: Request, principal: CurrentPrincipal) -> FrameRead:
    async with read_session(request) as session:
        return FrameRead(**await frames.read_frame(session, principal, wave_id))


@frames_router.post("/close", response_model=FrameRead, summary="Close the frame and fix its fingerprint")
async def close_frame(
    wave_id: str, request: Request, principal: Annotated[Principal, Depends(require_roles(Role.ministry, Role.province))]
) -> FrameRead:
    async with unit_of_work(request) as session:
        return FrameRead(**await frames.close_frame(session, request.app.state.tables, principal, wave_id))


# --------------------------------------------------------------------------------------------
# Design, draw, verification, reset

draws_router = APIRouter(prefix="/v1/waves/{wave_id}", tags=["design and draw"])
MANAGERS = require_roles(Role.ministry, Role.province)


@draws_router.put("/design", response_model=DesignRead, summary="Set the wave's design")
async def put_design(
    wave_id: str, body: DesignBody, request: Request, principal: Annotated[Principal, Depends(MANAGERS)]
) -> DesignRead:
    async with unit_of_work(request) as session:
        return DesignRead(**await drawing.put_design(session, request.app.state.tables, principal, wave_id, body))


@draws_router.get("/design", response_model=DesignRead, summary="The wave's design")
async def get_design(wave_id: str, request: Request, principal: CurrentPrincipal) -> DesignRead:
    async with read_session(request) as session:
        return DesignRead(**await drawing.read_design(session, principal, wave_id))


@draws_router.post("/design/preview", response_model=DesignPreview, summary="Sizes per stratum of a design, before drawing")
async def preview_design(
    wave_id: str, body: DesignBody, request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.ministry, Role.province, Role.observer))],
) -> DesignPreview:
    async with read_session(request) as session:
        return DesignPreview(**await drawing.preview(session, principal, wave_id, body))


@draws_router.post("/draw", response_model=DrawRead, status_code=201, summary="Draw the sample and reserve lists")
async def run_draw(wave_id: str, request: Request, principal: Annotated[Principal, Depends(MANAGERS)]) -> DrawRead:
    async with unit_of_work(request) as session:
        return DrawRead(**await drawing.run_draw(session, request.app.state.tables, principal, wave_id))


@draws_router.get("/draw", response_model=DrawRead, summary="The wave's current draw (hash, strata, sizes)")
async def get_draw(wave_id: str, request: Request, principal: CurrentPrincipal) -> DrawRead:
    async with read_session(request) as session:
        return DrawRead(**await drawing.current_draw(session, principal, wave_id))


@draws_router.post("/draw/verify", response_model=VerifyResult, summary="Re-draw with a given seed and compare hashes")
async def verify_draw(
    wave_id: str, body: VerifyRequest, request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.observer, Role.ministry, Role.province))],
) -> VerifyResult:
    async with read_session(request) as session:
        return VerifyResult(**await drawing.verify(session, principal, wave_id, body.seed))


@draws_router.post("/draw/reset", response_model=WaveRead, summary="Void the draw so the wave can be drawn again (ministry)")
async def reset_draw(
    wave_id: str, body: ResetRequest, request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.ministry))],
) -> WaveRead:
    async with unit_of_work(request) as session:
        wave = await drawing.reset(session, request.app.state.tables, principal, wave_id, body.reason)
    return WaveRead.model_validate(wave)


# --------------------------------------------------------------------------------------------
# The sample in use: lists, export, replacements, reserves, contacts

sample_router = APIRouter(prefix="/v1/waves/{wave_id}", tags=["sample"])
SAMPLE_READERS = require_roles(Role.ministry, Role.province, Role.observer, Role.vnpost)


@sample_router.get("/sample", response_model=SamplePage, summary="Sample and reserve lists (no contacts)")
async def list_sample(
    wave_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(SAMPLE_READERS)],
    role: Annotated[Literal["sample", "reserve"] | None, Query()] = None,
    status: Annotated[Literal["selected", "reserve", "released", "replaced", "unreplaced"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
) -> SamplePage:
    async with read_session(request) as session:
        items, total = await samples.list_sample(session, principal, wave_id, role, status, limit, offset)
    return SamplePage(items=[SampleUnitRead(**i) for i in items], total=total)


@sample_router.get(
    "/sample.csv", summary="Download the sample and reserve lists as CSV", response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "CSV, UTF-8 with BOM"}},
)
async def export_sample(
    wave_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(SAMPLE_READERS)],
    role: Annotated[Literal["sample", "reserve"] | None, Query()] = None,
    contacts: Annotated[bool, Query(description="Add contact columns (roles ministry, province, vnpost)")] = False,
) -> StreamingResponse:
    sessions = request.app.state.sessions
    body, wave = await samples.export_csv(sessions, principal, wave_id, role, contacts)
    async with unit_of_work(request) as session:
        await samples.record_export(session, request.app.state.tables, principal, wave.id, contacts)
    return StreamingResponse(body, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="sample-{wave.code}.csv"'})


@sample_router.post("/replacements", response_model=ReplacementResult,
                    summary="Replace a unit by the next reserve of its group (survey does this by event)")
async def replace_unit(
    wave_id: str, body: ReplacementRequest, request: Request, principal: Annotated[Principal, Depends(MANAGERS)]
) -> ReplacementResult:
    async with unit_of_work(request) as session:
        result = await samples.replace(session, request.app.state.tables, principal, wave_id, str(body.unit_id),
                                       body.reason)
    return ReplacementResult(**result)


@sample_router.get("/reserves", response_model=ReserveStatus, summary="Reserve lists per group: used, left, exhausted")
async def reserves(
    wave_id: str, request: Request, principal: Annotated[Principal, Depends(SAMPLE_READERS)],
    exhausted: Annotated[bool, Query(description="Only groups whose reserve is used up")] = False,
) -> ReserveStatus:
    async with read_session(request) as session:
        return ReserveStatus(**await samples.reserve_status(session, principal, wave_id, exhausted))


@sample_router.get("/contacts", response_model=ContactPage,
                   summary="Contacts of sampled units (Vietnam Post, provinces: own province, ministry)")
async def read_contacts(
    wave_id: str,
    request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.vnpost, Role.province, Role.ministry))],
    unit_id: Annotated[list[uuid.UUID] | None, Query(max_length=1000)] = None,
    province_code: Annotated[str | None, Query(pattern=r"^[0-9]{2}$")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=100_000_000)] = 0,
) -> ContactPage:
    async with unit_of_work(request) as session:
        page = await samples.contacts(session, request.app.state.tables, principal, wave_id,
                                      [str(u) for u in unit_id or []], province_code, limit, offset)
    return ContactPage(items=[Contact(**c) for c in page["items"]], not_available=page["not_available"],
                       total=page["total"])


ROUTERS = [router, units_router, frames_router, draws_router, sample_router]
