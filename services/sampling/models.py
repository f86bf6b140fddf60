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
    created_at: dt.datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
