"""The sampling service (chọn mẫu): administrative units, waves, frames, designs, draws, reserves."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.sampling.api import ROUTERS
from services.sampling.consumers import CONSUMERS
from services.sampling.models import Base
from services.sampling.settings import SamplingSettings
from services.sampling.units import seed_current
from shared.bus import EventBus
from shared.service import ServiceSpec, build_app

SPEC = ServiceSpec(
    name="sampling",
    title="SIPAS sampling service",
    description="Waves, administrative units, sampling frames pushed by provincial portals, stratified and multi-stage "
    "designs, seeded reproducible draws with reserve lists, replacements and contacts (chọn mẫu, danh sách dự phòng).",
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations" / "versions",
    routers=ROUTERS,
    consumers=CONSUMERS,
    on_startup=[seed_current],
)


def create_app(settings: SamplingSettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    return build_app(SPEC, settings or SamplingSettings(), bus=bus)
