"""The publication service: approved, versioned releases and the public index API for the CCHC portal, provincial portals and dashboards (công bố)."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from services.publication import api, page, public_api
from services.publication.consumers import CONSUMERS
from services.publication.models import Base
from services.publication.public_api import RateLimiter
from services.publication.settings import PublicationSettings
from services.publication.webhooks import Scheduler
from shared.bus import EventBus
from shared.db import utcnow
from shared.errors import PayloadTooLarge, problem_response
from shared.service import ServiceSpec, build_app
from shared.waves import wave_replica_router


async def _start(app: FastAPI) -> None:
    # Subscribers are outside the platform: a plain client, no peer credentials, no redirects
    # (a redirect could lead the signed POST somewhere the URL check never saw).
    app.state.webhook_client = httpx.AsyncClient(follow_redirects=False)
    app.state.scheduler = Scheduler(app)
    app.state.scheduler.start()


async def _stop(app: FastAPI) -> None:
    await app.state.scheduler.stop()
    await app.state.webhook_client.aclose()


SPEC = ServiceSpec(
    name="publication",
    title="SIPAS publication service",
    description=(
        "Approved, versioned releases and the public index API for the CCHC portal, provincial portals and "
        "dashboards (công bố). The `public` operations need no key; every other operation does."
    ),
    metadata=Base.metadata,
    migrations=Path(__file__).parent / "migrations" / "versions",
    routers=[wave_replica_router(), api.router, api.hooks, public_api.router, page.router],
    consumers=CONSUMERS,
    on_startup=[_start],
    on_shutdown=[_stop],
)


class RequestSizeLimit:
    """Refuse request bodies over ``max_request_bytes`` with 413 before reading them (declared
    length), and stop reading a chunked body once it passes the limit."""

    def __init__(self, app, settings: PublicationSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.settings.tuning.max_request_bytes
        too_large = PayloadTooLarge(f"Request bodies are limited to {limit} bytes.")
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    await problem_response(too_large)(scope, receive, send)
                    return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large
            return message

        await self.app(scope, limited_receive, send)


def create_app(settings: PublicationSettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    settings = settings or PublicationSettings()
    app = build_app(SPEC, settings, bus=bus)
    app.state.clock = utcnow  # replaceable in tests, to check an embargo to the second
    app.state.rate_limiter = RateLimiter()
    app.add_middleware(RequestSizeLimit, settings=settings)
    return app
