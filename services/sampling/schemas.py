"""Sampling's API models (request and response bodies)."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.contracts.sampling import ReplacementReason, WaveScope, WaveStatus

Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,39}$")]
ProvinceCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{2}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
UnitSet = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,39}$")]


class WaveCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Code = Field(description="Short unique code, e.g. SIPAS-2026 or SIPAS-2026-01")
    name: Text
    scope: WaveScope
    province_code: ProvinceCode | None = Field(None, description="Required for a provincial wave")
    year: int = Field(ge=2017, le=2100)
    methodology_version: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,39}$")]
    fieldwork_start: dt.date | None = None
    fieldwork_end: dt.date | None = None
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Random seed of the draw; generated when left out"
    )
    unit_set: UnitSet = Field("vn-2025", description="Administrative map the frames are checked against")

    @model_validator(mode="after")
    def _check(self) -> WaveCreate:
        if self.scope == "provincial" and not self.province_code:
            raise ValueError("a provincial wave needs province_code")
        if self.scope == "national" and self.province_code:
            raise ValueError("a national wave has no province_code")
        if self.fieldwork_start and self.fieldwork_end and self.fieldwork_end < self.fieldwork_start:
            raise ValueError("fieldwork_end is before fieldwork_start")
        return self

    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else secrets.randbelow(2**63)


class WaveUpdate(BaseModel):
    """Fields that may change; ``status`` moves along draft → frame_open → sampled → in_field →
    closed (``sampled`` is set by the draw itself)."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    methodology_version: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,39}$")] | None = None
    fieldwork_start: dt.date | None = None
    fieldwork_end: dt.date | None = None
    status: WaveStatus | None = None
    reason: Annotated[str, StringConstraints(max_length=500)] | None = Field(None, description="Why (kept in the audit log)")


class WaveRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    code: str
    name: str
    scope: WaveScope
    province_code: str | None
    year: int
    methodology_version: str
    fieldwork_start: dt.date | None
    fieldwork_end: dt.date | None
    status: WaveStatus
    unit_set: str
    created_at: dt.datetime
    updated_at: dt.datetime


class WavePage(BaseModel):
    items: list[WaveRead]
    total: int


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


# --------------------------------------------------------------------------------------------
# Administrative units

UnitLevel = Literal["province", "district", "commune"]
UnitCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{2,5}$")]


class UnitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: UnitLevel
    code: UnitCode
    name: Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
    parent_code: UnitCode | None = Field(None, description="Province of a district; district or province of a commune")
    province_code: UnitCode | None = Field(None, description="Province the unit lies in (a province: itself)")


class UnitImport(BaseModel):
    """An older or other administrative map, e.g. the 63 provinces with districts (vn-2008)."""

    model_config = ConfigDict(extra="forbid")

    unit_set: UnitSet
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    units: list[UnitIn] = Field(min_length=1, max_length=20_000)


class UnitRead(BaseModel):
    unit_set: str
    level: str
    code: str
    name: str
    parent_code: str | None
    province_code: str
    valid_from: dt.date | None
    valid_to: dt.date | None


class UnitPage(BaseModel):
    items: list[UnitRead]
    total: int


class UnitSetSummary(BaseModel):
    unit_set: str
    counts: dict[str, int]


class ImportResult(BaseModel):
    unit_set: str
    received: int
    added: int


