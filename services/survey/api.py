"""Survey's HTTP API: methodology versions, forms and assignments, Vietnam Post, the online
channel, data entry and progress. Thin: the domain logic is in forms, vnpost, online,
data_entry, progress and versions."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import func, select

from services.survey import data_entry, forms as F, online, progress as P, versions, vnpost
from services.survey.documents import load_schema
from services.survey.models import form
from services.survey.schemas import (
    AnswerBatch,
    AssignRequest,
    AssignResult,
    AssignmentPage,
    BatchResult,
    CorrectionResult,
    EntryIn,
    EntryResult,
    FormDetail,
    FormPage,
    FormRead,
    MethodologySummary,
    OnlineReceipt,
    OnlineSubmission,
    OperatorStats,
    Progress,
    QrPayload,
    Questionnaire,
    StatusBatch,
    StatusChange,
)
from shared import audit
from shared.auth import SCOPED_ROLES, CurrentPrincipal, Principal, Role, ensure_province_visible, ensure_province_writable, require_roles
from shared.errors import PayloadTooLarge, problem_responses
from shared.service import json_body, read_json_body, read_session, unit_of_work

MethodologyId = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9.-]{1,39}$")]
# PostgreSQL refuses NUL in text: every free string parameter excludes it (422, not a 500).
NO_NUL = r"^[^\x00]+$"
CodePath = Annotated[str, Path(min_length=1, max_length=24, pattern=NO_NUL)]
WaveQuery = Annotated[str, Query(min_length=1, max_length=36, pattern=NO_NUL)]
Readers = Annotated[Principal, Depends(require_roles(Role.ministry, Role.province, Role.observer, Role.vnpost))]
Writers = Annotated[Principal, Depends(require_roles(Role.ministry, Role.province, Role.vnpost))]
Ministry = Annotated[Principal, Depends(require_roles(Role.ministry))]
VnPost = Annotated[Principal, Depends(require_roles(Role.vnpost))]
OBJECT = {200: {"description": "The methodology document", "content": {"application/json": {"schema": {"type": "object"}}}}}

methodologies = APIRouter(prefix="/v1", tags=["methodologies"])
forms_router = APIRouter(prefix="/v1", tags=["forms"])
vnpost_router = APIRouter(prefix="/v1/vnpost", tags=["vietnam post"])
online_router = APIRouter(prefix="/v1/online", tags=["online"])
entry_router = APIRouter(prefix="/v1/data-entry", tags=["data entry"])


# ---------------------------------------------------------------- methodologies


@methodologies.get("/methodologies", response_model=list[MethodologySummary], summary="Methodology versions")
async def list_methodologies(request: Request, principal: CurrentPrincipal) -> list[dict]:
    async with read_session(request) as session:
        return await versions.listing(session)


@methodologies.get("/methodology-schema", response_class=JSONResponse, responses=OBJECT,
                   summary="JSON Schema of a methodology document")
async def methodology_schema(principal: CurrentPrincipal) -> JSONResponse:
    return JSONResponse(load_schema())


@methodologies.get("/methodologies/{methodology_id}", response_class=JSONResponse, responses=OBJECT,
                   summary="One methodology version, the document exactly as published")
async def get_methodology(methodology_id: MethodologyId, request: Request, principal: CurrentPrincipal) -> JSONResponse:
    async with read_session(request) as session:
        return JSONResponse(await versions.document(session, methodology_id))


@methodologies.post("/methodologies", status_code=201, response_class=JSONResponse,
                    responses={**OBJECT, 201: OBJECT[200]},
                    summary="Publish a methodology version (immutable once published)")
async def publish_methodology(
    request: Request, principal: Ministry, document: Annotated[dict[str, Any], Body()],
) -> JSONResponse:
    async with unit_of_work(request) as session:
        doc, created = await versions.publish(session, principal, document)
        if created:
            await audit.record(session, request.app.state.tables["audit_log"], principal, "methodology.publish",
                               "methodology", doc["id"])
    return JSONResponse(doc, status_code=201 if created else 200)


# ---------------------------------------------------------------- forms


def _scope(principal: Principal) -> str | None:
    return principal.province_code if principal.role in SCOPED_ROLES else None


@forms_router.get("/forms", response_model=FormPage, summary="Forms of a wave")
async def list_forms(
    request: Request,
    principal: Readers,
    wave_id: WaveQuery,
    status: Annotated[str | None, Query(max_length=20, pattern=NO_NUL)] = None,
    province_code: Annotated[str | None, Query(max_length=8, pattern=NO_NUL)] = None,
    enumerator_id: Annotated[str | None, Query(max_length=40, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> FormPage:
    query = select(form).where(form.c.wave_id == wave_id)
    scope = _scope(principal)
    if scope is not None:
        query = query.where(form.c.province_code == scope)
    if status:
        query = query.where(form.c.status == status)
    if province_code:
        query = query.where(form.c.province_code == province_code)
    if enumerator_id:
        query = query.where(form.c.enumerator_id == enumerator_id)
    async with read_session(request) as session:
        total = await session.scalar(select(func.count()).select_from(query.subquery()))
        rows = (await session.execute(query.order_by(form.c.form_code).limit(limit).offset(offset))).mappings().all()
    return FormPage(items=[FormRead(**r) for r in rows], total=total or 0)


@forms_router.get("/forms/{form_code}", response_model=FormDetail, summary="A form and its status history")
async def get_form(form_code: CodePath, request: Request, principal: Readers) -> FormDetail:
    async with read_session(request) as session:
        row = await F.get_form(session, form_code)
        ensure_province_visible(principal, row["province_code"], "form")
        hist = await F.history(session, row["id"])
    return FormDetail(**row, history=hist)


@forms_router.get("/forms/{form_code}/qr", response_model=QrPayload, summary="QR payload printed on the form")
async def form_qr(form_code: CodePath, request: Request, principal: Annotated[Principal, Depends(require_roles(Role.ministry, Role.province, Role.vnpost))]) -> dict:
    async with read_session(request) as session:
        row = await F.get_form(session, form_code)
    ensure_province_visible(principal, row["province_code"], "form")
    return online.qr(request.app, row["form_code"])


@forms_router.post("/forms/{form_code}/status", response_model=FormRead, summary="Move a form to another status")
async def change_status(form_code: CodePath, body: StatusChange, request: Request, principal: Writers) -> FormRead:
    async with unit_of_work(request) as session:
        await F.lock_form(session, form_code)
        row = await F.get_form(session, form_code)
        ensure_province_writable(principal, row["province_code"], "form")
        row = await F.change_status(session, request.app.state.tables, form_code, body.status, actor=principal.actor,
                                    reason=body.reason, replacement_reason=body.replacement_reason)
    return FormRead(**row)


@forms_router.post("/forms/assign", response_model=AssignResult, summary="Assign or reassign forms in bulk")
async def assign_forms(
    body: AssignRequest, request: Request,
    principal: Annotated[Principal, Depends(require_roles(Role.ministry, Role.province))],
) -> AssignResult:
    async with unit_of_work(request) as session:
        await F.lock_wave(session, body.wave_id)
        changed, refused = await F.assign(
            session, request.app.state.tables, body.wave_id,
            [(a.form_code, a.post_office, a.enumerator_id) for a in body.assignments],
            actor=principal.actor, province_code=_scope(principal),
        )
        if changed:
            await audit.record(session, request.app.state.tables["audit_log"], principal, "forms.assign", "wave",
                               body.wave_id, wave_id=body.wave_id, details={"changed": changed})
    return AssignResult(changed=changed, not_assignable=refused)


@forms_router.get("/progress/{wave_id}", response_model=Progress, summary="Fieldwork progress of a wave")
async def wave_progress(wave_id: Annotated[str, Path(max_length=36, pattern=NO_NUL)], request: Request, principal: Readers) -> dict:
    async with read_session(request) as session:
        await F.get_wave(session, wave_id)
        return await P.progress(session, wave_id, _scope(principal))


# ---------------------------------------------------------------- Vietnam Post


@vnpost_router.get("/assignments", response_model=AssignmentPage, summary="Forms changed since a cursor (paged)")
async def pull_assignments(
    request: Request, principal: VnPost, wave_id: WaveQuery,
    since: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> dict:
    async with read_session(request) as session:
        return await vnpost.pull(session, wave_id, since, limit)


def _check_size(n: int) -> None:
    if n > vnpost.MAX_BATCH:
        raise PayloadTooLarge(f"A batch holds at most {vnpost.MAX_BATCH} records, got {n}; split it.")


@vnpost_router.post("/status-batches", response_model=BatchResult, responses=problem_responses(413),
                    summary="Push status updates (≤5,000 per batch)")
async def push_status(body: StatusBatch, request: Request, principal: VnPost) -> dict:
    _check_size(len(body.records))
    digest = F.content_hash(body.model_dump(mode="json"))
    async with unit_of_work(request) as session:
        result, replayed = await vnpost.push_statuses(
            session, request.app.state.tables, principal, body.batch_id, body.wave_id,
            [r.model_dump() for r in body.records], digest)
    return {**result, "replayed": replayed}


@vnpost_router.post("/answer-batches", response_model=BatchResult, responses=problem_responses(413),
                    openapi_extra=json_body(AnswerBatch), summary="Push completed answers (≤5,000 forms per batch)")
async def push_answers(request: Request, principal: VnPost) -> Response:
    # The body (up to 5,000 forms, ~4 MB) is parsed and validated in one pass (read_json_body);
    # the result (as documented by BatchResult, built by vnpost) is encoded by orjson.
    body = await read_json_body(request, AnswerBatch)
    _check_size(len(body.records))
    records = [{"form_code": r.form_code, "answers": r.answers, "enumerator_id": r.enumerator_id,
                "started_at": r.started_at, "duration_seconds": r.duration_seconds} for r in body.records]
    async with unit_of_work(request) as session:
        result, replayed = await vnpost.push_answers(
            request.app, session, request.app.state.tables, principal, body.batch_id, body.wave_id, records)
    return Response(orjson.dumps({**result, "replayed": replayed}), media_type="application/json")


@vnpost_router.get("/batches/{batch_id}", response_model=BatchResult, summary="Result of a batch sent earlier")
async def get_batch(batch_id: Annotated[str, Path(max_length=64, pattern=NO_NUL)], request: Request, principal: VnPost) -> dict:
    async with read_session(request) as session:
        return {**await vnpost.batch_result(session, principal, batch_id), "replayed": True}


# ---------------------------------------------------------------- online (anonymous)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@online_router.get("/forms/{form_code}", response_model=Questionnaire, summary="The questionnaire of a form (anonymous)")
async def online_questionnaire(
    form_code: CodePath, request: Request,
    wave: Annotated[str | None, Query(max_length=40, pattern=NO_NUL, description="Code of the wave the respondent's page belongs to")] = None,
    t: Annotated[str | None, Query(max_length=64, pattern=NO_NUL, description="Token from the QR link")] = None,
) -> dict:
    online.limit(request.app, _client(request))
    async with unit_of_work(request) as session:
        return await online.questionnaire(request.app, session, form_code, wave, t)


@online_router.post("/forms/{form_code}/response", response_model=OnlineReceipt, status_code=201,
                    summary="Answer a form once (anonymous)")
async def online_submit(
    form_code: CodePath, body: OnlineSubmission, request: Request,
    wave: Annotated[str | None, Query(max_length=40, pattern=NO_NUL)] = None,
    t: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
) -> dict:
    online.limit(request.app, _client(request))
    async with unit_of_work(request) as session:
        return await online.submit(request.app, session, request.app.state.tables, form_code, wave, t,
                                   body.answers, body.started_at)


# ---------------------------------------------------------------- data entry


@entry_router.post("/forms/{form_code}/entries", response_model=EntryResult, status_code=201,
                   summary="Key a paper form (two operators; a third when they differ)")
async def key_entry(form_code: CodePath, body: EntryIn, request: Request, principal: Ministry) -> dict:
    async with unit_of_work(request) as session:
        return await data_entry.key_entry(request.app, session, request.app.state.tables, form_code, body.operator,
                                          body.answers, actor=principal.actor)


@entry_router.post("/forms/{form_code}/correction", response_model=CorrectionResult,
                   summary="Key the corrected answers of a form verification sent back")
async def key_correction(form_code: CodePath, body: EntryIn, request: Request, principal: Ministry) -> dict:
    async with unit_of_work(request) as session:
        return await data_entry.key_correction(request.app, session, request.app.state.tables, form_code, body.operator,
                                               body.answers, actor=principal.actor)


@entry_router.get("/operators", response_model=list[OperatorStats], summary="Mismatch rate per operator")
async def operators(
    request: Request, wave_id: WaveQuery,
    principal: Annotated[Principal, Depends(require_roles(Role.ministry, Role.observer))],
) -> list[dict]:
    async with read_session(request) as session:
        return await data_entry.operator_stats(session, wave_id)


ROUTERS = [methodologies, forms_router, vnpost_router, online_router, entry_router]
