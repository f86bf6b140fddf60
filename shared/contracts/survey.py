"""Events published by the survey service (phát, thu phiếu, nhập liệu)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from shared.contracts.sampling import ReplacementReason
from shared.events import EventData, contract

Channel = Literal["paper", "online", "phone"]
FormStatus = Literal[
    "assigned", "dispatched", "collected", "refused", "unreachable", "ineligible", "replaced", "withdrawn"
]
# An answer: 1-5 (or 1-3, 1-2) codes, None = blank, "na" = did not apply, option codes, lists.
Answer = int | str | list[str] | None


class _FormEvent(EventData):
    producer = "survey"
    wave_id: uuid.UUID
    form_code: str
    unit_id: uuid.UUID

    def subject(self) -> str:
        return self.form_code


@contract
class FormStatusChanged(_FormEvent):
    """A form moved along assigned → dispatched → collected | refused | unreachable | ineligible
    → replaced, or from assigned to ``withdrawn`` (its draw was reset: the form is out of the
    fieldwork for good). Feeds verification's quality counts (dispatched, returned…)."""

    event_type = "sipas.survey.form.status_changed.v1"
    province_code: str
    commune_code: str | None
    enumerator_id: str | None
    status: FormStatus
    reason: str | None = None


@contract
class ReplacementRequested(_FormEvent):
    """The unit behind a form cannot answer; sampling should release the next reserve unit."""

    event_type = "sipas.survey.replacement.requested.v1"
    reason: ReplacementReason


@contract
class ResponseSubmitted(_FormEvent):
    """A completed form (from Vietnam Post, online, or keyed data entry). ``answers`` holds item,
    expectation and non-sensitive profile answers keyed by question code; sensitive profile
    answers (ethnicity) never leave the survey service. A corrected resubmission after a
    send-back carries a higher ``revision``."""

    event_type = "sipas.survey.response.submitted.v1"
    response_id: uuid.UUID
    revision: int = 1
    stratum: str
    province_code: str
    commune_code: str | None
    channel: Channel
    enumerator_id: str | None
    methodology_version: str
    answers: dict[str, Answer]
    started_at: dt.datetime | None = None
    duration_seconds: float | None = None
    submitted_at: dt.datetime


@contract
class DataEntryCompared(_FormEvent):
    """Double entry of a paper form finished: the two (or three) keyings and where they differed."""

    event_type = "sipas.survey.data_entry.compared.v1"
    operators: list[str]
    disagreements: list[str]
    resolved_by_third_entry: bool
