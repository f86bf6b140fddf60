"""Verification's API models (request and response bodies)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,39}$")]
QuestionCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,80}$")]
ProvinceCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{2}$")]
Comment = Annotated[str, StringConstraints(min_length=1, max_length=2000, strip_whitespace=True)]
Share = Annotated[float, Field(ge=0, le=1)]

FormState = Literal["received", "has_issues", "accepted", "rejected", "sent_back"]
ReviewActionName = Literal["accept", "reject", "send_back", "comment"]
BackCheckOutcome = Literal["confirmed", "not_reached", "denied", "answers_differ"]


# ------------------------------------------------------------------ screening parameters


class ScreeningParameterValues(BaseModel):
    """The methodology's validity parameters (§6) as they apply to one wave."""

    min_answered_share: float
    straight_lining_flag: bool
    min_online_seconds: int
    back_check_share: float
    back_check_min_per_enumerator: int
    denied_threshold: float


class ScreeningParametersRead(BaseModel):
    wave_id: str
    methodology_version: str
    parameters: ScreeningParameterValues
    overrides: dict[str, Any]
    version: int = Field(description="0 = the methodology's own values, no override yet")


class ScreeningParametersUpdate(BaseModel):
    """Overrides for one wave; fields left out keep their current value. Every change re-runs
    the screening rules on the wave's forms whose state a rule (not a reviewer) decided."""

    model_config = ConfigDict(extra="forbid")

    min_answered_share: Share | None = None
    straight_lining_flag: bool | None = None
    min_online_seconds: int | None = Field(None, ge=0, le=86_400)
    back_check_share: Share | None = None
    back_check_min_per_enumerator: int | None = Field(None, ge=0, le=1000)
    denied_threshold: Share | None = None
    reason: Comment = Field(description="Why the parameters change (kept in the audit log)")


class RerunSummary(BaseModel):
    rescreened: int
    changed: int
    decisions: int


class ScreeningParametersResult(BaseModel):
    parameters: ScreeningParametersRead
    rerun: RerunSummary


# ------------------------------------------------------------------ forms and review


class FormRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    wave_id: str
    form_code: str
    unit_id: str | None
    province_code: str | None
    commune_code: str | None
    enumerator_id: str | None
    field_status: str | None
    state: str | None
    decided_by: str | None
    response_id: str | None
    revision: int | None
    reasons: list[Any] | None
    decision_version: int
    published: str | None
    voided: bool


class FormPage(BaseModel):
    items: list[FormRead]
    total: int


class HistoryEntry(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    at: dt.datetime
    actor: str
    action: str
    from_state: str | None
    to_state: str | None
    reason_codes: list[Any] | None
    comment: str | None
    details: dict[str, Any] | None


class DecisionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    kind: str
    reasons: list[Any]
    basis: dict[str, Any]
    decided_by: str
    actor: str
    reverses: bool
    reason: str | None
    response_id: str | None
    revision: int | None
    decided_at: dt.datetime


class ScreeningRead(BaseModel):
    response_id: str
    revision: int
    channel: str
    outcome: str | None
    findings: list[Any] | None
    received_at: dt.datetime


class FormDetail(BaseModel):
    form: FormRead
    responses: list[ScreeningRead]
    decisions: list[DecisionRead]
    history: list[HistoryEntry]


class ReviewAction(BaseModel):
    """A reviewer's step. ``accept``/``reject`` decide (on a form whose published decision is
    the opposite, this is a reversal and needs ``reason``); ``send_back`` asks survey to correct
    the form (``items`` = questions to check); ``comment`` only adds to the history."""

    model_config = ConfigDict(extra="forbid")

    action: ReviewActionName
    reason_codes: list[ReasonCode] = Field(default_factory=list, max_length=20)
    items: list[QuestionCode] = Field(default_factory=list, max_length=200)
    comment: Comment | None = None
    reason: Comment | None = Field(None, description="Required when the action reverses a published decision")

    @model_validator(mode="after")
    def _check(self) -> ReviewAction:
        if self.action in ("reject", "send_back") and not self.reason_codes:
            raise ValueError(f"{self.action} needs at least one reason code")
        if self.action == "comment" and not self.comment:
            raise ValueError("a comment needs text")
        return self


# ------------------------------------------------------------------ back-checks


class DrawRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    province_code: ProvinceCode
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Generated when left out; always recorded")


class DrawRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    wave_id: str
    province_code: str
    seed: int
    share: float
    min_per_enumerator: int
    population: int
    selected: int
    forms_hash: str
    drawn_at: dt.datetime
    drawn_by: str


class BackCheckItem(BaseModel):
    wave_id: str
    form_code: str
    unit_id: str | None
    province_code: str
    enumerator_id: str | None
    selected_by: str
    outcome: str | None
    differing_items: list[Any] | None
    note: str | None
    recorded_by: str | None
    recorded_at: dt.datetime | None
    contact: dict[str, Any] | None = Field(None, description="From the sampling service, with the caller's own rights")


class BackCheckList(BaseModel):
    items: list[BackCheckItem]
    total: int
    contacts_unavailable: str | None = Field(
        None, description="Why no contact details are attached (sampling did not give them)"
    )


class OutcomeRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: BackCheckOutcome
    items: list[QuestionCode] = Field(default_factory=list, max_length=200)
    note: Comment | None = None

    @model_validator(mode="after")
    def _check(self) -> OutcomeRecord:
        if self.outcome == "answers_differ" and not self.items:
            raise ValueError("answers_differ needs the items that differ")
        if self.outcome != "answers_differ" and self.items:
            raise ValueError("items are only for answers_differ")
        return self


class OutcomeResult(BaseModel):
    back_check: BackCheckItem
    voided: bool
    enumerator_escalated: bool


# ------------------------------------------------------------------ entry verification and quality


class OperatorRate(BaseModel):
    operator: str
    forms: int
    forms_with_disagreements: int
    items_disagreed: int
    mismatch_rate: float


class Disagreement(BaseModel):
    form_code: str
    operators: list[str]
    disagreements: list[str]
    resolved_by_third_entry: bool


class EntryVerification(BaseModel):
    forms_compared: int
    forms_with_disagreements: int
    unresolved: list[Disagreement]
    operators: list[OperatorRate]


class QualityRow(BaseModel):
    key: str
    dispatched: int
    returned: int
    valid: int
    rejected: int
    rejected_by_reason: dict[str, int]
    flagged: int
    duplicates: int
    back_checked: int
    denied: int


class QualityReport(BaseModel):
    wave_id: str
    by: str
    rows: list[QualityRow]


class AuditEntry(BaseModel):
    seq: int
    at: dt.datetime
    actor: str
    role: str
    action: str
    entity: str
    entity_id: str
    wave_id: str | None
    reason: str | None
    details: dict | None
    correlation_id: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_after: int | None
