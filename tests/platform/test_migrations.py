"""Migrations: every service's Alembic branches build exactly the tables its models describe,
on the test's database, and go down and up again cleanly."""

from __future__ import annotations

import pytest

from services import app_module, settings_for
from shared import migrate
from shared.db import create_engine
from shared.settings import SERVICES
from tests.conftest import drop_backend


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_match_models_and_round_trip(platform, service):
    spec = app_module(service).SPEC
    settings = settings_for(service, platform=platform)
    engine = create_engine(settings.effective_database_url, schema=settings.db_schema)
    try:
        await migrate.upgrade(engine, service, spec.migrations, settings.db_schema)
        assert await migrate.pending_differences(engine, service, spec.metadata) == []
        await migrate.downgrade(engine, service, spec.migrations)
        remaining = await migrate.pending_differences(engine, service, spec.metadata)
        assert {d[1].name for d in remaining if d[0] == "add_table"} == set(spec.tables)
        await migrate.upgrade(engine, service, spec.migrations, settings.db_schema)
        assert await migrate.pending_differences(engine, service, spec.metadata) == []
        # Idempotent: running it again changes nothing.
        await migrate.upgrade(engine, service, spec.migrations, settings.db_schema)
    finally:
        await engine.dispose()
        await drop_backend(platform)


async def test_each_service_has_its_own_version_table(platform):
    from sqlalchemy import inspect

    settings = settings_for("survey", platform=platform)
    engine = create_engine(settings.effective_database_url, schema=settings.db_schema)
    try:
        await migrate.upgrade(engine, "survey", app_module("survey").SPEC.migrations, settings.db_schema)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert "alembic_version_survey" in names
        assert not any(n.startswith("alembic_version_") and n != "alembic_version_survey" for n in names)
    finally:
        await engine.dispose()
        await drop_backend(platform)
