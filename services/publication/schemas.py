"""Publication's API models: what it accepts from indexing, from the ministry and observers, and
what it serves to the public.

Everything published goes through these models, and every public model forbids undeclared
fields: the public API is an allow-list, so nothing that is not a declared statistical field (a
name, a phone number, an address) can reach a portal. The indexing export is read through an
allow-list too: unknown fields are dropped at the door and never stored.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Codes in published cells are identifiers (province "01", element "E1", option "opt_3"), never
# free text: a value with spaces or diacritics cannot be a code and is refused.
StatCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
ProvinceCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{2,3}$")]
Domain = Literal["nation", "province", "commune", "level", "field", "procedure", "policy_group", "respondent_group"]
Indicator = Literal["sipas", "part", "element", "item", "expectation"]
Weighting = Literal["none", "design"]
Flag = Literal["ok", "unreliable", "suppressed"]
VersionStatus = Literal["draft", "approved", "scheduled", "published"]
Footnote = Annotated[str, StringConstraints(min_length=1, max_length=1000, strip_whitespace=True)]


# --- the indexing export (input; allow-list, extra fields dropped) ---


class _Export(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ExportRun(_Export):
    run_id: uuid.UUID
    wave_id: uuid.UUID
    kind: Literal["final", "provisional"]
    methodology_version: Annotated[str, StringConstraints(max_length=40)]
    accepted_fingerprint: Annotated[str, StringConstraints(max_length=128)]
    accepted_forms: int = Field(ge=0)
    code_version: Annotated[str, StringConstraints(max_length=80)]
    completed_at: dt.datetime
    previous_wave_id: uuid.UUID | None = None


class ExportCell(_Export):
    domain: Domain
    domain_code: StatCode
    indicator: Indicator
    code: StatCode
    weighting: Weighting
    value: float | None = None
    se: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = Field(ge=0)
    cv: float | None = None
    deff: float | None = None
    flag: Flag


class ExportRanking(_Export):
    province_code: ProvinceCode
    indicator: StatCode
    value: float | None = None
    rank: int | None = None
    previous_rank: int | None = None
    rank_change: int | None = None
    previous_value: float | None = None
    comparable: bool = True
    comparability_note: Annotated[str, StringConstraints(max_length=500)] | None = None


class RunExport(_Export):
    run: ExportRun
    cells: list[ExportCell]
    rankings: list[ExportRanking] = []


# --- the ministry's and observers' side ---


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReleaseCreate(_In):
    run_id: uuid.UUID = Field(description="A final index run announced by indexing")
    footnotes: list[Footnote] = Field(default_factory=list, max_length=50)


class CorrectionCreate(_In):
    reason: Annotated[str, StringConstraints(min_length=3, max_length=2000, strip_whitespace=True)] = Field(
        description="Why the published figures are corrected (shown to the public)"
    )
    run_id: uuid.UUID | None = Field(None, description="The corrected final run; left out: the same run (e.g. a footnote fix)")
    footnotes: list[Footnote] | None = Field(None, max_length=50, description="Left out: the previous version's")


class PublishBody(_In):
    publish_at: dt.datetime | None = Field(
        None,
        description="Embargo: the instant (with offset) the version becomes public, kept to the second. "
        "Left out: publish now.",
    )


class CommentCreate(_In):
    text: Annotated[str, StringConstraints(min_length=1, max_length=4000, strip_whitespace=True)]


class IndexRunRead(BaseModel):
    run_id: str
    wave_id: str
    kind: Literal["final", "provisional"]
    methodology_version: str
    accepted_fingerprint: str
    accepted_forms: int
    code_version: str
    completed_at: dt.datetime
    national_sipas: float | None
    received_at: dt.datetime


class IndexRunPage(BaseModel):
    items: list[IndexRunRead]


class VersionRead(BaseModel):
    release_id: str
    version: int
    run_id: str
    status: VersionStatus
    correction_reason: str | None
    footnotes: list[str]
    publish_at: dt.datetime | None
    announced_at: dt.datetime | None
    approved_at: dt.datetime | None
    approved_by: str | None
    created_at: dt.datetime
    created_by: str


class ReleaseRead(BaseModel):
    id: str
    wave_id: str
    created_at: dt.datetime
    created_by: str
    versions: list[VersionRead]


class ReleaseList(BaseModel):
    items: list[ReleaseRead]


class CommentRead(BaseModel):
    seq: int
    version: int
    author: str
    role: str
    text: str
    created_at: dt.datetime


class CommentPage(BaseModel):
    items: list[CommentRead]


# --- webhooks ---


class WebhookCreate(_In):
    url: Annotated[str, StringConstraints(min_length=8, max_length=2000, strip_whitespace=True)] = Field(
        description="http(s) URL receiving signed POSTs on publication and correction"
    )


class WebhookRead(BaseModel):
    id: str
    owner: str
    url: str
    active: bool
    consecutive_failures: int
    disabled_at: dt.datetime | None
    disabled_reason: str | None
    created_at: dt.datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(description="HMAC-SHA256 key for X-SIPAS-Signature; shown once")


class WebhookList(BaseModel):
    items: list[WebhookRead]


class AttemptRead(BaseModel):
    attempt: int
    at: dt.datetime
    status_code: int | None
    error: str | None
    duration_ms: float
    replay: bool


class DeliveryRead(BaseModel):
    id: str
    webhook_id: str
    event: str
    release_id: str
    version: int
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: dt.datetime | None
    created_at: dt.datetime
    delivered_at: dt.datetime | None
    log: list[AttemptRead]


class DeliveryList(BaseModel):
    items: list[DeliveryRead]


class WebhookPayload(BaseModel):
    """What a subscriber receives (the body that is signed)."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["release.published", "release.corrected"]
    delivery_id: str
    release_id: str
    version: int
    wave_id: str
    published_at: dt.datetime
    correction_reason: str | None
    url: str = Field(description="Public URL path of the published version")


