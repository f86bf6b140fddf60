"""Audit log: every state change, with who, when, what and why (readable by ministry, observers)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.auth import Principal
from shared.db import utcnow
from shared.observability import current_correlation_id


async def record(
    session: AsyncSession,
    table: Table,
    principal: Principal | None,
    action: str,
    entity: str,
    entity_id: str,
    *,
    wave_id: str | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Write an audit entry in the caller's transaction (no change without its entry).

    The row goes as parameters of a plain ``INSERT`` (compiled once and cached), not through
    ``.values(...)``, which builds a new statement per call: consumers write one per event."""
    await session.execute(
        table.insert(),
        {
            "at": utcnow(),
            "actor": principal.actor if principal else "system",
            "role": principal.role.value if principal else "system",
            "action": action,
            "entity": entity,
            "entity_id": entity_id,
            "wave_id": wave_id,
            "reason": reason,
            "details": details,
            "correlation_id": current_correlation_id(),
        },
    )


async def entries(session: AsyncSession, table: Table, *, wave_id: str, after: int = 0, limit: int = 100) -> list[dict]:
    rows = await session.execute(
        select(table).where(table.c.wave_id == wave_id, table.c.seq > after).order_by(table.c.seq).limit(limit)
    )
    return [dict(r) for r in rows.mappings()]
