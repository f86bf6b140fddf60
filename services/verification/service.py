"""Verification's domain operations. Each runs in the caller's transaction (a request's unit of
work, or a consumer's inbox transaction) and writes its history, audit entries and events there,
so a decision, its trail and its announcement commit together or not at all.

Form states: ``received`` (a response arrived; screening runs at once) → ``accepted`` (clean) |
``has_issues`` (a flag: a reviewer decides) | ``rejected`` (a reject rule); a reviewer moves
``has_issues`` → ``accepted`` | ``rejected``, reverses a published decision (with a reason), or
sends a form back (``sent_back``) until survey resubmits it with a higher revision.
"""

from __future__ import annotations

import datetime as dt
import functools
import secrets
import uuid
from collections import Counter, defaultdict
from typing import Any

from fastapi import FastAPI
from prometheus_client import Counter as MetricCounter
from sqlalchemy import Table, bindparam, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.verification import screening
from services.verification.models import (
    BackCheck,
    BackCheckDraw,
    Decision,
    EntryComparison,
    EnumeratorEscalation,
    Form,
    FormHistory,
    Response,
    SampleUnit,
    ScreeningParameters,
    VoidedDraw,
    wave as wave_table,
)
from services.verification.schemas import DrawRequest, OutcomeRecord, ReviewAction, ScreeningParametersUpdate
from shared import audit
from shared.auth import Principal, SCOPED_ROLES, ensure_province_visible, ensure_province_writable
from shared.contracts.sampling import SampleDrawn, SampledUnit, SampleVoided, UnitReplaced
from shared.contracts.survey import DataEntryCompared, FormStatusChanged, ResponseSubmitted
from shared.contracts.verification import CorrectionRequested, ResponseAccepted, ResponseRejected
from shared.db import insert_for, utcnow
from shared.errors import BadRequest, Conflict, InvalidState, NotFound
from shared.methodology import Methodology, fetch_methodology
from shared.outbox import add_event

SYSTEM = "system:verification"
DECISIONS = MetricCounter(
    "sipas_verification_decisions_total",
    "Decisions published by verification (counted after their commit)",
    ["service", "decision", "decided_by", "reverses"],
)
# Field statuses that mean the form left the office (counted as dispatched).
DISPATCHED_STATUSES = {"dispatched", "collected", "refused", "unreachable", "ineligible"}

# Lookups on the per-event path, built once with bind parameters: constructing a select per
# event cost more than running it (python -m bench.verification's consumer figures).
_WAVE_METHOD = select(wave_table.c.methodology_version).where(wave_table.c.id == bindparam("wave_id"))
_RESPONSE = select(Response).where(Response.response_id == bindparam("response_id"),
                                   Response.revision == bindparam("revision"))
_SAMPLE_UNIT = select(SampleUnit).where(SampleUnit.wave_id == bindparam("wave_id"),
                                        SampleUnit.unit_id == bindparam("unit_id"))
_FORM = (select(Form).where(Form.wave_id == bindparam("wave_id"), Form.form_code == bindparam("form_code"))
         .execution_options(populate_existing=True))
_ESCALATED = select(EnumeratorEscalation.id).where(EnumeratorEscalation.wave_id == bindparam("wave_id"),
                                                   EnumeratorEscalation.enumerator_id == bindparam("enumerator_id"))




# ---------------------------------------------------------------------- waves and parameters


async def get_wave(session: AsyncSession, wave_id: str) -> dict[str, Any]:
    row = (await session.execute(select(wave_table).where(wave_table.c.id == wave_id))).mappings().first()
    if row is None:
        raise NotFound(f"No wave {wave_id} here (yet).")
    return dict(row)


def ensure_open(wave: dict[str, Any]) -> None:
    if wave["status"] == "closed":
        raise InvalidState(f"Wave {wave['code']} is closed: its verification is final.")


async def methodology_for(app: FastAPI, session: AsyncSession, wave_id: str, fallback: str | None = None) -> Methodology:
    """The wave's methodology version (over HTTP from survey, cached). A response may arrive
    before the wave's replica; then the version the response was collected under is used."""
    row = (await session.execute(_WAVE_METHOD, {"wave_id": wave_id})).first()
    version = row[0] if row is not None else fallback
    if version is None:
        raise NotFound(f"No wave {wave_id} here (yet).")
    return await fetch_methodology(app, version)


async def parameters_for(session: AsyncSession, methodology: Methodology, wave_id: str) -> tuple[dict[str, Any], dict, int]:
    row = await session.get(ScreeningParameters, wave_id)
    overrides = dict(row.parameters) if row else {}
    return screening.effective_parameters(methodology, overrides), overrides, (row.version if row else 0)


# ---------------------------------------------------------------------- history and decisions


async def _history(
    session: AsyncSession,
    form: Form,
    actor: str,
    action: str,
    to_state: str | None,
    *,
    from_state: str | None = None,
    reason_codes: list[str] | None = None,
    comment: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        FormHistory(
            wave_id=form.wave_id,
            form_code=form.form_code,
            actor=actor,
            action=action,
            from_state=from_state if from_state is not None else form.state,
            to_state=to_state,
            reason_codes=reason_codes,
            comment=comment,
            details=details,
        )
    )


