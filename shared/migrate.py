"""Apply a service's migrations (platform branch + its own) to its database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import ensure_schema

PLATFORM_VERSIONS = Path(__file__).parent / "migrations" / "versions"


def alembic_config(service: str, versions: Path, metadata: MetaData | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", f"{PLATFORM_VERSIONS}:{versions}")
    cfg.attributes["version_table"] = f"alembic_version_{service}"
    cfg.attributes["target_metadata"] = metadata
    return cfg


async def upgrade(engine: AsyncEngine, service: str, versions: Path, schema: str, revision: str = "heads") -> None:
    await ensure_schema(engine, schema)
    cfg = alembic_config(service, versions)

    def run(sync_conn) -> None:
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def downgrade(engine: AsyncEngine, service: str, versions: Path, revision: str = "base") -> None:
    cfg = alembic_config(service, versions)

    def run(sync_conn) -> None:
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def pending_differences(engine: AsyncEngine, service: str, metadata: MetaData) -> list:
    """What the models have that the migrated database does not (empty when in sync)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def run(sync_conn) -> list:
        ctx = MigrationContext.configure(
            sync_conn,
            opts={"compare_type": True, "version_table": f"alembic_version_{service}"},
        )
        return compare_metadata(ctx, metadata)

    async with engine.connect() as conn:
        return await conn.run_sync(run)
