"""Database: one async engine per service, SQLite (aiosqlite) or PostgreSQL (asyncpg).

Each service owns its data: an SQLite file in embedded mode, its own PostgreSQL schema in
production (``search_path`` is set on every connection, so tables are written unqualified and
the same models and migrations serve both). Nothing here knows any service's tables.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import JSON, DateTime, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import registry
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on both backends.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zone, so values are stored as naive UTC
    and given back their UTC zone on the way out. Naive datetimes are refused on the way in:
    a naive value is a bug (whose local time?), not something to guess about.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


# JSON everywhere, JSONB on PostgreSQL (indexable, compact).
JSONType = JSON().with_variant(JSONB(), "postgresql")


def service_base(name: str) -> type[SQLModel]:
    """A SQLModel base with its own metadata, so five services can define tables in one process
    (each has, for instance, its own ``wave`` table) without clashing in one MetaData."""
    return type(f"{name.capitalize()}Base", (SQLModel,), {}, registry=registry())


def _json_dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def json_loads(value: str | bytes) -> Any:
    """JSON columns are read with orjson, 1.6 times as fast as json on the outbox's 10,000-event
    groups, which the relay reads whole. What orjson refuses and json accepts (``NaN``, which
    ``_json_dumps`` may have written into SQLite) is read by json."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return json.loads(value)


def create_engine(url: str, *, schema: str | None = None, echo: bool = False) -> AsyncEngine:
    """Create the engine for one service.

    SQLite gets WAL (readers never block the writer), foreign keys (off by default in SQLite)
    and a busy timeout (a second writer waits instead of failing at once). PostgreSQL gets the
    service's schema on its ``search_path``.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo, json_serializer=_json_dumps, json_deserializer=json_loads)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    connect_args: dict[str, Any] = {}
    if schema:
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(
        url, echo=echo, json_serializer=_json_dumps, json_deserializer=json_loads, connect_args=connect_args, pool_pre_ping=True
    )


def insert_for(session: AsyncSession | str, table: Any):
    """The backend's own INSERT construct (for ``ON CONFLICT``, which both backends have but the
    generic ``insert`` does not expose). Takes a session or a dialect name (for statements
    built once per dialect and cached)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session if isinstance(session, str) else (session.bind.dialect.name if session.bind else "sqlite")
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


async def ensure_schema(engine: AsyncEngine, schema: str) -> None:
    """Create the service's PostgreSQL schema if missing (a no-op on SQLite)."""
    if not is_postgres(engine):
        return
    from sqlalchemy import text

    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after commit, for building responses.
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on any error."""
    async with sessions() as session, session.begin():
        yield session


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def new_id_strings(n: int) -> list[str]:
    """``n`` random (version 4) UUIDs as strings, from one ``os.urandom`` call.

    The bulk paths (a 5,000-form batch names 15,000 rows and events) spent a tenth of their time
    in ``str(uuid.uuid4())``: a system call, a ``UUID`` object and its formatting per id. Same
    randomness source and the same format, without the per-id object."""
    raw = bytearray(os.urandom(16 * n))
    out = []
    for i in range(0, 16 * n, 16):
        raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
        raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw[i:i + 16].hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out
