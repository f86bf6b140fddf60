"""``forms.overlapped``: a statement runs on the database while Python builds what comes next
(the bulk paths of a Vietnam Post push). Whatever happens on either side, the caller sees the
statement's error or ``work``'s, and the session is idle afterwards."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select, text

from services.survey import forms as F
from services.survey.models import form_history
from shared.db import utcnow

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _history(form_id: str) -> dict:
    return {"form_id": form_id, "from_status": None, "to_status": "assigned", "actor": "test", "reason": None, "at": utcnow()}


async def _count(session, form_id: str) -> int:
    return await session.scalar(select(func.count()).select_from(form_history).where(form_history.c.form_id == form_id))


async def test_work_runs_and_the_statement_takes_effect(stack):
    calls = []
    async with stack.apps["survey"].state.sessions() as session, session.begin():
        _, out = await F.overlapped(session.execute(form_history.insert(), [_history("overlap-1")] * 3),
                                 lambda: calls.append("work") or "built")
        assert out == "built" and calls == ["work"]
        assert await _count(session, "overlap-1") == 3


async def test_a_failing_statement_raises_from_overlapped(stack):
    async with stack.apps["survey"].state.sessions() as session:
        with pytest.raises(Exception, match="no_such_table"):
            async with session.begin():
                await F.overlapped(session.execute(text("INSERT INTO no_such_table VALUES (1)")), lambda: None)


async def test_a_failing_work_waits_for_the_statement_and_leaves_the_session_usable(stack):
    async with stack.apps["survey"].state.sessions() as session, session.begin():
        with pytest.raises(ZeroDivisionError):
            await F.overlapped(session.execute(form_history.insert(), [_history("overlap-2")]), lambda: 1 / 0)
        # No "another operation is in progress" (or a hang, on asyncpg): the statement finished
        # before the error left.
        assert await asyncio.wait_for(_count(session, "overlap-2"), 10) == 1


@pytest.mark.services
async def test_copy_records_belongs_to_the_transaction(stack):
    """The responses of a push are COPYed on PostgreSQL: the COPY must commit or roll back with
    the rest of the push, and is refused where it would commit on its own."""
    from services.survey.models import form_history as h

    columns = ("form_id", "from_status", "to_status", "actor", "reason", "at")
    record = ("copy-1", None, "assigned", "test", None, utcnow())
    sessions = stack.apps["survey"].state.sessions
    async with sessions() as session:
        with pytest.raises(RuntimeError, match="transaction"):
            await F.copy_records(session, h.name, columns, [record])
    async with sessions() as session:
        await session.begin()
        await session.execute(text("SELECT 1"))
        await F.copy_records(session, h.name, columns, [record, record])
        assert await _count(session, "copy-1") == 2
        await session.rollback()
    async with sessions() as session:
        assert await _count(session, "copy-1") == 0
    async with sessions() as session, session.begin():
        await session.execute(text("SELECT 1"))
        await F.copy_records(session, h.name, columns, [record])
    async with sessions() as session:
        assert await _count(session, "copy-1") == 1


@pytest.mark.services
async def test_a_copy_refused_by_the_server_is_a_database_error_like_a_statements(stack):
    """So the service's handler classifies it (transient: 503) instead of a bare 500."""
    from sqlalchemy.exc import DBAPIError

    from services.survey.models import form_history as h

    async with stack.apps["survey"].state.sessions() as session:
        with pytest.raises(DBAPIError) as refused:
            async with session.begin():
                await session.execute(text("SELECT 1"))
                await F.copy_records(session, h.name, ("form_id", "to_status", "actor", "at"),
                                     [("copy-2", None, "test", utcnow())])  # to_status is NOT NULL
        assert refused.value.orig.sqlstate == "23502"
