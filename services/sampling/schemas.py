"""Sampling's API models (request and response bodies)."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.contracts.sampling import WaveScope, WaveStatus

Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,39}$")]
ProvinceCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{2}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


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

    @model_validator(mode="after")
    def _check(self) -> "WaveCreate":
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