def _public_answers(methodology: Methodology, answers: dict[str, Any]) -> dict[str, Any]:
    """Answers as indexing gets them: sensitive profile answers never leave (survey already
    keeps them; this is the second lock)."""
    sensitive = set(methodology.sensitive_questions())
    return {k: v for k, v in answers.items() if k not in sensitive}


async def publish_decision(
    session: AsyncSession,
    tables: dict[str, Table],
    form: Form,
    kind: str,
    *,
    reasons: list[str],
    basis: dict[str, Any],
    decided_by: str,
    principal: Principal | None,
    reason: str | None = None,
    methodology: Methodology | None = None,
    response: Response | None = None,
    unit: SampleUnit | None = None,
) -> Decision:
    """Publish ``response.accepted`` or ``response.rejected`` as the form's next decision.

    A decision whose kind differs from the one published before is a reversal: it is flagged
    ``reverses=True`` and must say why. ``response`` and ``unit``: the form's current response
    and its sample unit when the caller holds them already (screening a new response does), so
    they are not read again."""
    reverses = form.published is not None and form.published != kind
    if reverses and not reason:
        raise BadRequest("A reversal of a published decision needs a reason (field `reason`).")
    if response is None or (response.response_id, response.revision) != (form.response_id, form.revision):
        response = None
        if form.response_id is not None:
            response = await session.scalar(_RESPONSE, {"response_id": form.response_id, "revision": form.revision})
    form.decision_version += 1
    now = utcnow()
    actor = principal.actor if principal else SYSTEM
    decision = Decision(
        wave_id=form.wave_id,
        form_code=form.form_code,
        version=form.decision_version,
        kind=kind,
        reasons=reasons,
        basis=basis,
        decided_by=decided_by,
        actor=actor,
        reverses=reverses,
        reason=reason,
        response_id=form.response_id,
        revision=form.revision,
        decided_at=now,
    )
    session.add(decision)
    common = dict(
        wave_id=form.wave_id,
        form_code=form.form_code,
        unit_id=form.unit_id,
        decision_version=form.decision_version,
        decided_at=now,
        reverses=reverses,
        reason=reason,
    )
    if kind == "accepted":
        if unit is None or (unit.wave_id, unit.unit_id) != (form.wave_id, form.unit_id):
            unit = await session.scalar(_SAMPLE_UNIT, {"wave_id": form.wave_id, "unit_id": form.unit_id})
        if unit is None or response is None or methodology is None:
            raise InvalidState("Only a response of a sampled unit can be accepted.")
        event = ResponseAccepted(
            **common,
            methodology_version=response.methodology_version,
            stratum=unit.stratum,
            province_code=unit.province_code,
            commune_code=unit.commune_code,
            psu=unit.psu,
            ssu=unit.ssu,
            pi=unit.pi,
            weight=unit.weight,
            level=unit.level,
            field=unit.field,
            procedure_code=unit.procedure_code,
            respondent_type=unit.respondent_type,
            channel=response.channel,
            answers=_public_answers(methodology, response.answers),
        )
    else:
        event = ResponseRejected(**common, reasons=reasons)
    await add_event(session, tables["outbox"], event)
    form.published = kind
    labels = dict(service="verification", decision=kind, decided_by=decided_by, reverses=str(reverses).lower())
    session.info.setdefault("after_commit", []).append(lambda: DECISIONS.labels(**labels).inc())
    await audit.record(
        session,
        tables["audit_log"],
        principal,
        f"decision.{kind}",
        "form",
        form.form_code,
        wave_id=form.wave_id,
        reason=reason,
        details={
            "decision_version": form.decision_version,
            "reasons": reasons,
            "basis": basis,
            "decided_by": decided_by,
            "reverses": reverses,
        },
    )
    return decision


# ---------------------------------------------------------------------- consumers: sample


def _unit_values(wave_id: str, draw_id: str, joined: str, unit: SampledUnit) -> dict[str, Any]:
    return dict(
        wave_id=wave_id,
        unit_id=str(unit.unit_id),
        draw_id=draw_id,
        joined=joined,
        stratum=unit.stratum,
        province_code=unit.province_code,
        commune_code=unit.commune_code,
        psu=unit.psu,
        ssu=unit.ssu,
        pi=unit.pi,
        weight=unit.weight,
        level=unit.level,
        field=unit.field,
        procedure_code=unit.procedure_code,
        respondent_type=unit.respondent_type,
        replaced=False,
    )


