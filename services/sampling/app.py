"""The sampling service (chọn mẫu): administrative units, waves, frames, designs, draws, reserves."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.sampling.api import router
from services.sampling.models import Base
from services.sampling.settings import SamplingSettings
from shared.bus import EventBus
from shared.service import ServiceSpec, build_app

SPEC = ServiceSpec(
    name="sampling",
    title="SIPAS sampling service",
    description="Waves, sampling frames pushed by provincial portals, stratified and multi-stage designs, "
    "seeded reproducible draws with reserve lists (chọn mẫu, danh sách dự phòng).",
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations" / "versions",
    routers=[router],
)


def create_app(settings: SamplingSettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    return build_app(SPEC, settings or SamplingSettings(), bus=bus)
