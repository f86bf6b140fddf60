"""RFC 9457 problem details, from one handler for the whole platform.

Every error a client can see is ``application/problem+json`` with a stable ``type`` URI
(``urn:sipas:problem:<slug>``) that clients may branch on; ``title`` is fixed per type, ``detail``
explains this occurrence. Unexpected exceptions become a logged ``internal-error`` problem,
never a bare stack trace or an HTML page.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.observability import CORRELATION_HEADER, current_correlation_id

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("sipas.errors")


def problem_type(slug: str) -> str:
    return f"urn:sipas:problem:{slug}"


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra
        self.headers = headers or {}

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": problem_type(self.slug), "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


def _problem_class(slug: str, status: int, title: str) -> type[Problem]:
    return type(slug.title().replace("-", ""), (Problem,), {"slug": slug, "status": status, "title": title})


BadRequest = _problem_class("bad-request", 400, "Bad request")
Unauthorized = _problem_class("unauthorized", 401, "Authentication required")
Forbidden = _problem_class("forbidden", 403, "Not allowed for this key")
NotFound = _problem_class("not-found", 404, "Resource not found")
Conflict = _problem_class("conflict", 409, "Conflicts with the current state")
InvalidState = _problem_class("invalid-state", 409, "Not allowed in the resource's current state")
PayloadTooLarge = _problem_class("payload-too-large", 413, "Request too large")
UnsupportedMediaType = _problem_class("unsupported-media-type", 415, "Unsupported media type")
Unprocessable = _problem_class("validation-error", 422, "Request failed validation")
TooManyRequests = _problem_class("rate-limited", 429, "Too many requests")
Unavailable = _problem_class("unavailable", 503, "Dependency unavailable")


def problem_response(problem: Problem, request: Request | None = None) -> JSONResponse:
    headers = dict(problem.headers)
    cid = current_correlation_id()
    if cid:
        headers.setdefault(CORRELATION_HEADER, cid)
    instance = str(request.url.path) if request is not None else None
    return JSONResponse(problem.body(instance), status_code=problem.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


_STATUS_PROBLEMS: dict[int, type[Problem]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: TooManyRequests,
}


# SQLSTATEs a client can retry: deadlock, serialization failure, lock not available, too many
# connections, and SQLite's lock timeout (which has no SQLSTATE, only its message).
TRANSIENT_SQLSTATES = {"40P01", "40001", "55P03", "53300"}
TRANSIENT_MESSAGES = ("database is locked", "deadlock detected", "could not serialize", "too many clients")


def is_transient(exc: DBAPIError) -> bool:
    """True for a database error that says "try again", not "this request is wrong".

    The whole unit of work was rolled back, so a retry is safe: answering 503 with Retry-After
    instead of 500 tells Vietnam Post's systems and the portals to send the same request again.
    """
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in TRANSIENT_SQLSTATES:
        return True
    text = str(orig).lower() if orig is not None else ""
    return any(m in text for m in TRANSIENT_MESSAGES)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return problem_response(Unprocessable("The request does not match the API contract.", errors=errors), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = _STATUS_PROBLEMS.get(exc.status_code)
        if cls is None:
            cls = _problem_class("http-error", exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 405:
            cls = _problem_class("method-not-allowed", 405, "Method not allowed")
        return problem_response(cls(detail, headers=dict(exc.headers or {})), request)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        if not is_transient(exc):
            return await _unexpected(request, exc)
        log.warning("transient database error on %s %s: %s", request.method, request.url.path,
                    str(exc.orig).splitlines()[0][:200] if exc.orig is not None else type(exc).__name__)
        return problem_response(Unavailable(
            "The database was busy with a conflicting change (lock, deadlock or connection limit); "
            "nothing was stored by this request. Retry after the given seconds.",
            reason="database_busy", headers={"Retry-After": "1"}), request)

    @app.exception_handler(PoolTimeout)
    async def _pool(request: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("no free database connection on %s %s", request.method, request.url.path)
        return problem_response(Unavailable(
            "Every database connection of this service stayed busy for the pool's wait; nothing was "
            "stored by this request. Retry after the given seconds.",
            reason="database_busy", headers={"Retry-After": "1"}), request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        problem = _problem_class("internal-error", 500, "Internal error")(
            "An unexpected error occurred; it has been logged with the correlation id."
        )
        return problem_response(problem, request)


# Shared OpenAPI description of a problem response, for `responses=` on routes.
PROBLEM_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
    "required": ["type", "title", "status"],
    "additionalProperties": True,
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        s: {"description": "Problem details (RFC 9457)", "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}}}
        for s in statuses
    }