async def take_sample_chunk(session: AsyncSession, payload: SampleDrawn) -> list[str]:
    """Keep the chunk's units. A chunk of a new draw of the same wave replaces the old draw's
    units (a re-draw before fieldwork)."""
    wave_id, draw_id = str(payload.wave_id), str(payload.draw_id)
    voided = VoidedDraw.__table__
    if await session.scalar(select(voided.c.draw_id).where(voided.c.draw_id == draw_id)) is not None:
        return []  # a chunk of a reset draw, delivered late: the re-draw's units stay
    table = SampleUnit.__table__
    await session.execute(
        table.delete().where(table.c.wave_id == wave_id, table.c.draw_id != draw_id, table.c.joined == "draw")
    )
    rows = [_unit_values(wave_id, draw_id, "draw", u) for u in payload.units if u.role == "sample"]
    if rows:
        await session.execute(
            insert_for(session, table).values(rows).on_conflict_do_nothing(index_elements=["wave_id", "unit_id"])
        )
    return [r["unit_id"] for r in rows]


async def take_sample_voided(session: AsyncSession, payload: SampleVoided) -> int:
    """The draw was reset in sampling: its units leave the sample, so a response for one of them
    is rejected as not in the sample (none should come: a reset happens before fieldwork).
    Returns how many were dropped; a redelivery drops nothing more. The draw is remembered, so
    a chunk of it that comes later is ignored (``take_sample_chunk``)."""
    await session.execute(
        insert_for(session, VoidedDraw.__table__)
        .values(draw_id=str(payload.draw_id), wave_id=str(payload.wave_id), voided_at=utcnow())
        .on_conflict_do_nothing(index_elements=["draw_id"])
    )
    table = SampleUnit.__table__
    done = await session.execute(
        table.delete().where(table.c.wave_id == str(payload.wave_id), table.c.draw_id == str(payload.draw_id))
    )
    return done.rowcount or 0


async def take_replacement(session: AsyncSession, payload: UnitReplaced) -> list[str]:
    """The replaced unit leaves the sample; the released reserve unit joins it."""
    wave_id = str(payload.wave_id)
    table = SampleUnit.__table__
    await session.execute(
        table.update()
        .where(table.c.wave_id == wave_id, table.c.unit_id == str(payload.replaced_unit_id))
        .values(replaced=True)
    )
    if payload.replacement is not None:
        draw = str(payload.draw_id) if payload.draw_id else await session.scalar(
            select(SampleUnit.draw_id).where(SampleUnit.wave_id == wave_id).limit(1))
        values = _unit_values(wave_id, draw or "", "replacement", payload.replacement)
        await session.execute(
            insert_for(session, table).values(values).on_conflict_do_nothing(index_elements=["wave_id", "unit_id"])
        )
        return [values["unit_id"]]
    return []


async def rescreen_units(
    app: FastAPI, session: AsyncSession, tables: dict[str, Table], wave_id: str, unit_ids: list[str]
) -> int:
    """Screen again the forms of units that just joined the sample and were rejected by a rule
    as not in it (events on different queues arrive in any order: a response can come before
    the sample chunk that lists its unit). Returns how many changed."""
    if not unit_ids:
        return 0
    forms = []
    for start in range(0, len(unit_ids), 500):
        forms += (await session.scalars(
            select(Form).where(Form.wave_id == wave_id, Form.unit_id.in_(unit_ids[start:start + 500]),
                               Form.decided_by == "rule", Form.state == "rejected")
        )).all()
    forms = [f for f in forms if "not_in_sample" in (f.reasons or [])]
    if not forms:
        return 0
    wave = (await session.execute(_WAVE_METHOD, {"wave_id": wave_id})).first()
    changed = 0
    for form in sorted(forms, key=lambda f: f.form_code):
        response = await session.scalar(
            _RESPONSE, {"response_id": form.response_id, "revision": form.revision}
        )
        if response is None:
            continue
        methodology = await fetch_methodology(app, wave[0] if wave else response.methodology_version)
        parameters, _, param_version = await parameters_for(session, methodology, wave_id)
        if await _screen_and_decide(session, tables, methodology, parameters, param_version, form, response,
                                    reason="the unit's sample entry arrived after the response", new_response=False):
            changed += 1
    return changed


# ---------------------------------------------------------------------- consumers: forms


@functools.lru_cache(maxsize=4)
def _form_insert(dialect: str):
    return insert_for(dialect, Form.__table__).on_conflict_do_nothing(index_elements=["wave_id", "form_code"])


async def _form(session: AsyncSession, wave_id: str, form_code: str, **values: Any) -> Form:
    """The form row, created if missing (``ON CONFLICT DO NOTHING``: two consumers may race)."""
    await session.execute(
        _form_insert(session.bind.dialect.name),
        {"wave_id": wave_id, "form_code": form_code, "dispatched": False, "decision_version": 0, "voided": False,
         "updated_at": utcnow(), **values},
    )
    form = await session.scalar(_FORM, {"wave_id": wave_id, "form_code": form_code})
    assert form is not None
    return form


