"""Each downstream service's own copy of the waves it works on.

Sampling owns waves; survey, verification, indexing and publication keep a replica fed by
``sipas.sampling.wave.#`` events (they never read sampling's tables). Events carry the whole wave
state, so the replica simply takes the newest: an event older than what is stored (redelivered
out of order) is ignored. This module is the one place that replica logic lives.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import Column, Date, Integer, MetaData, String, Table, func, select

from shared.auth import Principal, current_principal, ensure_province_visible, SCOPED_ROLES
from shared.contracts.sampling import WaveScope, WaveStatus
from shared.db import UTCDateTime, insert_for
from shared.events import Envelope
from shared.errors import NotFound

WAVE_EVENTS = ["sipas.sampling.wave.#"]


def add_wave_replica(metadata: MetaData) -> Table:
    return Table(
        "wave",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("code", String(40), nullable=False),
        Column("name", String(200), nullable=False),
        Column("scope", String(20), nullable=False),
        Column("province_code", String(8), nullable=True),
        Column("year", Integer, nullable=False),
        Column("methodology_version", String(40), nullable=False),
        Column("fieldwork_start", Date, nullable=True),
        Column("fieldwork_end", Date, nullable=True),
        Column("status", String(20), nullable=False),
        Column("source_time", UTCDateTime(), nullable=False),
        Column("received_at", UTCDateTime(), nullable=False),
    )


def wave_replica_effect(table: Table):
    """Consumer effect: upsert the wave if the event is newer than what we hold."""

    async def effect(session, payload, envelope: Envelope) -> None:
        values = payload.model_dump(exclude={"wave_id"})
        values.update(id=str(payload.wave_id), source_time=envelope.time, received_at=dt.datetime.now(dt.UTC))
        stmt = insert_for(session, table).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={k: stmt.excluded[k] for k in values if k != "id"},
            where=table.c.source_time <= stmt.excluded.source_time,
        )
        await session.execute(stmt)

    return effect


class WaveReplica(BaseModel):
    """What this service knows of a wave (from sampling's events)."""

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
    source_time: dt.datetime
    received_at: dt.datetime


class WaveReplicaPage(BaseModel):
    items: list[WaveReplica]
    total: int


def wave_replica_router(table_name: str = "wave") -> APIRouter:
    router = APIRouter(prefix="/v1/waves", tags=["waves"])

    @router.get("", response_model=WaveReplicaPage, summary="Waves this service has heard of")
    async def list_waves(
        request: Request,
        principal: Annotated[Principal, Depends(current_principal)],
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> WaveReplicaPage:
        table = request.app.state.tables[table_name]
        query = select(table)
        if principal.role in SCOPED_ROLES:
            query = query.where((table.c.province_code.is_(None)) | (table.c.province_code == principal.province_code))
        async with request.app.state.sessions() as session:
            total = await session.scalar(select(func.count()).select_from(query.subquery()))
            rows = (await session.execute(query.order_by(table.c.year.desc(), table.c.code).limit(limit).offset(offset))).mappings()
            return WaveReplicaPage(items=[WaveReplica(**r) for r in rows], total=total or 0)

    @router.get("/{wave_id}", response_model=WaveReplica, summary="One wave, as this service knows it")
    async def get_wave(
        wave_id: str, request: Request, principal: Annotated[Principal, Depends(current_principal)]
    ) -> WaveReplica:
        table = request.app.state.tables[table_name]
        async with request.app.state.sessions() as session:
            row = (await session.execute(select(table).where(table.c.id == wave_id))).mappings().first()
        if row is None:
            raise NotFound(f"No wave {wave_id} here (yet).")
        ensure_province_visible(principal, row["province_code"], "wave")
        return WaveReplica(**row)

    return router


def create_wave_replica_v1(op) -> None:
    """Migration step shared by the four replicas' first revisions. Frozen: to change the
    replica, add a revision in each service instead of editing this."""
    import sqlalchemy as sa

    op.create_table(
        "wave",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("code", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=True),
        sa.Column("year", sa.Integer, nullable=False),
        sa.Column("methodology_version", sa.String(40), nullable=False),
        sa.Column("fieldwork_start", sa.Date, nullable=True),
        sa.Column("fieldwork_end", sa.Date, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("source_time", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
