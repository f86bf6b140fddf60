"""The survey service: methodology versions, forms and assignments, the Vietnam Post integration, the online channel and double data entry (phát, thu phiếu, nhập dữ liệu)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.survey.api import ROUTERS
from services.survey.consumers import CONSUMERS
from services.survey.models import Base
from services.survey.online import RateLimiter
from services.survey.progress import ProgressOnScrape
from services.survey.settings import SurveySettings
from services.survey.vnpost import BatchBodyLimit
from shared.bus import EventBus
from shared.service import ServiceSpec, build_app
from shared.waves import wave_replica_router


async def _online_limiter(app: FastAPI) -> None:
    # Per-app state (no module globals): every app in one process has its own buckets.
    app.state.online_limiter = RateLimiter()


SPEC = ServiceSpec(
    name="survey",
    title="SIPAS survey service",
    description="Methodology versions, forms and assignments, the Vietnam Post integration, the online channel and double data entry (phát, thu phiếu, nhập dữ liệu).",
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations" / "versions",
    routers=[wave_replica_router(), *ROUTERS],
    consumers=CONSUMERS,
    on_startup=[_online_limiter],
)


def create_app(settings: SurveySettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    app = build_app(SPEC, settings or SurveySettings(), bus=bus)
    app.add_middleware(ProgressOnScrape)
    app.add_middleware(BatchBodyLimit)
    return app