@functools.lru_cache(maxsize=4)
def _form_status_upsert(dialect: str):
    """The upsert of ``take_form_status``, built once per dialect (building it cost more than
    running it). An older status redelivered out of order (its time before the one held)
    changes nothing: the ``where`` of the update."""
    form = Form.__table__
    stmt = insert_for(dialect, form)
    new = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=["wave_id", "form_code"],
        set_={
            "field_status": new.field_status,
            "field_status_time": new.field_status_time,
            "unit_id": func.coalesce(form.c.unit_id, new.unit_id),
            "province_code": new.province_code,
            "commune_code": new.commune_code,
            "enumerator_id": func.coalesce(new.enumerator_id, form.c.enumerator_id),
            "dispatched": or_(form.c.dispatched, new.dispatched),
            "updated_at": new.updated_at,
        },
        where=or_(form.c.field_status_time.is_(None), form.c.field_status_time <= new.field_status_time),
    )


async def take_form_status(session: AsyncSession, payload: FormStatusChanged, at: dt.datetime) -> None:
    """The form's field status, in one statement: status events are most of a wave's events
    (three or four per form), so no ORM load and flush here."""
    await session.execute(_form_status_upsert(session.bind.dialect.name), [dict(
        wave_id=str(payload.wave_id), form_code=payload.form_code, unit_id=str(payload.unit_id),
        province_code=payload.province_code, commune_code=payload.commune_code, enumerator_id=payload.enumerator_id,
        field_status=payload.status, field_status_time=at, dispatched=payload.status in DISPATCHED_STATUSES,
        decision_version=0, voided=False, updated_at=utcnow(),
    )])


async def take_entry_comparison(session: AsyncSession, payload: DataEntryCompared, at: dt.datetime) -> None:
    wave_id = str(payload.wave_id)
    province = await session.scalar(
        select(SampleUnit.province_code).where(SampleUnit.wave_id == wave_id, SampleUnit.unit_id == str(payload.unit_id))
    )
    values = dict(
        wave_id=wave_id,
        form_code=payload.form_code,
        unit_id=str(payload.unit_id),
        province_code=province,
        operators=list(payload.operators),
        disagreements=list(payload.disagreements),
        resolved=payload.resolved_by_third_entry,
        compared_at=at,
    )
    stmt = insert_for(session, EntryComparison.__table__).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["wave_id", "form_code"],
        set_={k: stmt.excluded[k] for k in values if k not in ("wave_id", "form_code")},
        where=EntryComparison.__table__.c.compared_at <= stmt.excluded.compared_at,
    )
    await session.execute(stmt)


async def _sample_unit(session: AsyncSession, wave_id: str, unit_id: str) -> SampleUnit | None:
    return await session.scalar(_SAMPLE_UNIT, {"wave_id": wave_id, "unit_id": unit_id})


async def take_response(
    app: FastAPI, session: AsyncSession, tables: dict[str, Table], payload: ResponseSubmitted
) -> None:
    """A response arrived: keep it, screen it, decide, publish.

    Idempotent beyond the inbox: the same (response_id, revision) again (another event id, same
    content) changes nothing; with different content it is kept out and logged as a conflict.
    """
    wave_id = str(payload.wave_id)
    # The methodology first: if survey cannot be reached this raises before any work and the
    # bus redelivers later.
    # A consumer's batch screens many responses of one wave in one transaction: the wave's
    # methodology and screening parameters are read once per batch (the session), not per
    # response. Only consumers come here; the API's parameter changes use their own sessions.
    memo = session.info.setdefault("screening_context", {})
    key = (wave_id, payload.methodology_version)
    if key not in memo:
        methodology = await methodology_for(app, session, wave_id, payload.methodology_version)
        memo[key] = (methodology, *(await parameters_for(session, methodology, wave_id)))
    methodology, parameters, _, param_version = memo[key]
    content = payload.model_dump(mode="json")
    print_ = screening.fingerprint(content)
    existing = await session.scalar(
        _RESPONSE, {"response_id": str(payload.response_id), "revision": payload.revision}
    )
    if existing is not None:
        if existing.fingerprint != print_:
            await audit.record(
                session, tables["audit_log"], None, "response.conflict", "form", payload.form_code, wave_id=wave_id,
                reason="same response id and revision, different content: kept the first",
                details={"response_id": str(payload.response_id), "revision": payload.revision},
            )
        return
    response = Response(
        wave_id=wave_id,
        form_code=payload.form_code,
        response_id=str(payload.response_id),
        revision=payload.revision,
        unit_id=str(payload.unit_id),
        stratum=payload.stratum,
        province_code=payload.province_code,
        commune_code=payload.commune_code,
        channel=payload.channel,
        enumerator_id=payload.enumerator_id,
        methodology_version=payload.methodology_version,
        answers=content["answers"],
        duration_seconds=payload.duration_seconds,
        submitted_at=payload.submitted_at if payload.submitted_at.tzinfo else payload.submitted_at.replace(tzinfo=dt.UTC),
        fingerprint=print_,
    )
    session.add(response)
    form = await _form(
        session, wave_id, payload.form_code, unit_id=str(payload.unit_id), province_code=payload.province_code,
        commune_code=payload.commune_code, enumerator_id=payload.enumerator_id,
    )

    # An older revision of the response under review, arriving late: kept, not screened.
    if form.response_id == response.response_id and (form.revision or 0) > response.revision:
        response.outcome = "superseded"
        await session.flush()
        return
    # Another response for a form that has an accepted one: a duplicate. The accepted response
    # stands (no event: the form's decision does not change).
    if form.published == "accepted" and form.response_id != response.response_id:
        found = [screening.finding("duplicate", "reject", {}, accepted_response_id=form.response_id)]
        response.outcome, response.findings = "rejected", found
        await _history(session, form, SYSTEM, "duplicate_rejected", form.state,
                       reason_codes=["duplicate"], details={"response_id": response.response_id})
        await audit.record(session, tables["audit_log"], None, "response.duplicate", "form", form.form_code,
                           wave_id=wave_id, details={"response_id": response.response_id, "rule": "duplicate"})
        return

    # From here the form, its response and history only change: no query needs to see them
    # before the end, so they go to the database in one flush (one UPDATE of the form, the
    # response inserted with its outcome) instead of one per autoflushing query.
    with session.no_autoflush:
        previous = (form.response_id, form.revision)
        form.response_id, form.revision = response.response_id, response.revision
        form.unit_id = response.unit_id
        form.province_code = payload.province_code
        form.commune_code = payload.commune_code
        form.enumerator_id = payload.enumerator_id or form.enumerator_id
        await _history(session, form, SYSTEM, "received", "received",
                       details={"response_id": response.response_id, "revision": response.revision, "channel": response.channel})
        form.state = "received"
        reason = None
        if previous[0] is not None:
            reason = f"new response {response.response_id} revision {response.revision}"
        await _screen_and_decide(session, tables, methodology, parameters, param_version, form, response, reason=reason,
                                 new_response=True)
    await _escalated_enumerator_joins(session, form)


