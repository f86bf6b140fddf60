"""Issuing and revoking API keys, in every service's database at once."""

from __future__ import annotations

from sqlalchemy import select

from services import app_module, settings_for
from shared.auth import IssuedKey, Role, new_key, revoke_key, store_key
from shared.db import create_engine, session_factory, transaction
from shared.settings import SERVICES, PlatformSettings


async def _each_service(platform: PlatformSettings, fn) -> list:
    results = []
    for name in SERVICES:
        settings = settings_for(name, platform=platform)
        engine = create_engine(settings.effective_database_url, schema=settings.db_schema)
        try:
            async with transaction(session_factory(engine)) as session:
                results.append(await fn(session, app_module(name).SPEC.tables["api_key"]))
        finally:
            await engine.dispose()
    return results


async def issue(platform: PlatformSettings, role: Role, label: str, province_code: str | None = None) -> IssuedKey:
    issued = new_key(role, label, province_code)
    await _each_service(platform, lambda session, table: store_key(session, table, issued))
    return issued


async def issue_many(platform: PlatformSettings, wanted: list[tuple[Role, str, str | None]]) -> list[IssuedKey]:
    """Several keys at once (one connection per service database): (role, label, province)."""
    issued = [new_key(role, label, province) for role, label, province in wanted]

    async def store(session, table):
        for key in issued:
            await store_key(session, table, key)

    await _each_service(platform, store)
    return issued


async def revoke(platform: PlatformSettings, prefix: str) -> bool:
    return any(await _each_service(platform, lambda session, table: revoke_key(session, table, prefix)))


async def list_keys(platform: PlatformSettings) -> list[dict]:
    async def rows(session, table):
        result = await session.execute(
            select(table.c.prefix, table.c.role, table.c.province_code, table.c.label, table.c.created_at, table.c.revoked_at)
        )
        return [dict(r) for r in result.mappings()]

    return (await _each_service(platform, rows))[0]


async def has_ministry_key(platform: PlatformSettings) -> bool:
    async def check(session, table):
        return await session.scalar(
            select(table.c.id).where(table.c.role == Role.ministry.value, table.c.revoked_at.is_(None)).limit(1)
        )

    return all(await _each_service(platform, check))
