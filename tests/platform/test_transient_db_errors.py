"""A database that says "try again" (SQLite's lock timeout, a PostgreSQL deadlock) is a 503
problem with Retry-After, never a 500: the unit of work was rolled back, so the client's retry is
safe. Both cases are produced for real, on a real SQLite file and on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import create_engine
from shared.errors import install_error_handlers
from tests.conftest import DATABASE_URL


def _app(route) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_api_route("/write", route, methods=["POST"])
    return app


async def _post(app: FastAPI) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://t") as client:
        return await client.post("/write")


async def test_sqlite_lock_timeout_is_a_503_with_retry_after(tmp_path):
    path = tmp_path / "locked.db"
    holder = create_engine(f"sqlite+aiosqlite:///{path}")
    # The services wait 30 s for a lock (busy_timeout); this writer gives up after 50 ms, as one
    # would after 30 s behind a long batch transaction.
    writer = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        async with holder.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))

        async def write():
            async with writer.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (2)"))
            return {"ok": True}

        async with holder.connect() as conn:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")  # holds the write lock
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            r = await _post(_app(write))
            await conn.rollback()
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.headers["Retry-After"] == "1" and r.json()["reason"] == "database_busy"
        # Once the lock is gone, the same request goes through.
        assert (await _post(_app(write))).status_code == 200
    finally:
        await holder.dispose()
        await writer.dispose()


async def test_an_error_that_is_not_transient_is_still_a_500(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")

    async def broken():
        async with engine.begin() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))

    try:
        r = await _post(_app(broken))
        assert r.status_code == 500 and r.json()["type"].endswith("internal-error")
    finally:
        await engine.dispose()


@pytest.mark.services
async def test_postgresql_deadlock_is_a_503_with_retry_after():
    schema = f"deadlock_{uuid.uuid4().hex[:8]}"
    engine = create_engine(DATABASE_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            await conn.execute(text(f'CREATE TABLE "{schema}".t (id INT PRIMARY KEY, v INT)'))
            await conn.execute(text(f'INSERT INTO "{schema}".t VALUES (1, 0), (2, 0)'))
        both_locked_first = asyncio.Barrier(2)

        def route(first: int, second: int):
            async def write():
                async with engine.begin() as conn:
                    await conn.execute(text(f'UPDATE "{schema}".t SET v = v + 1 WHERE id = {first}'))
                    await both_locked_first.wait()
                    await conn.execute(text(f'UPDATE "{schema}".t SET v = v + 1 WHERE id = {second}'))
                return {"ok": True}

            return write

        # Two requests lock the same two rows in opposite orders: PostgreSQL kills one of them.
        a, b = await asyncio.gather(_post(_app(route(1, 2))), _post(_app(route(2, 1))))
        assert sorted([a.status_code, b.status_code]) == [200, 503], (a.text, b.text)
        lost = a if a.status_code == 503 else b
        assert lost.headers["Retry-After"] == "1" and lost.json()["reason"] == "database_busy"
        async with engine.connect() as conn:
            # The loser's first update was rolled back with it: only the winner's two updates stay.
            assert (await conn.scalar(text(f'SELECT sum(v) FROM "{schema}".t'))) == 2
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()


async def test_no_free_pooled_connection_is_a_503(tmp_path):
    """A service whose pool stays busy (its consumers hold every connection) answers 503, not 500."""
    from sqlalchemy.pool import AsyncAdaptedQueuePool

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", poolclass=AsyncAdaptedQueuePool,
                                 pool_size=1, max_overflow=0, pool_timeout=0.05)

    async def read():
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return {"ok": True}

    try:
        async with engine.connect() as held:  # the only connection
            await held.execute(text("SELECT 1"))
            r = await _post(_app(read))
        assert r.status_code == 503 and r.json()["reason"] == "database_busy", r.text
        assert (await _post(_app(read))).status_code == 200
    finally:
        await engine.dispose()