async def _screen_and_decide(
    session: AsyncSession,
    tables: dict[str, Table],
    methodology: Methodology,
    parameters: dict[str, Any],
    param_version: int,
    form: Form,
    response: Response,
    *,
    reason: str | None,
    new_response: bool,
) -> bool:
    """Screen the form's current response and apply the outcome. Returns True if the state
    changed. A new response always gets a decision (its answers are new); a re-run publishes
    only when accept/reject flips."""
    unit = await _sample_unit(session, form.wave_id, response.unit_id)
    findings = screening.screen(
        methodology,
        parameters,
        response.answers,
        channel=response.channel,
        duration_seconds=response.duration_seconds,
        in_sample=unit is not None and not unit.replaced,
        unit_replaced=unit is not None and unit.replaced,
        voided=form.voided,
    )
    outcome = screening.outcome_of(findings)
    reasons = screening.reasons_of(findings)
    response.outcome, response.findings = outcome, findings
    changed = outcome != form.state or reasons != (form.reasons or [])
    before = form.state
    form.state, form.reasons, form.decided_by = outcome, reasons, "rule"
    form.updated_at = utcnow()
    await _history(session, form, SYSTEM, "screened", outcome, from_state=before, reason_codes=reasons or None,
                   details={"findings": findings, "parameters_version": param_version})
    basis = {"rules": findings, "parameters": parameters, "parameters_version": param_version,
             "methodology_version": methodology.id}
    if outcome in ("accepted", "rejected") and (new_response or form.published != outcome):
        if reason is None and form.published is not None and form.published != outcome:
            reason = f"screening parameters changed (version {param_version})"
        await publish_decision(session, tables, form, outcome, reasons=reasons, basis=basis, decided_by="rule",
                               principal=None, reason=reason, methodology=methodology, response=response, unit=unit)
    return changed


async def _escalated_enumerator_joins(session: AsyncSession, form: Form) -> None:
    """A new form of an escalated enumerator goes straight onto the back-check list."""
    if not form.enumerator_id or form.province_code is None:
        return
    escalated = await session.scalar(
        _ESCALATED, {"wave_id": form.wave_id, "enumerator_id": form.enumerator_id}
    )
    if escalated is not None:
        await _add_to_back_check(session, [form], "escalation", None)


async def _add_to_back_check(session: AsyncSession, forms: list[Form], selected_by: str, draw_id: int | None) -> int:
    if not forms:
        return 0
    now = utcnow()
    rows = [
        dict(wave_id=f.wave_id, form_code=f.form_code, unit_id=f.unit_id, province_code=f.province_code,
             enumerator_id=f.enumerator_id, selected_by=selected_by, draw_id=draw_id, selected_at=now)
        for f in forms
    ]
    result = await session.execute(
        insert_for(session, BackCheck.__table__).values(rows).on_conflict_do_nothing(index_elements=["wave_id", "form_code"])
    )
    return max(result.rowcount or 0, 0)


# ---------------------------------------------------------------------- screening parameters


