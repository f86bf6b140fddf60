"""The verification service: screening rules, review, back-checks (phúc tra) and entry verification; only accepted forms reach the indices (kiểm phiếu, lọc phiếu)."""

from __future__ import annotations

import copy
from pathlib import Path

from fastapi import FastAPI

from services.verification.api import ROUTERS
from services.verification.consumers import CONSUMERS, make_consumers
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
    routers=[wave_replica_router(), *ROUTERS],
    consumers=CONSUMERS,
)


def create_app(settings: VerificationSettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    # Screening a response needs the wave's methodology, read from survey through this app's
    # peers: the consumers are bound to this app (a shallow copy of SPEC, same queues).
    bound: dict[str, FastAPI] = {}
    spec = copy.copy(SPEC)
    spec.consumers = make_consumers(lambda: bound.get("app"))
    app = build_app(spec, settings or VerificationSettings(), bus=bus)
    bound["app"] = app
    return app
