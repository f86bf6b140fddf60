"""Verification's tables (its own metadata: no other service reads them).

The service keeps its own copy of each wave's sample (to reject forms that are not in it and to
put the design fields on accepted forms), one ``form`` row per form code (field status, review
state, the last published decision), every response revision it received, every decision it
published, the form's review history, per-wave screening parameters, back-check draws and
outcomes, escalated enumerators and double-entry comparisons.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field

from shared.db import JSONType, UTCDateTime, service_base, utcnow
from shared.tables import BigIntPK
from shared.waves import add_wave_replica

Base = service_base("verification")

# This service's copy of sampling's waves, fed by wave events.
wave = add_wave_replica(Base.metadata)


def _pk() -> Any:
    return Field(default=None, sa_column=Column(BigIntPK, primary_key=True, autoincrement=True))


def _at(nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSONType, nullable=nullable))


class SampleUnit(Base, table=True):
    """A unit of a wave's sample as sampling announced it (no contact details: those stay in
    sampling). ``replaced`` units left the sample when a reserve unit took their place."""

    __tablename__ = "sample_unit"
    __table_args__ = (UniqueConstraint("wave_id", "unit_id", name="uq_sample_unit"),)

    id: int | None = _pk()
    wave_id: str = Field(max_length=36)
    unit_id: str = Field(max_length=36)
    draw_id: str = Field(max_length=36)
    joined: str = Field(max_length=20)  # draw | replacement
    stratum: str = Field(max_length=200)
    province_code: str = Field(max_length=8)
    commune_code: str | None = Field(default=None, max_length=16)
    psu: str = Field(max_length=200)
    ssu: str | None = Field(default=None, max_length=200)
    pi: float
    weight: float
    level: str | None = Field(default=None, max_length=100)
    field: str | None = Field(default=None, max_length=100)
    procedure_code: str | None = Field(default=None, max_length=100)
    respondent_type: str | None = Field(default=None, max_length=100)
    replaced: bool = False


class VoidedDraw(Base, table=True):
    """A draw the ministry reset in sampling (``sample.voided``). Remembered so that a chunk of it
    delivered late (a dead-lettered event replayed, say) cannot bring its units back after the
    re-draw: each chunk replaces the units of other draws."""

    __tablename__ = "voided_draw"

    draw_id: str = Field(primary_key=True, max_length=36)
    wave_id: str = Field(max_length=36)
    voided_at: dt.datetime = _at()


class Form(Base, table=True):
    """One form code of a wave: its field status (from survey), its review state and the last
    decision published about it (``decision_version`` counts them)."""

    __tablename__ = "form"
    __table_args__ = (
        UniqueConstraint("wave_id", "form_code", name="uq_form_code"),
        Index("ix_form_wave_state", "wave_id", "state"),
    )

    id: int | None = _pk()
    wave_id: str = Field(max_length=36)
    form_code: str = Field(max_length=40)
    unit_id: str | None = Field(default=None, max_length=36)
    province_code: str | None = Field(default=None, max_length=8)
    commune_code: str | None = Field(default=None, max_length=16)
    enumerator_id: str | None = Field(default=None, max_length=100)
    field_status: str | None = Field(default=None, max_length=20)
    field_status_time: dt.datetime | None = _at(nullable=True)
    dispatched: bool = False
    # received | has_issues | accepted | rejected | sent_back (None: no response yet)
    state: str | None = Field(default=None, max_length=20)
    decided_by: str | None = Field(default=None, max_length=20)  # rule | reviewer | back_check
    response_id: str | None = Field(default=None, max_length=36)
    revision: int | None = None
    reasons: list | None = _json()
    decision_version: int = 0
    published: str | None = Field(default=None, max_length=20)  # accepted | rejected
    voided: bool = False
    updated_at: dt.datetime = _at()


class Response(Base, table=True):
    """One revision of one response, as survey submitted it, with its screening findings."""

    __tablename__ = "response"
    __table_args__ = (
        UniqueConstraint("response_id", "revision", name="uq_response_revision"),
        Index("ix_response_form", "wave_id", "form_code"),
    )

    id: int | None = _pk()
    wave_id: str = Field(max_length=36)
    form_code: str = Field(max_length=40)
    response_id: str = Field(max_length=36)
    revision: int
    unit_id: str = Field(max_length=36)
    stratum: str = Field(max_length=200)
    province_code: str = Field(max_length=8)
    commune_code: str | None = Field(default=None, max_length=16)
    channel: str = Field(max_length=20)
    enumerator_id: str | None = Field(default=None, max_length=100)
    methodology_version: str = Field(max_length=40)
    answers: dict = _json(nullable=False)
    duration_seconds: float | None = None
    submitted_at: dt.datetime = _at()
    received_at: dt.datetime = _at()
    fingerprint: str = Field(max_length=64)
    outcome: str | None = Field(default=None, max_length=20)  # accepted | has_issues | rejected
    findings: list | None = _json()


class Decision(Base, table=True):
    """A published decision (response.accepted / response.rejected) with its basis: the rules
    and parameters, or the reviewer and comment, or the back-check outcome."""

    __tablename__ = "decision"
    __table_args__ = (UniqueConstraint("wave_id", "form_code", "version", name="uq_decision_version"),)

    id: int | None = _pk()
    wave_id: str = Field(max_length=36)
    form_code: str = Field(max_length=40)
    version: int
    kind: str = Field(max_length=20)
    reasons: list = _json(nullable=False)
    basis: dict = _json(nullable=False)
    decided_by: str = Field(max_length=20)
    actor: str = Field(max_length=200)
    reverses: bool = False
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    response_id: str | None = Field(default=None, max_length=36)
    revision: int | None = None
    decided_at: dt.datetime = _at()


class FormHistory(Base, table=True):
    """Every step of a form's review, readable by its reviewers (the audit log is for ministry
    and observers)."""

    __tablename__ = "form_history"
    __table_args__ = (Index("ix_form_history_form", "wave_id", "form_code", "id"),)

    id: int | None = _pk()
    wave_id: str = Field(max_length=36)
    form_code: str = Field(max_length=40)
    at: dt.datetime = _at()
    actor: str = Field(max_length=200)
    action: str = Field(max_length=40)
    from_state: str | None = Field(default=None, max_length=20)
    to_state: str | None = Field(default=None, max_length=20)
    reason_codes: list | None = _json()
    comment: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    details: dict | None = _json()


class ScreeningParameters(Base, table=True):
    """A wave's overrides of its methodology's validity parameters (set by the ministry before
    the wave closes; every change re-runs the rules)."""

    __tablename__ = "screening_parameters"

    wave_id: str = Field(primary_key=True, max_length=36)
    parameters: dict = _json(nullable=False)
    version: int = 1
    updated_at: dt.datetime = _at()
    updated_by: str = Field(max_length=200)


class BackCheckDraw(Base, table=True):
    """A seeded back-check draw for one province of a wave; the seed is kept so anyone can
    re-draw it."""

    __tablename__ = "back_check_draw"
    __table_args__ = (UniqueConstraint("wave_id", "province_code", name="uq_back_check_draw"),)

    id: int | None = _pk()
    wave_id: str = Field(max_length=36)
    province_code: str = Field(max_length=8)
    seed: int = Field(sa_column=Column(BigInteger, nullable=False))
    share: float
    min_per_enumerator: int
    population: int
    selected: int
    forms_hash: str = Field(max_length=64)
    drawn_at: dt.datetime = _at()
    drawn_by: str = Field(max_length=200)


class BackCheck(Base, table=True):
    """A form on the back-check list (drawn, or added when its enumerator was escalated) and the
    outcome the provincial team recorded."""

    __tablename__ = "back_check"
    __table_args__ = (
        UniqueConstraint("wave_id", "form_code", name="uq_back_check_form"),
        Index("ix_back_check_province", "wave_id", "province_code"),
    )

    id: int | None = _pk()
    wave_id: str = Field(max_length=36)
    form_code: str = Field(max_length=40)
    unit_id: str | None = Field(default=None, max_length=36)
    province_code: str = Field(max_length=8)
    enumerator_id: str | None = Field(default=None, max_length=100)
    selected_by: str = Field(max_length=20)  # draw | escalation
    draw_id: int | None = None
    selected_at: dt.datetime = _at()
    outcome: str | None = Field(default=None, max_length=20)
    differing_items: list | None = _json()
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    recorded_by: str | None = Field(default=None, max_length=200)
    recorded_at: dt.datetime | None = _at(nullable=True)


class EnumeratorEscalation(Base, table=True):
    """An enumerator whose denied share passed the threshold: all their forms are back-checked."""

    __tablename__ = "enumerator_escalation"
    __table_args__ = (UniqueConstraint("wave_id", "enumerator_id", name="uq_enumerator_escalation"),)

    id: int | None = _pk()
    wave_id: str = Field(max_length=36)
    enumerator_id: str = Field(max_length=100)
    province_code: str = Field(max_length=8)
    denied: int
    checked: int
    threshold: float
    escalated_at: dt.datetime = _at()


class EntryComparison(Base, table=True):
    """The double entry of one paper form, as survey reported it (the latest report wins)."""

    __tablename__ = "entry_comparison"
    __table_args__ = (UniqueConstraint("wave_id", "form_code", name="uq_entry_comparison"),)

    id: int | None = _pk()
    wave_id: str = Field(max_length=36)
    form_code: str = Field(max_length=40)
    unit_id: str = Field(max_length=36)
    province_code: str | None = Field(default=None, max_length=8)
    operators: list = _json(nullable=False)
    disagreements: list = _json(nullable=False)
    resolved: bool = False
    compared_at: dt.datetime = _at()


sample_unit = SampleUnit.__table__
