"""The publication service: approved, versioned releases and the public index API for the CCHC portal, provincial portals and dashboards (công bố)."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from services.publication import api, page, public_api
from services.publication.consumers import CONSUMERS
from services.publication.models import Base
from services.publication.public import PublicCache
from services.publication.public_api import RateLimiter, StoredBodyFastPath
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
    """Refuse request bodies over ``max_request_bytes`` with 413: at once when the declared
    length is over; a body without a declared length (chunked) is read up to the limit first
    (bodies here are small) and refused as soon as it passes it."""

    def __init__(self, app, settings: PublicationSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_request_bytes
        declared = None
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else None
        if declared is not None:
            if declared > limit:
                await _too_large(limit)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > limit:
                await _too_large(limit)(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(limit: int):
    return problem_response(PayloadTooLarge(f"Request bodies are limited to {limit} bytes."))


def create_app(settings: PublicationSettings | None = None, *, bus: EventBus | None = None) -> FastAPI:
    settings = settings or PublicationSettings()
    app = build_app(SPEC, settings, bus=bus)
    app.state.clock = utcnow  # replaceable in tests, to check an embargo to the second
    app.state.rate_limiter = RateLimiter()
    app.state.public_cache = PublicCache()
    app.add_middleware(RequestSizeLimit, settings=settings)
    # Outside the whole middleware stack (see StoredBodyFastPath): built with it, on first use.
    build_stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: StoredBodyFastPath(build_stack(), app, SPEC.name)
    _anonymous_public_operations(app)
    return app


def _anonymous_public_operations(app: FastAPI) -> None:
    """Declare the public operations' key as optional (``security: [{}, {APIKeyHeader: []}]``):
    anyone may call them; a key only lifts the anonymous rate limit. Generated clients then
    need no credentials for them."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = build()
            for path, operations in doc["paths"].items():
                if path.startswith("/v1/public/"):
                    for operation in operations.values():
                        operation["security"] = [{}, {"APIKeyHeader": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
