"""Events published by the verification service (kiểm phiếu, lọc phiếu, phúc tra)."""

from __future__ import annotations

import datetime as dt
import uuid

from shared.contracts.survey import Answer, Channel
from shared.events import EventData, contract


class _Decision(EventData):
    producer = "verification"
    wave_id: uuid.UUID
    form_code: str
    unit_id: uuid.UUID
    # Decisions on one form are numbered; consumers keep the highest. A reversal is simply a
    # newer decision (with ``reverses`` set and a reason).
    decision_version: int
    decided_at: dt.datetime
    reverses: bool = False
    reason: str | None = None

    def subject(self) -> str:
        return self.form_code


@contract
class ResponseAccepted(_Decision):
    """A form passed screening and review: it counts in the indices. Carries what indexing needs
    (answers and design fields), nothing that identifies a person."""

    event_type = "sipas.verification.response.accepted.v1"
    methodology_version: str
    stratum: str
    province_code: str
    commune_code: str | None
    psu: str
    ssu: str | None
    pi: float
    weight: float
    level: str | None = None
    field: str | None = None
    procedure_code: str | None = None
    respondent_type: str | None = None
    channel: Channel
    answers: dict[str, Answer]


@contract
class ResponseRejected(_Decision):
    """A form does not count (screening rule, review, or voided after a back-check)."""

    event_type = "sipas.verification.response.rejected.v1"
    reasons: list[str]


@contract
class CorrectionRequested(EventData):
    """A reviewer sent a form back for correction (to survey's data entry, or to Vietnam Post for
    a paper form). ``items`` names the questions to check, ``reason_codes`` why; free-text
    comments stay in verification (they might name people). A corrected form comes back as a
    ``response.submitted`` with a higher ``revision`` and is screened again."""

    event_type = "sipas.verification.correction.requested.v1"
    producer = "verification"
    wave_id: uuid.UUID
    form_code: str
    unit_id: uuid.UUID
    response_id: uuid.UUID
    revision: int
    channel: Channel
    reason_codes: list[str]
    items: list[str]
    requested_at: dt.datetime

    def subject(self) -> str:
        return self.form_code
