"""Sampling's tables (its own metadata: no other service reads them)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, Column, UniqueConstraint
from sqlmodel import Field

from shared.db import UTCDateTime, service_base, utcnow

Base = service_base("sampling")


class Wave(Base, table=True):
    """A wave (đợt đo lường): one national or provincial measurement in one year."""

    __tablename__ = "wave"
    __table_args__ = (UniqueConstraint("code", name="uq_wave_code"),)

    id: str = Field(default_factory=lambda: str(uuid.uuid4()), primary_key=True, max_length=36)
    code: str = Field(max_length=40)
    name: str = Field(max_length=200)
    scope: str = Field(max_length=20)
    province_code: str | None = Field(default=None, max_length=8)
    year: int
    methodology_version: str = Field(max_length=40)
    fieldwork_start: dt.date | None = None
    fieldwork_end: dt.date | None = None
    seed: int = Field(sa_column=Column(BigInteger, nullable=False))
    status: str = Field(default="draft", max_length=20)
    # Which administrative map the wave's frames are checked against (see admin_unit).
    unit_set: str = Field(default="vn-2025", max_length=40)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


# --------------------------------------------------------------------------------------------
# Administrative units, frames, contacts, designs and draws.
#
# Plain Core tables: frame records arrive by the million, so they are written with bulk
# ``executemany`` inserts rather than ORM objects, and their composite keys make the
# natural identity (wave, transaction id) the primary key — pushing a record twice is one row.

from sqlalchemy import Date, Float, Index, Integer, String, Table, Text

from shared.db import JSONType

metadata = Base.metadata

admin_unit = Table(
    "admin_unit",
    metadata,
    # A unit set is one version of the administrative map, e.g. "vn-2025" (34 provinces, 2 tiers)
    # or "vn-2008" (63 provinces, 3 tiers): units are data with validity dates, never an enum.
    Column("unit_set", String(40), primary_key=True),
    Column("level", String(20), primary_key=True),
    Column("code", String(10), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("parent_code", String(10), nullable=True),
    Column("province_code", String(10), nullable=False),
    Column("valid_from", Date, nullable=True),
    Column("valid_to", Date, nullable=True),
)

unit_crosswalk = Table(
    "unit_crosswalk",
    metadata,
    # old → new (e.g. a 2024 district-era commune → the 2025 commune it merged into), for trends.
    Column("from_set", String(40), primary_key=True),
    Column("from_level", String(20), primary_key=True),
    Column("from_code", String(10), primary_key=True),
    Column("to_set", String(40), primary_key=True),
    Column("to_level", String(20), primary_key=True),
    Column("to_code", String(10), primary_key=True),
    # Share of the old unit's population that went to the new one (None: whole or unknown).
    Column("share", Float, nullable=True),
)

frame = Table(
    "frame",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("status", String(10), nullable=False),
    Column("record_count", Integer, nullable=False),
    Column("fingerprint", String(64), nullable=True),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("closed_at", UTCDateTime(), nullable=True),
)

frame_batch = Table(
    "frame_batch",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    Column("province_code", String(10), primary_key=True),
    Column("batch_id", String(100), primary_key=True),
    Column("source", String(10), nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("report", JSONType, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

frame_record = Table(
    "frame_record",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    # Transaction id (transaction frames) or person id (resident frames), unique in the wave.
    Column("record_key", String(100), primary_key=True),
    Column("province_code", String(10), nullable=False),
    Column("commune_code", String(10), nullable=True),
    Column("village_code", String(40), nullable=True),
    Column("household_id", String(60), nullable=True),
    Column("procedure_code", String(60), nullable=True),
    Column("field", String(100), nullable=True),
    Column("level", String(20), nullable=True),
    Column("agency", String(200), nullable=True),
    Column("received_on", Date, nullable=True),
    Column("result_on", Date, nullable=True),
    Column("respondent_type", String(20), nullable=True),
    Index("ix_frame_record_province", "wave_id", "province_code"),
)

# Contacts apart from the frame record: only the contacts endpoint reads this table, so a draw,
# an export or a frame listing can never leak them by accident.
frame_contact = Table(
    "frame_contact",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    Column("record_key", String(100), primary_key=True),
    Column("full_name", String(200), nullable=True),
    Column("phone", String(40), nullable=True),
    Column("email", String(200), nullable=True),
    Column("address", Text, nullable=True),
)

design = Table(
    "design",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    Column("body", JSONType, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("updated_by", String(200), nullable=False),
)

draw = Table(
    "draw",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("wave_id", String(36), nullable=False),
    # 1, 2, … per wave; unique, so two concurrent draws of one wave cannot both succeed.
    Column("generation", Integer, nullable=False),
    Column("status", String(10), nullable=False),
    Column("sample_hash", String(64), nullable=False),
    Column("frame_fingerprint", String(64), nullable=False),
    Column("design", JSONType, nullable=False),
    Column("strata", JSONType, nullable=False),
    Column("n_sample", Integer, nullable=False),
    Column("n_reserve", Integer, nullable=False),
    Column("drawn_at", UTCDateTime(), nullable=False),
    Column("drawn_by", String(200), nullable=False),
    Column("voided_at", UTCDateTime(), nullable=True),
    Column("void_reason", Text, nullable=True),
    UniqueConstraint("wave_id", "generation", name="uq_draw_generation"),
)

sample_unit = Table(
    "sample_unit",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    Column("unit_id", String(36), primary_key=True),
    Column("draw_id", String(36), nullable=False),
    Column("record_key", String(100), nullable=False),
    Column("stratum", String(200), nullable=False),
    # Replacement group inside the stratum: "" for a stratified draw; commune and village for a
    # multi-stage one (a reserve replaces a unit of the same village).
    Column("psu", String(60), nullable=False),
    Column("ssu", String(60), nullable=False),
    Column("role", String(10), nullable=False),
    Column("position", Integer, nullable=False),
    Column("pi", Float, nullable=False),
    Column("weight", Float, nullable=False),
    Column("province_code", String(10), nullable=False),
    Column("commune_code", String(10), nullable=True),
    Column("level", String(20), nullable=True),
    Column("field", String(100), nullable=True),
    Column("procedure_code", String(60), nullable=True),
    Column("respondent_type", String(20), nullable=True),
    # selected | reserve (waiting) | released (reserve in use) | replaced | unreplaced
    Column("status", String(12), nullable=False),
    Column("reason", String(20), nullable=True),
    Column("replaced_by", String(36), nullable=True),
    Column("replaces", String(36), nullable=True),
    Column("changed_at", UTCDateTime(), nullable=True),
    Index("ix_sample_unit_group", "wave_id", "stratum", "psu", "ssu", "role", "position"),
    Index("ix_sample_unit_record", "wave_id", "record_key"),
)