class CrosswalkLink(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_level: UnitLevel
    from_code: UnitCode
    to_level: UnitLevel
    to_code: UnitCode
    share: float | None = Field(None, ge=0, le=1, description="Share of the old unit's population now in the new one")


class CrosswalkImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_set: UnitSet
    to_set: UnitSet
    links: list[CrosswalkLink] = Field(min_length=1, max_length=50_000)


class CrosswalkRead(BaseModel):
    from_set: str
    from_level: str
    from_code: str
    to_set: str
    to_level: str
    to_code: str
    share: float | None


class CrosswalkPage(BaseModel):
    items: list[CrosswalkRead]
    total: int


# --------------------------------------------------------------------------------------------
# Frames

MAX_BATCH = 10_000
BatchId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")]


class FrameBatch(BaseModel):
    """A batch of frame records pushed by a provincial portal. Records are checked one by one
    (see the record formats in docs/sampling.md): a bad record is reported, the others are kept."""

    batch_id: BatchId = Field(description="Idempotency key: the same batch again is a no-op, other content a 409")
    kind: Literal["transaction", "resident"] = Field("transaction", description="Frame kind of every record")
    records: list[Any] = Field(
        description=f"At most {MAX_BATCH} records (413 above), objects in the frame kind's format; "
        "an entry that is not a valid record is reported in `errors`, the others are kept"
    )


class RecordError(BaseModel):
    index: int = Field(description="0-based position in the batch (CSV: data row number, header excluded)")
    record_key: str | None
    problems: list[str]


class BatchReport(BaseModel):
    batch_id: str
    kind: str
    received: int
    accepted: int = Field(description="New records stored")
    duplicates: int = Field(description="Records already in the frame with identical content (one record)")
    rejected: int
    errors: list[RecordError]
    errors_truncated: bool = False
    replayed: bool = Field(False, description="True when this batch id was already processed: the stored report")


class FrameRead(BaseModel):
    wave_id: str
    kind: str
    status: Literal["open", "closed"]
    record_count: int
    fingerprint: str | None
    opened_at: dt.datetime
    closed_at: dt.datetime | None
    by_province: dict[str, int]


# --------------------------------------------------------------------------------------------
# Design

StratumField = Literal["province_code", "commune_code", "level", "field", "procedure_code", "respondent_type", "agency"]


class MultiStageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    communes_per_stratum: int = Field(ge=1, le=10_000)
    villages_per_commune: int = Field(ge=1, le=1_000)
    people_per_village: int = Field(ge=1, le=10_000)
    village_method: Literal["pps", "srs"] = "pps"


class DesignBody(BaseModel):
    """How a wave's sample is drawn. See docs/sampling.md for a worked example."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["stratified", "multi_stage"] = "stratified"
    strata_by: list[StratumField] = Field(["province_code"], min_length=1, max_length=4)
    sizing: Literal["allocate", "per_stratum", "fixed"] = Field(
        "allocate",
        description="allocate: split a total over strata; per_stratum: each stratum from its own margin; "
        "fixed: the sizes given in `sizes`",
    )
    sizes: dict[Annotated[str, StringConstraints(max_length=200)], Annotated[int, Field(ge=0, le=10_000_000)]] | None = Field(
        None, description="Sample size per stratum key (sizing=fixed); strata not listed get 0"
    )
    total: int | None = Field(None, ge=1, le=10_000_000, description="Total sample; computed from the margin when left out")
    allocation: Literal["proportional", "equal", "neyman"] = "proportional"
    minimum_per_stratum: int = Field(0, ge=0, le=100_000)
    margin: float = Field(0.05, gt=0, lt=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    p: float = Field(0.5, gt=0, lt=1)
    p_by_stratum: dict[Annotated[str, StringConstraints(max_length=200)], Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description="Anticipated share satisfied per stratum key (Neyman allocation)"
    )
    design_effect: float = Field(1.0, gt=0, le=100)
    response_rate: float = Field(1.0, gt=0, le=1)
    reserve_share: float = Field(0.5, ge=0, le=10)
    multi_stage: MultiStageOptions | None = None

    @model_validator(mode="after")
    def _check(self) -> DesignBody:
        if len(set(self.strata_by)) != len(self.strata_by):
            raise ValueError("strata_by lists a field twice")
        if self.method == "multi_stage" and self.multi_stage is None:
            raise ValueError("a multi_stage design needs multi_stage options")
        if self.method == "stratified" and self.multi_stage is not None:
            raise ValueError("multi_stage options belong to a multi_stage design")
        if (self.sizing == "fixed") != (self.sizes is not None):
            raise ValueError("sizes go with sizing=fixed, and sizing=fixed needs sizes")
        return self


class DesignRead(BaseModel):
    wave_id: str
    design: DesignBody
    updated_at: dt.datetime
    updated_by: str


class StratumPreview(BaseModel):
    stratum: str
    population: int
    n: int
    n_reserve: int
    pi: float | None = Field(description="n/N for a stratified draw; None for multi-stage (varies by unit)")
    communes: int | None = None


class DesignPreview(BaseModel):
    frame_status: str
    population: int
    n: int
    n_reserve: int
    strata: list[StratumPreview]


# --------------------------------------------------------------------------------------------
# Draws, sample, replacements, contacts


class DrawRead(BaseModel):
    id: str
    wave_id: str
    generation: int
    status: str
    sample_hash: str
    frame_fingerprint: str
    n_sample: int
    n_reserve: int
    strata: list[dict[str, Any]]
    drawn_at: dt.datetime
    drawn_by: str


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(ge=0, le=2**63 - 1)


class VerifyResult(BaseModel):
    sample_hash: str = Field(description="Hash of the sample this seed gives on the stored frame and design")
    frame_fingerprint: str
    drawn_hash: str
    matches: bool


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, StringConstraints(min_length=3, max_length=500, strip_whitespace=True)]


class SampleUnitRead(BaseModel):
    unit_id: str
    stratum: str
    role: Literal["sample", "reserve"]
    order: int
    status: str
    province_code: str
    commune_code: str | None
    psu: str
    ssu: str | None
    pi: float
    weight: float
    level: str | None
    field: str | None
    procedure_code: str | None
    respondent_type: str | None
    reason: str | None
    replaced_by: str | None
    replaces: str | None


class SamplePage(BaseModel):
    items: list[SampleUnitRead]
    total: int


class ReplacementRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit_id: uuid.UUID
    reason: ReplacementReason


class ReplacementResult(BaseModel):
    replaced_unit_id: str
    reason: str | None
    replacement: SampleUnitRead | None
    reserve_exhausted: bool
    already_handled: bool = Field(description="The unit had been replaced before: nothing changed")


class ReserveGroup(BaseModel):
    stratum: str
    psu: str
    ssu: str
    n: int
    reserve: int
    released: int
    remaining: int
    unreplaced: int
    exhausted: bool


class ReserveStatus(BaseModel):
    groups: list[ReserveGroup]
    exhausted_groups: int


class Contact(BaseModel):
    unit_id: str
    province_code: str
    commune_code: str | None
    full_name: str | None
    phone: str | None
    email: str | None
    address: str | None


class ContactPage(BaseModel):
    items: list[Contact]
    total: int = Field(description="Units matching the query (paging without unit_id)")
    not_available: list[str] = Field(description="Ids not in the sample (or not released, or of another province)")
