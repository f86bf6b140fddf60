"""The indexing service: item, element, part and SIPAS indices with design-based standard errors, rankings and reproducible runs."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.indexing.api import router
from services.indexing.consumers import CONSUMERS
from services.indexing.models import Base
from services.indexing.settings import IndexingSettings
from shared.bus import EventBus
from shared.service import ServiceSpec, build_app
from shared.waves import wave_replica_router

SPEC = ServiceSpec(
    name="indexing",
    title="SIPAS indexing service",
    description="Item, element, part and SIPAS indices with design-based standard errors, rankings and reproducible runs.",
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations" / "versions",
    routers=[wave_replica_router(), router],
    consumers=CONSUMERS,
)


def create_app(settings: IndexingSettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    return build_app(SPEC, settings or IndexingSettings(), bus=bus)