async def update_parameters(
    app: FastAPI, session: AsyncSession, tables: dict[str, Table], principal: Principal, wave_id: str,
    body: ScreeningParametersUpdate,
) -> tuple[dict[str, Any], dict, int, dict[str, int]]:
    wave = await get_wave(session, wave_id)
    ensure_open(wave)
    methodology = await fetch_methodology(app, wave["methodology_version"])
    changes = body.model_dump(exclude_unset=True, exclude={"reason"}, exclude_none=True)
    row = await session.get(ScreeningParameters, wave_id)
    before = dict(row.parameters) if row else {}
    overrides = {**before, **changes}
    if row is None:
        row = ScreeningParameters(wave_id=wave_id, parameters=overrides, version=1, updated_by=principal.actor)
        session.add(row)
    else:
        row.parameters, row.version = overrides, row.version + 1
        row.updated_at, row.updated_by = utcnow(), principal.actor
    await session.flush()
    await audit.record(session, tables["audit_log"], principal, "screening.parameters", "wave", wave_id,
                       wave_id=wave_id, reason=body.reason, details={"before": before, "after": overrides,
                                                                    "version": row.version})
    parameters = screening.effective_parameters(methodology, overrides)
    summary = await rerun(session, tables, methodology, parameters, row.version, wave_id)
    return parameters, overrides, row.version, summary


async def rerun(
    session: AsyncSession, tables: dict[str, Table], methodology: Methodology, parameters: dict[str, Any],
    param_version: int, wave_id: str,
) -> dict[str, int]:
    """Re-screen every form whose state a rule decided (reviewers' and back-check decisions
    stand: a rule never overrides a person)."""
    forms = (await session.scalars(
        select(Form).where(Form.wave_id == wave_id, Form.decided_by == "rule",
                           Form.state.in_(("accepted", "has_issues", "rejected")))
        .order_by(Form.form_code)
    )).all()
    rescreened = changed = decisions = 0
    for form in forms:
        response = await session.scalar(
            _RESPONSE, {"response_id": form.response_id, "revision": form.revision}
        )
        if response is None:
            continue
        version_before = form.decision_version
        rescreened += 1
        if await _screen_and_decide(session, tables, methodology, parameters, param_version, form, response,
                                    reason=None, new_response=False):
            changed += 1
        decisions += form.decision_version - version_before
    return {"rescreened": rescreened, "changed": changed, "decisions": decisions}


# ---------------------------------------------------------------------- review


async def get_form(
    session: AsyncSession, principal: Principal, wave_id: str, form_code: str, *, for_update: bool = False
) -> Form:
    query = select(Form).where(Form.wave_id == wave_id, Form.form_code == form_code)
    if for_update:  # a review serialises with other changes of the form (row lock on PostgreSQL)
        query = query.with_for_update()
    form = await session.scalar(query)
    if form is None:
        raise NotFound(f"No form {form_code} in wave {wave_id}.")
    ensure_province_visible(principal, form.province_code, "form")
    return form


async def review(
    app: FastAPI, session: AsyncSession, tables: dict[str, Table], principal: Principal, wave_id: str,
    form_code: str, body: ReviewAction,
) -> Form:
    wave = await get_wave(session, wave_id)
    form = await get_form(session, principal, wave_id, form_code, for_update=True)
    ensure_province_writable(principal, form.province_code, "form")
    ensure_open(wave)
    state = form.state
    if body.action == "comment":
        await _history(session, form, principal.actor, "comment", state, reason_codes=body.reason_codes or None,
                       comment=body.comment)
        await audit.record(session, tables["audit_log"], principal, "review.comment", "form", form_code,
                           wave_id=wave_id, reason=body.comment)
        return form
    if state is None or form.response_id is None:
        raise InvalidState(f"Form {form_code} has no response to review yet.")
    if form.voided:
        raise InvalidState(f"Form {form_code} was voided after a back-check (denied); it cannot change.")
    if state == "sent_back":
        raise InvalidState(f"Form {form_code} is back with survey for correction; wait for its new revision.")
    response = await session.scalar(
        _RESPONSE, {"response_id": form.response_id, "revision": form.revision}
    )
    if body.action == "send_back":
        if form.published == "accepted":
            raise InvalidState("An accepted form counts in the indices: reject it (with a reason) before sending it back.")
        if state not in ("has_issues", "rejected", "received"):
            raise InvalidState(f"A form in state {state} cannot be sent back.")
        await _history(session, form, principal.actor, "send_back", "sent_back", reason_codes=body.reason_codes,
                       comment=body.comment, details={"items": body.items})
        form.state, form.decided_by = "sent_back", "reviewer"
        await add_event(session, tables["outbox"], CorrectionRequested(
            wave_id=uuid.UUID(wave_id), form_code=form_code, unit_id=uuid.UUID(form.unit_id),
            response_id=uuid.UUID(form.response_id), revision=form.revision or 1, channel=response.channel,
            reason_codes=body.reason_codes, items=body.items, requested_at=utcnow(),
        ))
        await audit.record(session, tables["audit_log"], principal, "review.send_back", "form", form_code,
                           wave_id=wave_id, reason=body.comment,
                           details={"reason_codes": body.reason_codes, "items": body.items})
        return form
    kind = "accepted" if body.action == "accept" else "rejected"
    if state == kind and form.published == kind:
        raise InvalidState(f"Form {form_code} is already {kind}.")
    methodology = None
    if kind == "accepted":
        hard = [f["rule"] for f in (response.findings or []) if f["outcome"] == "reject"]
        if hard:
            raise InvalidState(
                f"The response fails the rules {', '.join(hard)}; send it back for correction instead.", rules=hard
            )
        methodology = await fetch_methodology(app, response.methodology_version)
    reasons = body.reason_codes if kind == "rejected" else []
    await _history(session, form, principal.actor, body.action, kind, reason_codes=body.reason_codes or None,
                   comment=body.comment, details={"reason": body.reason} if body.reason else None)
    basis = {"reviewer": principal.actor, "comment": body.comment, "reason_codes": body.reason_codes,
             "screening": response.findings}
    await publish_decision(session, tables, form, kind, reasons=reasons, basis=basis, decided_by="reviewer",
                           principal=principal, reason=body.reason, methodology=methodology)
    form.state, form.decided_by = kind, "reviewer"
    form.reasons = reasons if kind == "rejected" else (form.reasons or [])
    form.updated_at = utcnow()
    return form


