"""Survey's API models (request and response bodies)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo

from shared.contracts.sampling import ReplacementReason
from shared.contracts.survey import FormStatus
from shared.service import NUL_FREE

NO_NUL = r"^[^\x00]+$"  # PostgreSQL refuses NUL in text: a 422 here, never a 500 there


_PLAIN = (int, float, bool, type(None))


def _no_nul(value: Any) -> Any:
    """Reject NUL anywhere in a nested JSON value (keys included). Scalars of a dict or list are
    checked inline (a 5,000-form batch holds some 150,000 answers: one call each was the
    largest cost of parsing it)."""
    if type(value) is dict:
        for k, v in value.items():
            if type(k) is str:
                if "\x00" in k:
                    raise ValueError("NUL characters are not allowed")
            else:
                _no_nul(k)
            t = type(v)
            if t is str:
                if "\x00" in v:
                    raise ValueError("NUL characters are not allowed")
            elif t not in _PLAIN:
                _no_nul(v)
    elif type(value) is list:
        for v in value:
            t = type(v)
            if t is str:
                if "\x00" in v:
                    raise ValueError("NUL characters are not allowed")
            elif t not in _PLAIN:
                _no_nul(v)
    elif isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL characters are not allowed")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_nul(k)
            _no_nul(v)
    elif isinstance(value, list):
        for v in value:
            _no_nul(v)
    return value


def _no_nul_in_answers(value: Any, info: ValidationInfo) -> Any:
    """``_no_nul``, skipped when the raw body is known to hold no NUL (``shared.service.read_json_body``
    looks for the escape in the bytes: a few milliseconds against 30 for walking a batch)."""
    if info.context and info.context.get(NUL_FREE):
        return value
    return _no_nul(value)


FormCode = Annotated[str, StringConstraints(min_length=1, max_length=24, pattern=NO_NUL)]
StaffCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")]
WaveId = Annotated[str, StringConstraints(min_length=1, max_length=36, pattern=NO_NUL)]
BatchId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
# Answers keyed by question code; the wave's methodology decides what is valid.
Answers = Annotated[dict[Annotated[str, StringConstraints(max_length=100)], Any], Field(max_length=500), AfterValidator(_no_nul_in_answers)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- methodologies


class LocalTextOut(BaseModel):
    vi: str
    en: str | None = None


class MethodologySummary(BaseModel):
    id: str
    title: LocalTextOut
    valid_from: int
    valid_to: int | None
    frame_kind: str
    builtin: bool = Field(description="Shipped with the service (true) or published through the API")
    published_at: dt.datetime | None


# ---------------------------------------------------------------- forms


class FormRead(BaseModel):
    form_code: str
    wave_id: str
    unit_id: str
    role: str
    stratum: str
    province_code: str
    commune_code: str | None
    status: FormStatus
    post_office: str | None
    enumerator_id: str | None
    reserve_exhausted: bool
    change_seq: int
    created_at: dt.datetime
    updated_at: dt.datetime


class HistoryEntry(BaseModel):
    from_status: str | None
    to_status: str
    actor: str
    reason: str | None
    at: dt.datetime


class FormDetail(FormRead):
    history: list[HistoryEntry]


class FormPage(BaseModel):
    items: list[FormRead]
    total: int


class QrPayload(BaseModel):
    form_code: str
    url: str = Field(description="Link printed as the QR code: opens the form with its single-use token")
    typed_url: str = Field(description="Link without a token (the respondent types the code)")


class StatusChange(_In):
    status: Literal["dispatched", "refused", "unreachable", "ineligible"]
    reason: Reason | None = None
    replacement_reason: ReplacementReason | None = Field(
        None, description="Why sampling should replace the unit (refused/unreachable/ineligible); defaults from status"
    )


class Assignment(_In):
    form_code: FormCode
    post_office: StaffCode | None = None
    enumerator_id: StaffCode | None = None


class AssignRequest(_In):
    wave_id: WaveId
    assignments: list[Assignment] = Field(min_length=1, max_length=5000)


class AssignResult(BaseModel):
    changed: int
    not_assignable: list[str] = Field(description="Unknown codes, other wave or province, or forms no longer open")


# ---------------------------------------------------------------- Vietnam Post


class CorrectionRequest(BaseModel):
    revision: int = Field(description="The response revision the reviewer saw; the corrected answers become revision + 1")
    items: list[str] = Field(description="Question codes to check again")
    reason_codes: list[str]
    requested_at: dt.datetime


class AssignmentItem(BaseModel):
    form_code: str
    unit_id: str
    wave_id: str
    role: str
    stratum: str
    province_code: str
    commune_code: str | None
    post_office: str | None
    enumerator_id: str | None
    status: FormStatus
    reserve_exhausted: bool
    change_seq: int
    updated_at: dt.datetime
    correction: CorrectionRequest | None = Field(
        None, description="Sent back by verification: collect the answers again and push them in an answer batch")


class AssignmentPage(BaseModel):
    items: list[AssignmentItem]
    next_cursor: int = Field(description="Pass as `since` for the next page (and to poll for later changes)")
    has_more: bool


class StatusRecord(_In):
    form_code: FormCode
    status: Literal["dispatched", "refused", "unreachable", "ineligible"]
    reason: Reason | None = None
    replacement_reason: ReplacementReason | None = None
    enumerator_id: StaffCode | None = None


class AnswerRecord(_In):
    form_code: FormCode
    answers: Answers
    enumerator_id: StaffCode | None = None
    started_at: AwareDatetime | None = None
    duration_seconds: float | None = Field(None, ge=0, le=86400 * 30)


class StatusBatch(_In):
    batch_id: BatchId
    wave_id: WaveId
    records: list[StatusRecord] = Field(min_length=1, description="At most 5,000 (413 above)")


class AnswerBatch(_In):
    batch_id: BatchId
    wave_id: WaveId
    records: list[AnswerRecord] = Field(min_length=1, description="At most 5,000 (413 above)")


class RecordError(BaseModel):
    code: str
    item: str | None = None
    message: str


class RecordResult(BaseModel):
    form_code: str
    outcome: Literal["applied", "unchanged", "conflict", "rejected"]
    status: str | None
    errors: list[RecordError]


class BatchCounts(BaseModel):
    applied: int
    unchanged: int
    conflict: int
    rejected: int


class BatchResult(BaseModel):
    batch_id: str
    kind: Literal["status", "answers"]
    wave_id: str
    replayed: bool = Field(False, description="True when this batch id was received before: nothing was applied again")
    counts: BatchCounts
    records: list[RecordResult]


# ---------------------------------------------------------------- online


class WaveBrief(BaseModel):
    code: str
    name: str
    year: int


class Questionnaire(BaseModel):
    form_code: str
    wave: WaveBrief
    methodology_version: str
    language: str
    questionnaire: dict[str, Any] = Field(description="The methodology document (Vietnamese text in `vi`)")


class OnlineSubmission(_In):
    answers: Answers
    started_at: AwareDatetime | None = Field(None, description="When the respondent started (used if the form was never opened here)")


class OnlineReceipt(BaseModel):
    form_code: str
    response_id: str
    duration_seconds: float | None
    submitted_at: dt.datetime


# ---------------------------------------------------------------- data entry


class EntryIn(_In):
    operator: StaffCode = Field(description="Staff code of the keying operator")
    answers: Answers


class EntryResult(BaseModel):
    form_code: str
    entry: int
    state: Literal["awaiting_second_entry", "awaiting_third_entry", "complete"]
    disagreements: list[str]


class CorrectionResult(BaseModel):
    form_code: str
    revision: int = Field(description="Revision number of the corrected response")


class OperatorStats(BaseModel):
    operator: str
    entries: int
    compared_items: int
    mismatches: int
    mismatch_rate: float | None


# ---------------------------------------------------------------- progress


class Counts(BaseModel):
    assigned: int
    dispatched: int
    collected: int
    refused: int
    unreachable: int
    ineligible: int
    replaced: int
    total: int
    reserve_exhausted: int


class ProvinceCounts(Counts):
    province_code: str


class EnumeratorCounts(Counts):
    enumerator_id: str


class Progress(BaseModel):
    wave_id: str
    totals: Counts
    by_province: list[ProvinceCounts]
    by_enumerator: list[EnumeratorCounts]
