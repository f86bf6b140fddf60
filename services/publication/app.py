"""The publication service: approved, versioned releases and the public index API for the CCHC portal, provincial portals and dashboards (công bố)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.publication.consumers import CONSUMERS
from services.publication.models import Base
from services.publication.settings import PublicationSettings
from shared.bus import EventBus
from shared.service import ServiceSpec, build_app
from shared.waves import wave_replica_router

SPEC = ServiceSpec(
    name="publication",
    title="SIPAS publication service",
    description="Approved, versioned releases and the public index API for the CCHC portal, provincial portals and dashboards (công bố).",
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations" / "versions",
    routers=[wave_replica_router()],
    consumers=CONSUMERS,
)


def create_app(settings: PublicationSettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    return build_app(SPEC, settings or PublicationSettings(), bus=bus)
