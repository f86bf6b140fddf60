"""The verification service: screening rules, review, back-checks (phúc tra) and entry verification; only accepted forms reach the indices (kiểm phiếu, lọc phiếu)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.verification.consumers import CONSUMERS
from services.verification.models import Base
from services.verification.settings import VerificationSettings
from shared.bus import EventBus
from shared.service import ServiceSpec, build_app
from shared.waves import wave_replica_router

SPEC = ServiceSpec(
    name="verification",
    title="SIPAS verification service",
    description="Screening rules, review, back-checks (phúc tra) and entry verification; only accepted forms reach the indices (kiểm phiếu, lọc phiếu).",
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations" / "versions",
    routers=[wave_replica_router()],
    consumers=CONSUMERS,
)


def create_app(settings: VerificationSettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    return build_app(SPEC, settings or VerificationSettings(), bus=bus)
