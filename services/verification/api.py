"""Verification's HTTP API: screening parameters, forms and their review, back-checks (phúc tra)
with contacts read from sampling for the caller, entry verification, quality reports and the
audit log. Parsing, auth and one unit of work per request; the rules live in ``service.py``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from services.verification import contacts, reports, service
from services.verification.models import BackCheckDraw, Decision, Form, FormHistory
from services.verification.models import Response as ResponseRow
from services.verification.schemas import (
    AuditEntry,
    AuditPage,
    BackCheckItem,
    BackCheckList,
    DecisionRead,
    DrawRead,
    DrawRequest,
    EntryVerification,
    FormDetail,
    FormPage,
    FormRead,
    FormState,
    HistoryEntry,
    OutcomeRecord,
    OutcomeResult,
    QualityReport,
    ReviewAction,
    ScreeningParametersRead,
    ScreeningParametersResult,
    ScreeningParametersUpdate,
    ScreeningParameterValues,
    ScreeningRead,
    RerunSummary,
)
from shared import audit
from shared.auth import KEY_HEADER, Principal, Role, SCOPED_ROLES, ensure_province_visible, require_roles
from shared.errors import Conflict
from shared.methodology import fetch_methodology
from shared.service import read_session, unit_of_work

router = APIRouter(prefix="/v1/waves/{wave_id}", tags=["verification"])

Reviewer = Annotated[Principal, Depends(require_roles(Role.ministry, Role.province))]
Reader = Annotated[Principal, Depends(require_roles(Role.ministry, Role.province, Role.observer))]
BackChecker = Annotated[Principal, Depends(require_roles(Role.ministry, Role.province, Role.observer))]
Ministry = Annotated[Principal, Depends(require_roles(Role.ministry))]
Auditor = Annotated[Principal, Depends(require_roles(Role.ministry, Role.observer))]
CSV = {200: {"content": {"text/csv": {"schema": {"type": "string"}}, "application/json": {}}}}
PROM = {200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}


async def _visible_wave(session, principal: Principal, wave_id: str) -> dict:
    wave = await service.get_wave(session, wave_id)
    ensure_province_visible(principal, wave["province_code"], "wave")
    return wave


def _scope(principal: Principal, province_code: str | None) -> str | None:
    """A province key sees its own province only (another province's filter answers 404)."""
    return service._province_for(principal, province_code)


# ---------------------------------------------------------------------- screening parameters


@router.get("/screening-parameters", response_model=ScreeningParametersRead, summary="Screening parameters of a wave")
async def get_parameters(wave_id: str, request: Request, principal: Reader) -> ScreeningParametersRead:
    async with read_session(request) as session:
        wave = await _visible_wave(session, principal, wave_id)
        methodology = await fetch_methodology(request.app, wave["methodology_version"])
        values, overrides, version = await service.parameters_for(session, methodology, wave_id)
    return ScreeningParametersRead(wave_id=wave_id, methodology_version=methodology.id,
                                   parameters=ScreeningParameterValues(**values), overrides=overrides, version=version)


@router.patch("/screening-parameters", response_model=ScreeningParametersResult,
              summary="Override screening parameters and re-run the rules")
async def update_parameters(
    wave_id: str, body: ScreeningParametersUpdate, request: Request, principal: Ministry
) -> ScreeningParametersResult:
    try:
        async with unit_of_work(request) as session:
            wave = await service.get_wave(session, wave_id)
            values, overrides, version, summary = await service.update_parameters(
                request.app, session, request.app.state.tables, principal, wave_id, body
            )
    except IntegrityError as exc:  # a concurrent first override of the same wave won
        raise Conflict("The parameters changed meanwhile; read them again and retry.") from exc
    return ScreeningParametersResult(
        parameters=ScreeningParametersRead(wave_id=wave_id, methodology_version=wave["methodology_version"],
                                           parameters=ScreeningParameterValues(**values), overrides=overrides,
                                           version=version),
        rerun=RerunSummary(**summary),
    )


# ---------------------------------------------------------------------- forms and review


@router.get("/forms", response_model=FormPage, summary="Forms of a wave with their review state")
async def list_forms(
    wave_id: str,
    request: Request,
    principal: Reader,
    state: FormState | None = None,
    published: Literal["accepted", "rejected"] | None = None,
    province_code: Annotated[str | None, Query(pattern=r"^[0-9]{2}$")] = None,
    enumerator_id: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> FormPage:
    async with read_session(request) as session:
        await _visible_wave(session, principal, wave_id)
        province = _scope(principal, province_code)
        query = select(Form).where(Form.wave_id == wave_id)
        if province is not None:
            query = query.where(Form.province_code == province)
        if state is not None:
            query = query.where(Form.state == state)
        if published is not None:
            query = query.where(Form.published == published)
        if enumerator_id is not None:
            query = query.where(Form.enumerator_id == enumerator_id)
        total = await session.scalar(select(func.count()).select_from(query.subquery()))
        rows = (await session.scalars(query.order_by(Form.form_code).limit(limit).offset(offset))).all()
        return FormPage(items=[FormRead.model_validate(r) for r in rows], total=total or 0)


@router.get("/forms/{form_code}", response_model=FormDetail, summary="A form: responses, screening, decisions, history")
async def get_form(wave_id: str, form_code: str, request: Request, principal: Reader) -> FormDetail:
    async with read_session(request) as session:
        await _visible_wave(session, principal, wave_id)
        form = await service.get_form(session, principal, wave_id, form_code)
        responses = (await session.scalars(
            select(ResponseRow).where(ResponseRow.wave_id == wave_id, ResponseRow.form_code == form_code)
            .order_by(ResponseRow.id)
        )).all()
        decisions = (await session.scalars(
            select(Decision).where(Decision.wave_id == wave_id, Decision.form_code == form_code).order_by(Decision.version)
        )).all()
        history = (await session.scalars(
            select(FormHistory).where(FormHistory.wave_id == wave_id, FormHistory.form_code == form_code)
            .order_by(FormHistory.id)
        )).all()
        return FormDetail(
            form=FormRead.model_validate(form),
            responses=[ScreeningRead(response_id=r.response_id, revision=r.revision, channel=r.channel,
                                     outcome=r.outcome, findings=r.findings, received_at=r.received_at)
                       for r in responses],
            decisions=[DecisionRead.model_validate(d) for d in decisions],
            history=[HistoryEntry.model_validate(h) for h in history],
        )


@router.post("/forms/{form_code}/review", response_model=FormRead,
             summary="Accept, reject, send back for correction, or comment on a form")
async def review_form(wave_id: str, form_code: str, body: ReviewAction, request: Request, principal: Reviewer) -> FormRead:
    try:
        async with unit_of_work(request) as session:
            await _visible_wave(session, principal, wave_id)
            form = await service.review(request.app, session, request.app.state.tables, principal, wave_id,
                                        form_code, body)
            result = FormRead.model_validate(form)
    except IntegrityError as exc:  # a concurrent decision on the same form took this version
        raise Conflict("The form changed meanwhile; read it again and retry.") from exc
    return result


# ---------------------------------------------------------------------- back-checks


@router.post("/back-check-draws", response_model=DrawRead, status_code=201, tags=["back-checks"],
             summary="Draw a province's back-check list (seeded, reproducible)")
async def draw_back_check(wave_id: str, body: DrawRequest, request: Request, principal: Reviewer) -> DrawRead:
    try:
        async with unit_of_work(request) as session:
            record = await service.draw(request.app, session, request.app.state.tables, principal, wave_id, body)
            result = DrawRead.model_validate({**record.model_dump(), "wave_id": wave_id})
    except IntegrityError as exc:  # a concurrent draw of the same province won
        raise Conflict(f"Province {body.province_code} of this wave was drawn already.") from exc
    return result


@router.get("/back-check-draws", response_model=list[DrawRead], tags=["back-checks"],
            summary="Back-check draws of a wave, with their seeds")
async def list_draws(wave_id: str, request: Request, principal: BackChecker) -> list[DrawRead]:
    async with read_session(request) as session:
        await _visible_wave(session, principal, wave_id)
        query = select(BackCheckDraw).where(BackCheckDraw.wave_id == wave_id)
        if principal.role in SCOPED_ROLES:
            query = query.where(BackCheckDraw.province_code == principal.province_code)
        rows = (await session.scalars(query.order_by(BackCheckDraw.province_code))).all()
        return [DrawRead.model_validate(r.model_dump()) for r in rows]


@router.get("/back-checks", response_model=BackCheckList, tags=["back-checks"],
            summary="The back-check list, with contacts from sampling for forms still to check")
async def list_back_checks(
    wave_id: str,
    request: Request,
    principal: BackChecker,
    province_code: Annotated[str | None, Query(pattern=r"^[0-9]{2}$")] = None,
    pending: bool | None = None,
    with_contacts: bool = True,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> BackCheckList:
    async with read_session(request) as session:
        rows, total = await service.back_checks(session, principal, wave_id, province_code, pending, limit, offset)
        items = [BackCheckItem.model_validate(r.model_dump()) for r in rows]
    unavailable = None
    if with_contacts:
        unavailable = await contacts.attach(request.app, wave_id, items, request.headers.get(KEY_HEADER))
    return BackCheckList(items=items, total=total, contacts_unavailable=unavailable)


@router.post("/back-checks/{form_code}/outcome", response_model=OutcomeResult, tags=["back-checks"],
             summary="Record a back-check outcome (once per form)")
async def record_outcome(
    wave_id: str, form_code: str, body: OutcomeRecord, request: Request, principal: BackChecker
) -> OutcomeResult:
    try:
        async with unit_of_work(request) as session:
            await _visible_wave(session, principal, wave_id)
            check, voided, escalated = await service.record_outcome(
                request.app, session, request.app.state.tables, principal, wave_id, form_code, body
            )
            item = BackCheckItem.model_validate(check.model_dump())
    except IntegrityError as exc:
        raise Conflict("The form changed meanwhile; read it again and retry.") from exc
    return OutcomeResult(back_check=item, voided=voided, enumerator_escalated=escalated)


# ---------------------------------------------------------------------- reports


@router.get("/entry-verification", response_model=EntryVerification, tags=["reports"],
            summary="Double-entry disagreements and per-operator mismatch rates")
async def entry_verification(
    wave_id: str, request: Request, principal: Reader,
    province_code: Annotated[str | None, Query(pattern=r"^[0-9]{2}$")] = None,
) -> EntryVerification:
    async with read_session(request) as session:
        await _visible_wave(session, principal, wave_id)
        return await reports.entry_verification(session, wave_id, _scope(principal, province_code))


@router.get("/quality", response_model=QualityReport, responses=CSV, tags=["reports"],
            summary="Quality counts per wave, province, commune or enumerator (JSON or CSV)")
async def quality(
    wave_id: str, request: Request, principal: Reader,
    by: Literal["wave", "province", "commune", "enumerator"] = "province",
    format: Literal["json", "csv"] = "json",
    province_code: Annotated[str | None, Query(pattern=r"^[0-9]{2}$")] = None,
):
    async with read_session(request) as session:
        await _visible_wave(session, principal, wave_id)
        rows = await reports.quality(session, wave_id, by, _scope(principal, province_code))
    if format == "csv":
        return Response(reports.to_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="quality-{wave_id}-{by}.csv"'})
    return QualityReport(wave_id=wave_id, by=by, rows=rows)


@router.get("/quality/metrics", response_class=PlainTextResponse, responses=PROM, tags=["reports"],
            summary="Quality counts per province in Prometheus text format")
async def quality_metrics(wave_id: str, request: Request, principal: Reader) -> PlainTextResponse:
    async with read_session(request) as session:
        await _visible_wave(session, principal, wave_id)
        rows = await reports.quality(session, wave_id, "province", _scope(principal, None))
    return PlainTextResponse(reports.to_prometheus(wave_id, rows), media_type="text/plain; version=0.0.4")


# ---------------------------------------------------------------------- audit


@router.get("/audit", response_model=AuditPage, tags=["audit"], summary="Every decision with who, when and why")
async def wave_audit(
    wave_id: str, request: Request, principal: Auditor,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    async with read_session(request) as session:
        await _visible_wave(session, principal, wave_id)
        rows = await audit.entries(session, request.app.state.tables["audit_log"], wave_id=wave_id, after=after,
                                   limit=limit)
    items = [AuditEntry(**r) for r in rows]
    return AuditPage(items=items, next_after=items[-1].seq if len(items) == limit else None)


ROUTERS = [router]