# ---------------------------------------------------------------------- back-checks


def _province_for(principal: Principal, province_code: str | None) -> str | None:
    if principal.role in SCOPED_ROLES:
        if province_code is not None and province_code != principal.province_code:
            raise NotFound("No such province here.")
        return principal.province_code
    return province_code


async def draw(
    app: FastAPI, session: AsyncSession, tables: dict[str, Table], principal: Principal, wave_id: str, body: DrawRequest
) -> BackCheckDraw:
    wave = await get_wave(session, wave_id)
    ensure_province_visible(principal, wave["province_code"], "wave")
    ensure_province_writable(principal, body.province_code, "province")
    ensure_open(wave)
    methodology = await fetch_methodology(app, wave["methodology_version"])
    parameters, _, _ = await parameters_for(session, methodology, wave_id)
    existing = await session.scalar(
        select(BackCheckDraw).where(BackCheckDraw.wave_id == wave_id, BackCheckDraw.province_code == body.province_code)
    )
    if existing is not None:
        raise Conflict(f"Province {body.province_code} of this wave was drawn already (seed {existing.seed}).",
                       seed=existing.seed)
    forms = (await session.scalars(
        select(Form).where(Form.wave_id == wave_id, Form.province_code == body.province_code,
                           Form.state.is_not(None), Form.voided.is_(False))
    )).all()
    by_enumerator: dict[str, list[str]] = defaultdict(list)
    for f in forms:
        by_enumerator[f.enumerator_id or ""].append(f.form_code)
    seed = body.seed if body.seed is not None else secrets.randbelow(2**63)
    share, minimum = float(parameters["back_check_share"]), int(parameters["back_check_min_per_enumerator"])
    chosen = screening.draw_back_check(seed, wave_id, body.province_code, by_enumerator, share, minimum)
    picked = {c for codes in chosen.values() for c in codes}
    record = BackCheckDraw(
        wave_id=wave_id, province_code=body.province_code, seed=seed, share=share, min_per_enumerator=minimum,
        population=len(forms), selected=len(picked), forms_hash=screening.forms_hash(by_enumerator),
        drawn_by=principal.actor,
    )
    session.add(record)
    await session.flush()
    await _add_to_back_check(session, [f for f in forms if f.form_code in picked], "draw", record.id)
    await audit.record(session, tables["audit_log"], principal, "back_check.draw", "wave", wave_id, wave_id=wave_id,
                       details={"province_code": body.province_code, "seed": seed, "share": share,
                                "min_per_enumerator": minimum, "population": len(forms), "selected": len(picked),
                                "forms_hash": record.forms_hash})
    return record


async def back_checks(
    session: AsyncSession, principal: Principal, wave_id: str, province_code: str | None, pending: bool | None,
    limit: int, offset: int,
) -> tuple[list[BackCheck], int]:
    wave = await get_wave(session, wave_id)
    ensure_province_visible(principal, wave["province_code"], "wave")
    province = _province_for(principal, province_code)
    query = select(BackCheck).where(BackCheck.wave_id == wave_id)
    if province is not None:
        query = query.where(BackCheck.province_code == province)
    if pending is not None:
        query = query.where(BackCheck.outcome.is_(None) if pending else BackCheck.outcome.is_not(None))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = (await session.scalars(query.order_by(BackCheck.province_code, BackCheck.form_code).limit(limit).offset(offset))).all()
    return list(rows), total or 0


