"""The common anatomy of a SIPAS service.

Every service declares a ``ServiceSpec`` (its tables, routers, consumers, migrations) and builds
its app with ``build_app(spec, settings, bus=...)``. Everything that is the same in five services
lives here once: the lifespan (engine, migrations, outbox relay, consumers), problem+json errors,
correlation ids, metrics, ``/healthz``, ``/readyz`` and ``/metrics``.

No module globals hold state: the engine, session factory, bus and relay live on ``app.state``,
so five apps share one process (embedded mode) and tests build as many apps as they like.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import getrandbits
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from sqlalchemy import MetaData, Table, text
from sqlalchemy.ext.asyncio import AsyncSession

from shared import migrate
from shared.bus import EventBus, Subscription, create_bus
from shared.db import create_engine, session_factory
from shared.errors import PROBLEM_MEDIA_TYPE, Unavailable, install_error_handlers, problem_response, problem_responses
from shared.events import Envelope
from shared.observability import (
    CONSUMER_LAG,
    CORRELATION_HEADER,
    HTTP_LATENCY,
    HTTP_REQUESTS,
    reset_correlation_id,
    reset_service,
    set_correlation_id,
    set_service,
)
from shared.peers import build_peers
from shared.outbox import OutboxRelay, idempotent_batch_handler, idempotent_handler, install_commit_hooks
from shared.settings import ServiceSettings
from shared.tables import add_platform_tables

log = logging.getLogger("sipas.service")

GC_THRESHOLDS = (10_000, 50, 100)

Effect = Callable[[AsyncSession, Any, Envelope], Awaitable[None]]


@dataclass
class Consumer:
    """A durable subscription: ``name`` makes the queue ``<prefix>.<service>.<name>``."""

    name: str
    patterns: list[str]
    effect: Effect
    # Optional: the effect of several new events at once, ``(session, [(payload, envelope)])``,
    # for consumers whose work sums well over a batch (indexing's provisional sums). Without
    # it a batch runs ``effect`` per event; a failed batch always falls back to ``effect``.
    batch_effect: Callable[[AsyncSession, list[tuple[Any, Envelope]]], Awaitable[None]] | None = None


@dataclass
class ServiceSpec:
    name: str
    title: str
    description: str
    metadata: MetaData
    migrations: Path
    routers: list[APIRouter] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    version: str = "0.1.0"
    # Extra start/stop work of a service (e.g. seeding reference data), run after migrations.
    on_startup: list[Callable[[FastAPI], Awaitable[None]]] = field(default_factory=list)
    # Their counterpart (e.g. stopping a background task), run before the relay and engine stop.
    on_shutdown: list[Callable[[FastAPI], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        add_platform_tables(self.metadata)
        self.tables: dict[str, Table] = dict(self.metadata.tables)


def queue_name(settings: ServiceSettings, consumer: str) -> str:
    return f"{settings.platform.queue_prefix}.{settings.service}.{consumer}"


# The platform's metrics are Prometheus (``/metrics``); it configures no OpenTelemetry. FastAPI
# versions with native telemetry otherwise ask the global OpenTelemetry providers on every
# request whether one was configured since, which costs a cheap endpoint a fifth of its time.
_NO_NATIVE_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def build_app(spec: ServiceSpec, settings: ServiceSettings, *, bus: EventBus | None = None) -> FastAPI:
    """Build the FastAPI app of one service.

    ``bus``: pass the shared in-process bus in embedded mode (the caller starts and closes it);
    leave it out and the app creates, starts and closes its own from ``settings``.
    """
    owns_bus = bus is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Tasks started here (consumers, relay) keep the service in their log context; the
        # caller's context gets it back (five apps share one process in embedded mode).
        service_token = set_service(spec.name)
        engine = create_engine(settings.effective_database_url, schema=settings.db_schema)
        if settings.migrate_on_start:
            await migrate.upgrade(engine, spec.name, spec.migrations, settings.db_schema)
        sessions = session_factory(engine)
        the_bus = bus or create_bus(
            settings.platform.bus_url,
            exchange=settings.platform.exchange,
            prefetch=settings.platform.consumer_prefetch,
            max_attempts=settings.platform.consumer_max_attempts,
            retry_base_seconds=settings.platform.consumer_retry_base_seconds,
            service=spec.name,
        )
        if owns_bus:
            await the_bus.start()
        relay = OutboxRelay(
            sessions, spec.tables["outbox"], the_bus, service=spec.name, poll_seconds=settings.platform.outbox_poll_seconds,
            retention_days=settings.platform.outbox_retention_days,
        )
        install_commit_hooks(sessions, relay)
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = sessions
        app.state.tables = spec.tables
        app.state.bus = the_bus
        app.state.relay = relay
        app.state.queues = [queue_name(settings, c.name) for c in spec.consumers]
        app.state.peers = build_peers(settings.platform)
        for hook in spec.on_startup:
            await hook(app)
        for consumer in spec.consumers:
            inbox = spec.tables["inbox"]
            await the_bus.subscribe(
                Subscription(
                    queue_name(settings, consumer.name),
                    consumer.patterns,
                    idempotent_handler(sessions, inbox, consumer.name, consumer.effect),
                    service=spec.name,
                    batch_handler=idempotent_batch_handler(
                        sessions, inbox, consumer.name, consumer.effect, consumer.batch_effect
                    ),
                )
            )
        relay.start()
        # Everything built so far (app, routes, pydantic and SQLAlchemy metadata, the driver)
        # lives as long as the process: move it out of the cyclic GC's reach, so a full
        # collection scans only what requests allocate. Without this, every gen-2 pass walked
        # the whole startup heap — tens of milliseconds on a request path (publication's p99).
        gc.collect()
        gc.freeze()
        # Young collections every 10,000 net allocations instead of 700, older ones 50 and 100
        # times rarer (defaults 10, 10). A 5,000-form Vietnam Post push allocates millions of
        # short-lived objects, nearly all freed by reference counting, and with the defaults the
        # collector ran often enough to take 15% of the push (0.86 s against 0.72 s a batch).
        # Cycles are still collected, just in larger, rarer passes; the process-wide setting is
        # the same for every service, so it is set here, once per start.
        gc.set_threshold(*GC_THRESHOLDS)
        log.info("%s service started on %s", spec.name, engine.dialect.name)
        reset_service(service_token)
        try:
            yield
        finally:
            for hook in spec.on_shutdown:
                await hook(app)
            await relay.stop()
            for client in app.state.peers.values():
                await client.aclose()
            if owns_bus:
                await the_bus.close()
            await engine.dispose()

    app = FastAPI(
        title=spec.title,
        description=spec.description,
        version=spec.version,
        lifespan=lifespan,
        responses=problem_responses(400, 401, 403, 404, 409, 422, 429),
        **_NO_NATIVE_TELEMETRY,
    )
    install_error_handlers(app)
    app.add_middleware(_RequestContextMiddleware, service=spec.name)
    app.include_router(_ops_router(spec))
    for router in spec.routers:
        app.include_router(router)
    _document_json_bodies(app)
    return app


class _RequestContextMiddleware:
    """Correlation id in and out, per-route request metrics (pure ASGI, no body buffering).

    Runs on every request, so it keeps its per-request work small: one pass over the headers,
    and the metric children for each (method, route, status) looked up once and kept, because
    prometheus_client's ``labels()`` takes a lock and builds a key on every call."""

    _HEADER = CORRELATION_HEADER.lower().encode()
    CID_NAME = CORRELATION_HEADER.encode()  # the response header's name, as ASGI sends it

    def __init__(self, app: Any, service: str) -> None:
        self.app = app
        self.service = service
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._latencies: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers") or ():
            if name == self._HEADER:
                incoming = value
                break
        cid = self.correlation_id(incoming)
        cid_header = (self.CID_NAME, cid.encode("latin-1"))
        token = set_correlation_id(cid)
        svc_token = set_service(self.service)
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), cid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            self.record(scope.get("method", "GET"), getattr(route, "path", None) or "unmatched", status,
                        time.perf_counter() - started)
            reset_correlation_id(token)
            reset_service(svc_token)

    @staticmethod
    def correlation_id(incoming: bytes | None) -> str:
        """The request's correlation id: the caller's (cut to 64 characters) or a new one.

        A fresh id only has to be unique, not unguessable: 128 random bits from the fast
        generator, in new_correlation_id()'s format, at a tenth of uuid4's cost."""
        return incoming.decode("latin-1")[:64] if incoming else "%032x" % getrandbits(128)

    def record(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count one answered request (labelled by route template) and observe its latency."""
        counter = self._counters.get((method, path, status))
        if counter is None:
            counter = self._counters[(method, path, status)] = HTTP_REQUESTS.labels(
                self.service, method, path, str(status))
        latency = self._latencies.get((method, path))
        if latency is None:
            latency = self._latencies[(method, path)] = HTTP_LATENCY.labels(self.service, method, path)
        counter.inc()
        latency.observe(seconds)


def _ops_router(spec: ServiceSpec) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": spec.name}

    @router.get(
        "/readyz",
        summary="Readiness: the database and the event bus are reachable",
        responses=problem_responses(503),
    )
    async def readyz(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            async with request.app.state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # report, don't crash
            checks["database"] = f"error: {type(exc).__name__}"
        checks["bus"] = "ok" if await request.app.state.bus.healthy() else "error: not connected"
        if all(v == "ok" for v in checks.values()):
            return JSONResponse({"status": "ok", "service": spec.name, "checks": checks})
        return problem_response(Unavailable("Not ready.", checks=checks), request)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        bus: EventBus = request.app.state.bus
        for queue in request.app.state.queues:
            with contextlib.suppress(Exception):
                CONSUMER_LAG.labels(spec.name, queue).set(await bus.queue_depth(queue))
        with contextlib.suppress(Exception):
            from shared.observability import OUTBOX_BACKLOG

            OUTBOX_BACKLOG.labels(spec.name).set(await request.app.state.relay.backlog())
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


# Public name for services that answer some requests outside the routed stack (publication's
# stored bodies) and must still carry correlation ids and metrics.
RequestContextMiddleware = _RequestContextMiddleware

__all__ = ["Consumer", "ServiceSpec", "build_app", "PROBLEM_MEDIA_TYPE", "RequestContextMiddleware"]


def unit_of_work(request: Request):
    """``async with unit_of_work(request) as session``: one transaction for one request's change,
    committed before the response is built (so a commit failure becomes an error response, never
    a success the database did not keep)."""
    from shared.db import transaction

    return transaction(request.app.state.sessions)


def read_session(request: Request) -> AsyncSession:
    """A session for reads (no transaction block needed)."""
    return request.app.state.sessions()


# ---------------------------------------------------------------- bodies read by the operation

M = TypeVar("M", bound=BaseModel)
# Validation context for ``read_json_body``'s models: True when the raw body holds no ``\u0000``
# escape, the only way a NUL can reach a string of a JSON document (a raw control character is
# invalid JSON). Validators that look for NUL in every nested string may skip the walk then.
NUL_FREE = "nul_free"
_JSON_BODIES: dict[str, type[BaseModel]] = {}
_SCHEMA_REF = "#/components/schemas/{model}"


def json_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` of an operation that reads its body with ``read_json_body``: the body is
    documented as ``model``, as FastAPI documents a declared body parameter (``build_app`` puts
    the model's schema in the components)."""
    _JSON_BODIES[model.__name__] = model
    ref = _SCHEMA_REF.format(model=model.__name__)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": ref}}}}}


async def read_json_body(request: Request, model: type[M]) -> M:
    """Parse and validate a JSON body in one pass of pydantic-core (``model_validate_json``),
    for the few operations whose bodies run to megabytes (a 5,000-form Vietnam Post batch is
    4 MB). A declared body parameter is parsed by ``json.loads`` into Python objects that are
    then validated: twice the time, and a Vietnam Post batch's parse was a sixth of its push.
    Errors are FastAPI's own (``RequestValidationError``, locations under ``body``), so the
    client sees the same 422 problem either way."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw, context={NUL_FREE: b"\\u0000" not in raw})
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors, body=raw) from None


def _document_json_bodies(app: FastAPI) -> None:
    """Add the schemas of the bodies named by ``json_body`` to the OpenAPI components."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = build()
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for operations in doc.get("paths", {}).values():
                for operation in operations.values():
                    content = (operation.get("requestBody") or {}).get("content", {})
                    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
                    model = _JSON_BODIES.get(ref.rpartition("/")[2])
                    if model is not None and model.__name__ not in schemas:
                        schema = model.model_json_schema(ref_template=_SCHEMA_REF)
                        for name, definition in schema.pop("$defs", {}).items():
                            schemas.setdefault(name, definition)
                        schemas[model.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