# --- the public API (allow-lists: extra fields forbidden) ---


class _Public(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Figure(_Public):
    """One published cell. ``suppressed`` cells (too few valid answers) carry no value/SE/CI."""

    domain: Domain
    domain_code: str
    indicator: Indicator
    code: str
    weighting: Weighting = Field(description="none = the official unweighted figure; design = design-weighted, beside it")
    value: float | None
    se: float | None
    ci_low: float | None = Field(description="95% confidence interval, lower bound")
    ci_high: float | None = Field(description="95% confidence interval, upper bound")
    n: int = Field(description="Valid answers")
    cv: float | None
    deff: float | None
    flag: Flag
    suppressed: bool


class Ranking(_Public):
    province_code: str
    indicator: str
    value: float | None
    rank: int | None
    previous_rank: int | None
    rank_change: int | None = Field(description="previous_rank - rank: positive means the province moved up")
    previous_value: float | None
    comparable: bool = Field(description="False across a method break: the change is not a like-for-like comparison")
    comparability_note: str | None


class WaveFacts(_Public):
    wave_id: str
    code: str
    name: str
    year: int
    scope: str
    province_code: str | None
    fieldwork_start: dt.date | None
    fieldwork_end: dt.date | None


class SampleSize(_Public):
    province_code: str
    n: int


class ReleaseSummary(_Public):
    release_id: str
    version: int
    wave: WaveFacts
    methodology_version: str
    published_at: dt.datetime
    correction_reason: str | None


class ReleaseMetadata(_Public):
    release_id: str
    version: int
    run_id: str
    wave: WaveFacts
    methodology_version: str
    code_version: str
    accepted_forms: int = Field(description="Forms accepted into the index run (the national sample size)")
    sample_sizes: list[SampleSize] = Field(description="Valid answers behind each province's official SIPAS")
    published_at: dt.datetime
    correction_reason: str | None
    footnotes: list[str]
    previous_wave_id: str | None


class ReleaseDocument(_Public):
    """A published version: its metadata and the national figures, with links to the rest."""

    metadata: ReleaseMetadata
    national: list[Figure]
    links: dict[str, str]


class VersionSummary(_Public):
    version: int
    published_at: dt.datetime
    correction_reason: str | None


class VersionList(_Public):
    release_id: str
    items: list[VersionSummary]


class Page(_Public):
    next_cursor: str | None = Field(description="Opaque; pass as ?cursor= for the next page. null on the last page")


class ReleasePage(Page):
    items: list[ReleaseSummary]


class PublicWave(_Public):
    wave: WaveFacts
    release_id: str
    version: int
    methodology_version: str
    published_at: dt.datetime


class WavePage(Page):
    items: list[PublicWave]


class FigurePage(Page):
    release_id: str
    version: int
    items: list[Figure]


class ProvinceFigures(_Public):
    province_code: str
    figures: list[Figure]


class ProvincePage(Page):
    release_id: str
    version: int
    items: list[ProvinceFigures]


class RankingPage(Page):
    release_id: str
    version: int
    items: list[Ranking]


class SeriesPoint(_Public):
    wave: WaveFacts
    release_id: str
    version: int
    methodology_version: str
    value: float | None
    se: float | None
    ci_low: float | None
    ci_high: float | None
    n: int | None
    flag: Flag | None
    rank: int | None
    method_break: bool = Field(description="The methodology differs from the previous point: not comparable")
    merger_break: bool = Field(description="Administrative units differ from the previous point (the 2025 province merger)")
    comparability_note: str | None


class Series(_Public):
    province_code: str
    indicator: str
    code: str
    weighting: Weighting
    items: list[SeriesPoint]
