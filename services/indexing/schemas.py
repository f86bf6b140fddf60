"""Indexing's API bodies. The export shape is the indexing → publication contract
(docs/indexing.md): publication copies it at draft-release creation."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

Domain = Literal["nation", "province", "commune", "level", "field", "procedure", "policy_group", "respondent_group"]
IndicatorKind = Literal["sipas", "part", "element", "item", "expectation"]
WeightingKind = Literal["none", "design"]
Flag = Literal["ok", "unreliable", "suppressed"]


class RunCreate(BaseModel):
    """A final run is computed from the wave's accepted set as it is now."""

    reason: str | None = Field(default=None, max_length=500)


class RunExportHeader(BaseModel):
    run_id: str
    wave_id: str
    kind: Literal["final", "provisional"]
    methodology_version: str
    accepted_fingerprint: str
    accepted_forms: int
    code_version: str
    parameters: dict[str, Any]
    completed_at: dt.datetime
    previous_wave_id: str | None


class RunRead(RunExportHeader):
    previous_run_id: str | None
    national_sipas: float | None = Field(description="Headline national SIPAS (methodology's weighting and "
                                                     "national rule), 0–100")
    requested_by: str


class RunPage(BaseModel):
    items: list[RunRead]


class Cell(BaseModel):
    domain: Domain
    domain_code: str
    indicator: IndicatorKind
    code: str
    weighting: WeightingKind
    value: float | None
    se: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    cv: float | None
    deff: float | None
    flag: Flag


class CellPage(BaseModel):
    items: list[Cell]
    total: int
    limit: int
    offset: int


class Ranking(BaseModel):
    province_code: str
    indicator: str
    value: float | None
    rank: int | None
    previous_rank: int | None
    rank_change: int | None = Field(description="previous_rank - rank: positive = moved up")
    previous_value: float | None
    comparable: bool
    comparability_note: str | None


class RankingList(BaseModel):
    items: list[Ranking]


class RunExport(BaseModel):
    run: RunExportHeader
    cells: list[Cell]
    rankings: list[Ranking]


class AcceptedSet(BaseModel):
    wave_id: str
    accepted_forms: int
    rejected_forms: int
    accepted_fingerprint: str


class Provisional(BaseModel):
    wave_id: str
    methodology_version: str
    domain: Literal["nation", "province", "level", "field"]
    accepted_forms: int
    cells: list[Cell]
