"""The survey service: methodology versions, forms and assignments, the Vietnam Post integration, the online channel and double data entry (phát, thu phiếu, nhập dữ liệu)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.survey.consumers import CONSUMERS
from services.survey.models import Base
from services.survey.settings import SurveySettings
from shared.bus import EventBus
from shared.service import ServiceSpec, build_app
from shared.waves import wave_replica_router

SPEC = ServiceSpec(
    name="survey",
    title="SIPAS survey service",
    description="Methodology versions, forms and assignments, the Vietnam Post integration, the online channel and double data entry (phát, thu phiếu, nhập dữ liệu).",
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations" / "versions",
    routers=[wave_replica_router()],
    consumers=CONSUMERS,
)


def create_app(settings: SurveySettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    return build_app(SPEC, settings or SurveySettings(), bus=bus)