async def record_outcome(
    app: FastAPI, session: AsyncSession, tables: dict[str, Table], principal: Principal, wave_id: str, form_code: str,
    body: OutcomeRecord,
) -> tuple[BackCheck, bool, bool]:
    wave = await get_wave(session, wave_id)
    form = await session.scalar(select(Form).where(Form.wave_id == wave_id, Form.form_code == form_code))
    check = await session.scalar(select(BackCheck).where(BackCheck.wave_id == wave_id, BackCheck.form_code == form_code))
    if check is not None and check.enumerator_id and session.bind.dialect.name == "postgresql":
        # Outcomes of one enumerator's forms may escalate that enumerator (all their forms onto
        # the list, denied ones voided): two at once locked the same rows in different orders and
        # deadlocked. One transaction lock per (wave, enumerator), taken before any row lock,
        # makes them queue instead. SQLite runs one writer at a time and needs none.
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                              {"key": f"back_check|{wave_id}|{check.enumerator_id}"})
    if form is not None:  # voiding and escalation change the form: serialise with reviews
        form = await session.scalar(
            select(Form).where(Form.id == form.id).with_for_update().execution_options(populate_existing=True)
        )
    province = check.province_code if check else (form.province_code if form else None)
    if form is None and check is None:
        raise NotFound(f"No form {form_code} in wave {wave_id}.")
    ensure_province_writable(principal, province, "form")
    if check is None:
        raise InvalidState(f"Form {form_code} is not on the back-check list of this wave.")
    ensure_open(wave)
    methodology = await fetch_methodology(app, wave["methodology_version"])
    parameters, _, _ = await parameters_for(session, methodology, wave_id)
    if check.outcome is not None:
        raise Conflict(
            f"An outcome was recorded for {form_code} already ({check.outcome}); it is kept.",
            outcome=check.outcome, recorded_by=check.recorded_by,
        )
    # Conditional update: of two concurrent submissions for one form only one can win (the
    # database decides, not the check above); the other is the same 409 as a late duplicate.
    recorded = await session.execute(
        BackCheck.__table__.update()
        .where(BackCheck.__table__.c.id == check.id, BackCheck.__table__.c.outcome.is_(None))
        .values(outcome=body.outcome, differing_items=body.items or None, note=body.note,
                recorded_by=principal.actor, recorded_at=utcnow())
    )
    if recorded.rowcount != 1:
        raise Conflict(f"An outcome was recorded for {form_code} already; it is kept.")
    await session.refresh(check)
    await audit.record(session, tables["audit_log"], principal, "back_check.outcome", "form", form_code,
                       wave_id=wave_id, reason=body.note,
                       details={"outcome": body.outcome, "items": body.items, "selected_by": check.selected_by})
    voided = escalated = False
    if form is not None:
        await _history(session, form, principal.actor, f"back_check_{body.outcome}", form.state,
                       comment=body.note, details={"items": body.items} if body.items else None)
        if body.outcome == "denied":
            voided = await _void(session, tables, principal, form)
    if check.enumerator_id:
        escalated = await _check_enumerator(session, tables, principal, wave_id, check.enumerator_id,
                                            check.province_code, float(parameters["denied_threshold"]))
    return check, voided, escalated


async def _void(session: AsyncSession, tables: dict[str, Table], principal: Principal, form: Form) -> bool:
    """A denied form is void: rejected for good (a reversal if it had been accepted)."""
    if form.voided:
        return False
    before = form.state
    form.voided = True
    form.state, form.decided_by, form.reasons = "rejected", "back_check", ["back_check_denied"]
    form.updated_at = utcnow()
    await _history(session, form, principal.actor, "voided", "rejected", from_state=before,
                   reason_codes=["back_check_denied"])
    if form.response_id is not None:
        await publish_decision(
            session, tables, form, "rejected", reasons=["back_check_denied"],
            basis={"back_check": "denied", "recorded_by": principal.actor}, decided_by="back_check",
            principal=principal, reason="the respondent denied the interview at back-check (phúc tra)",
        )
    return True


async def _check_enumerator(
    session: AsyncSession, tables: dict[str, Table], principal: Principal, wave_id: str, enumerator_id: str,
    province_code: str, threshold: float,
) -> bool:
    """Denied share = denied / reached (confirmed, denied, answers differ; not reached does not
    count). Past the threshold, every form of the enumerator goes on the back-check list."""
    counts = Counter(
        (await session.scalars(
            select(BackCheck.outcome).where(BackCheck.wave_id == wave_id, BackCheck.enumerator_id == enumerator_id,
                                            BackCheck.outcome.is_not(None))
        )).all()
    )
    reached = counts["confirmed"] + counts["denied"] + counts["answers_differ"]
    if reached == 0 or counts["denied"] / reached <= threshold:
        return False
    already = await session.scalar(
        select(EnumeratorEscalation.id).where(EnumeratorEscalation.wave_id == wave_id,
                                              EnumeratorEscalation.enumerator_id == enumerator_id)
    )
    if already is not None:
        return False
    session.add(EnumeratorEscalation(wave_id=wave_id, enumerator_id=enumerator_id, province_code=province_code,
                                     denied=counts["denied"], checked=reached, threshold=threshold))
    forms = (await session.scalars(
        select(Form).where(Form.wave_id == wave_id, Form.enumerator_id == enumerator_id, Form.state.is_not(None))
    )).all()
    added = await _add_to_back_check(session, list(forms), "escalation", None)
    await audit.record(session, tables["audit_log"], principal, "back_check.escalate", "enumerator", enumerator_id,
                       wave_id=wave_id, reason=f"denied share {counts['denied']}/{reached} above {threshold}",
                       details={"denied": counts["denied"], "reached": reached, "threshold": threshold,
                                "forms_added": added})
    return True
