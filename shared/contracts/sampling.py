"""Events published by the sampling service (chọn mẫu)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from shared.events import EventData, EventPart, contract

WaveStatus = Literal["draft", "frame_open", "sampled", "in_field", "closed"]
WaveScope = Literal["national", "provincial"]


class _WaveEvent(EventData):
    producer = "sampling"
    wave_id: uuid.UUID
    code: str
    name: str
    scope: WaveScope
    province_code: str | None
    year: int
    methodology_version: str
    fieldwork_start: dt.date | None
    fieldwork_end: dt.date | None
    status: WaveStatus

    def subject(self) -> str:
        return str(self.wave_id)


@contract
class WaveCreated(_WaveEvent):
    """A wave (đợt đo lường) was created. Other services keep their own copy of its facts."""

    event_type = "sipas.sampling.wave.created.v1"


@contract
class WaveUpdated(_WaveEvent):
    """A wave's facts or status changed; carries the whole new state, so consumers just replace."""

    event_type = "sipas.sampling.wave.updated.v1"


class SampledUnit(EventPart):
    """A selected unit as downstream services need it: design fields and domains, no contact.

    Contacts (name, phone, address) stay in the sampling service; Vietnam Post and provincial
    back-check teams read them from its API with keys whose role allows it.
    """

    unit_id: uuid.UUID
    stratum: str
    role: Literal["sample", "reserve"]
    order: int
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


class StratumSummary(EventPart):
    stratum: str
    population: int
    n: int
    n_reserve: int


@contract
class SampleDrawn(EventData):
    """A wave's sample was drawn (chọn mẫu). Sent in chunks; chunk 0 also carries the strata
    with their frame sizes (for nonresponse adjustment). Only ``role=sample`` units are listed;
    reserves are announced one by one when released (``unit.replaced``)."""

    event_type = "sipas.sampling.sample.drawn.v1"
    producer = "sampling"
    wave_id: uuid.UUID
    draw_id: uuid.UUID
    methodology_version: str
    sample_hash: str
    chunk: int
    chunks: int
    strata: list[StratumSummary]
    units: list[SampledUnit]

    def subject(self) -> str:
        return str(self.wave_id)


ReplacementReason = Literal["refused", "unreachable", "moved", "deceased", "ineligible"]


@contract
class UnitReplaced(EventData):
    """A sampled unit was replaced by the next reserve unit of its stratum, or could not be
    (``reserve_exhausted``: the stratum's reserve list is used up)."""

    event_type = "sipas.sampling.unit.replaced.v1"
    producer = "sampling"
    wave_id: uuid.UUID
    replaced_unit_id: uuid.UUID
    reason: ReplacementReason
    replacement: SampledUnit | None
    reserve_exhausted: bool
    # The draw both units belong to, so a consumer can tell a replacement of a voided draw from
    # one of the draw in use (optional: older producers did not send it).
    draw_id: uuid.UUID | None = None

    def subject(self) -> str:
        return str(self.wave_id)


@contract
class SampleVoided(EventData):
    """A wave's draw was voided by the ministry's audited reset, before fieldwork: its units are
    no longer the sample. Consumers drop what they hold of that draw (survey withdraws its forms,
    verification its copy of the units); a later draw of the wave comes as a new ``sample.drawn``
    with another ``draw_id``. ``reason`` is the ministry's reason for the reset."""

    event_type = "sipas.sampling.sample.voided.v1"
    producer = "sampling"
    wave_id: uuid.UUID
    draw_id: uuid.UUID
    reason: str
    voided_at: dt.datetime

    def subject(self) -> str:
        return str(self.wave_id)
