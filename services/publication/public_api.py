"""The public read API (anonymous, ``/v1/public``): waves, releases and their figures, rankings,
series and metadata for the CCHC portal, provincial portals and third-party dashboards.

Every answer has a strong ETag and Cache-Control, and honours If-None-Match with a 304 computed
from the visible version alone; every collection is JSON or CSV (``?format=csv`` or
``Accept: text/csv``) and pages with opaque cursors. ``as_of`` reads what was public at a past
instant; ``changed_since`` lists what was published after an instant (for syncing dashboards).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from time import perf_counter
from typing import Annotated, Literal
from urllib.parse import unquote_plus

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from services.publication import public
from services.publication.public import JSON_TYPE, CSV_TYPE
from services.publication.schemas import (
    Figure,
    FigurePage,
    ProvinceFigures,
    ProvincePage,
    PublicWave,
    Ranking,
    RankingPage,
    ReleaseDocument,
    ReleaseMetadata,
    ReleasePage,
    ReleaseSummary,
    Series,
    SeriesPoint,
    VersionList,
    VersionSummary,
    WavePage,
)
from shared.auth import OptionalPrincipal
from shared.errors import BadRequest, NotFound, TooManyRequests, problem_responses
from shared.observability import CORRELATION_HEADER
from shared.service import RequestContextMiddleware, read_session

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
PROVINCE_PATTERN = r"^[0-9]{2,3}$"

ReleaseId = Annotated[str, Path(pattern=UUID_PATTERN, max_length=36, description="Release id")]
ProvincePath = Annotated[str, Path(pattern=PROVINCE_PATTERN, description="Province code (GSO), e.g. 01")]
AsOf = Annotated[
    dt.datetime | None,
    Query(description="Read what was public at this past instant (ISO 8601; without offset: UTC)"),
]
ChangedSince = Annotated[dt.datetime | None, Query(description="Only what was published after this instant")]
Version = Annotated[int | None, Query(ge=1, le=100000, description="A specific published version (default: the newest)")]
Cursor = Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size (at most 500)")]
Format = Annotated[Literal["json", "csv"] | None, Query(description="json (default) or csv; Accept: text/csv works too")]
ProvinceFilter = Annotated[str | None, Query(pattern=PROVINCE_PATTERN, description="Province code")]
CodeFilter = Annotated[str | None, Query(pattern=CODE_PATTERN, description="Indicator code (element, item, option...)")]
WeightingFilter = Annotated[Literal["none", "design"] | None, Query(description="none = official; design = weighted")]
FlagFilter = Annotated[Literal["ok", "unreliable", "suppressed"] | None, Query()]
DomainFilter = Annotated[
    Literal["nation", "province", "commune", "level", "field", "procedure", "policy_group", "respondent_group"] | None,
    Query(),
]
DomainCode = Annotated[str | None, Query(pattern=CODE_PATTERN, description="Domain code (province, commune, level...)")]
Year = Annotated[int | None, Query(ge=2000, le=2100)]
WaveFilter = Annotated[str | None, Query(pattern=UUID_PATTERN, max_length=36)]


def _responses(collection: bool) -> dict:
    content = {JSON_TYPE: {}}
    if collection:
        content["text/csv"] = {"schema": {"type": "string"}}
    return {
        200: {"content": content, "headers": {"ETag": {"schema": {"type": "string"}}}},
        304: {"description": "Not modified: the ETag in If-None-Match is current"},
        **problem_responses(400, 404, 429),
    }


class RateLimiter:
    """Token bucket per client address for anonymous traffic (keys are not limited here)."""

    def __init__(self) -> None:
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, rate_per_minute: int, burst: int) -> float:
        """Take a token; return 0 if allowed, else the seconds until one is available."""
        now = time.monotonic()
        rate = rate_per_minute / 60.0
        tokens, last = self.buckets.get(client, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self.buckets[client] = (tokens - 1.0, now)
            if len(self.buckets) > 100_000:  # forget idle clients rather than grow without bound
                self.buckets.clear()
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1.0 - tokens) / rate


async def limit_anonymous(request: Request, principal: OptionalPrincipal) -> None:
    if principal is not None or request.scope.get("state", {}).get(RATE_CHECKED):
        return
    settings = request.app.state.settings
    limiter: RateLimiter = request.app.state.rate_limiter
    client = request.client.host if request.client else "unknown"
    wait = limiter.take(client, settings.anonymous_rate_per_minute, settings.anonymous_burst)
    if wait:
        retry = max(1, math.ceil(wait))
        raise TooManyRequests(
            f"Anonymous clients may make {settings.anonymous_rate_per_minute} requests a minute; retry in {retry} s "
            "or ask the ministry for a portal key.",
            headers={"Retry-After": str(retry)},
        )


router = APIRouter(prefix="/v1/public", tags=["public"], dependencies=[Depends(limit_anonymous)])


def _since(changed_since: dt.datetime | None) -> dt.datetime | None:
    if changed_since is not None and changed_since.tzinfo is None:
        return changed_since.replace(tzinfo=dt.UTC)
    return changed_since


def _page_after(rows: list, key, cursor: dict | None, limit: int) -> tuple[list, str | None]:
    """Keyset paging over a small, sorted list (releases, waves)."""
    if cursor is not None:
        after = tuple(cursor["k"]) if isinstance(cursor["k"], list) else None
        if after is None:
            raise BadRequest(public.MALFORMED_CURSOR)
        rows = [r for r in rows if tuple(key(r)) > after]
    page = rows[:limit]
    next_cursor = public.encode_cursor({"k": list(key(page[-1]))}) if len(rows) > limit else None
    return page, next_cursor


def _cursor_key(parsed: dict | None, kind: type, first):
    """Where a page of one release version starts: the cursor's key, or ``first``."""
    after = parsed["k"] if parsed else first
    if not isinstance(after, kind):
        raise BadRequest(public.MALFORMED_CURSOR)
    return after


def _version_page(row: dict, found: list, limit: int, key) -> tuple[list, str | None]:
    """The page of ``found`` (fetched ``limit + 1`` long) and the cursor to the next one; the
    cursor pins the release version, so every page of a walk reads the same figures."""
    page = found[:limit]
    nxt = public.encode_cursor({"v": row["id"], "n": row["version"], "k": key(page[-1])}) if len(found) > limit else None
    return page, nxt


async def _visible_or_404(session, request: Request, at: dt.datetime, as_of: dt.datetime | None) -> list[dict]:
    rows = await public.visible_releases(session, request.app.state.tables, at)
    if not rows and as_of is not None:
        raise NotFound(f"Nothing had been published at {at.isoformat(timespec='seconds')}.")
    return rows


def _summary(row: dict) -> ReleaseSummary:
    return ReleaseSummary(
        release_id=row["release_id"], version=row["version"], wave=public.wave_facts(row),
        methodology_version=row["facts"]["methodology_version"], published_at=row["publish_at"],
        correction_reason=row["correction_reason"],
    )


def _release_key(row: dict) -> tuple:
    return (-row["facts"]["wave"]["year"], row["facts"]["wave"]["code"], row["release_id"])


@router.get("/waves", response_model=WavePage, responses=_responses(True), summary="Waves with a published release")
async def list_waves(
    request: Request, as_of: AsOf = None, changed_since: ChangedSince = None, year: Year = None,
    cursor: Cursor = None, limit: Limit = 100, format: Format = None,
) -> Response:
    at = public.read_instant(request, as_of)
    since = _since(changed_since)
    parsed = public.decode_cursor(cursor)
    async with read_session(request) as session:
        rows = await _visible_or_404(session, request, at, as_of)
    etag = public.collection_etag(rows, request)

    async def build():
        selected = [r for r in rows if (year is None or r["facts"]["wave"]["year"] == year)
                    and (since is None or r["publish_at"] > since)]
        page, next_cursor = _page_after(selected, _release_key, parsed, limit)
        items = [PublicWave(wave=public.wave_facts(r), release_id=r["release_id"], version=r["version"],
                            methodology_version=r["facts"]["methodology_version"], published_at=r["publish_at"])
                 for r in page]
        if public.wants_csv(request, format):
            return public.to_csv([i.model_dump(mode="json") for i in items], public.columns_of(PublicWave)), CSV_TYPE
        return public.dumps(WavePage(items=items, next_cursor=next_cursor)), JSON_TYPE

    return await public.conditional(request, etag, build)


@router.get("/releases", response_model=ReleasePage, responses=_responses(True), summary="Published releases, newest wave first")
async def list_releases(
    request: Request, as_of: AsOf = None, changed_since: ChangedSince = None, wave_id: WaveFilter = None,
    year: Year = None, cursor: Cursor = None, limit: Limit = 100, format: Format = None,
) -> Response:
    at = public.read_instant(request, as_of)
    since = _since(changed_since)
    parsed = public.decode_cursor(cursor)
    async with read_session(request) as session:
        rows = await _visible_or_404(session, request, at, as_of)
    etag = public.collection_etag(rows, request)

    async def build():
        selected = [r for r in rows if (year is None or r["facts"]["wave"]["year"] == year)
                    and (wave_id is None or r["facts"]["wave"]["wave_id"] == wave_id)
                    and (since is None or r["publish_at"] > since)]
        page, next_cursor = _page_after(selected, _release_key, parsed, limit)
        items = [_summary(r) for r in page]
        if public.wants_csv(request, format):
            return public.to_csv([i.model_dump(mode="json") for i in items], public.columns_of(ReleaseSummary)), CSV_TYPE
        return public.dumps(ReleasePage(items=items, next_cursor=next_cursor)), JSON_TYPE

    return await public.conditional(request, etag, build)


@router.get("/releases/{release_id}", response_model=ReleaseDocument, responses=_responses(False),
            summary="A published release: metadata, national figures and links")
async def get_release(release_id: ReleaseId, request: Request, as_of: AsOf = None, version: Version = None) -> Response:
    return await _stored(request, release_id, as_of, version, "document")


@router.get("/releases/{release_id}/metadata", response_model=ReleaseMetadata, responses=_responses(False),
            summary="Methodology version, sample sizes, fieldwork dates, footnotes")
async def get_metadata(release_id: ReleaseId, request: Request, as_of: AsOf = None, version: Version = None) -> Response:
    return await _stored(request, release_id, as_of, version, "metadata")


async def _stored(request: Request, release_id: str, as_of, version, resource: str) -> Response:
    """The hot path: bodies precomputed at publication, served from the per-process cache."""
    at = public.read_instant(request, as_of)
    state = request.app.state
    cache: public.PublicCache = state.public_cache
    picked = public.pick_visible(await cache.versions(state.sessions, state.tables, release_id), at, version)
    row = await cache.body(state.sessions, state.tables, picked[2], resource) if picked else None
    if row is None:
        what = f"version {version} of release {release_id}" if version else f"release {release_id}"
        raise NotFound(f"No published {what} at {at.isoformat(timespec='seconds')}.")
    headers = public.cache_headers(request, row["etag"])
    if public.matches(request, row["etag"]):
        return Response(status_code=304, headers=headers)
    return Response(row["body"], media_type=row["media_type"], headers=headers)


# --- the hot path without the framework: stored bodies straight from the cache ---

_STORED_PATH = re.compile(
    r"^/v1/public/releases/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(/metadata)?$"
)
# Only the plain ISO forms both this parser and pydantic read the same way; anything else takes
# the routed path, whose validation answers it (422) exactly as documented.
_PLAIN_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$")
RATE_CHECKED = "publication.rate_checked"


class StoredBodyFastPath:
    """Pure-ASGI answer of ``GET /v1/public/releases/{id}`` and ``.../metadata`` (the stored
    bodies, the portals' and dashboards' most frequent request) from the per-process cache.

    FastAPI's routing and dependency resolution cost several times what the answer itself costs
    (the benchmark measured a 304 at under a fifth of a raw ASGI app through them), and a
    published body is immutable bytes with a precomputed ETag, so there is nothing to validate.
    It wraps the whole middleware stack (the layers in between cost more than the answer) and
    sends its answer itself, with the platform's request-context middleware's correlation-id
    header and metric children, so what clients and Prometheus see (metrics labelled with the
    route's template) is the same as on the routed path.

    Only the simple, common shape is answered here: anonymous, no body, no query or only
    ``version`` / ``as_of`` in plain forms, a visible version. Everything else (a key, other
    parameters, malformed values, a future ``as_of``, unknown or embargoed releases, a
    rate-limited client) goes down the stack to the routed handler, which answers it with the
    same rules and problem+json; a request counted against the anonymous rate limit here is not
    counted again there.
    """

    def __init__(self, app, fastapi_app, service: str) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.routes: dict[str, object] | None = None
        # Only its metric children and correlation-id format are used: the answer is sent here,
        # because each layer of its wrapping (a coroutine, a send closure, the context variables
        # nothing reads on this path) cost as much as the answer itself.
        self.context = RequestContextMiddleware(app, service)

    def _route(self, resource: str):
        if self.routes is None:  # this module's router: its routes carry the full path
            found = {getattr(r, "path", None): r for r in router.routes}
            self.routes = {"document": found.get("/v1/public/releases/{release_id}"),
                           "metadata": found.get("/v1/public/releases/{release_id}/metadata")}
        return self.routes[resource]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith("/v1/public/releases/"):
            started = perf_counter()
            answer = await self._answer(scope)
            if answer is not None:
                status, headers, body, route, correlation = answer
                cid = (self.context.CID_NAME, self.context.correlation_id(correlation).encode("latin-1"))
                await send({"type": "http.response.start", "status": status, "headers": [*headers, cid]})
                await send({"type": "http.response.body", "body": body})
                self.context.record("GET", route.path, status, perf_counter() - started)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope) -> tuple[int, list, bytes, object, bytes | None] | None:
        """(status, headers, body, route, caller's correlation id) of the stored answer, or None
        to let the stack answer."""
        m = _STORED_PATH.match(scope["path"])
        if m is None:
            return None
        if_none_match = correlation = None
        for name, value in scope["headers"]:
            if name in _DOWN_THE_STACK:  # a key is authenticated, a body size-checked, down the stack
                return None
            if name == b"if-none-match":
                if if_none_match is not None:
                    return None
                if_none_match = value
            elif name == _CORRELATION:
                correlation = value
        version = as_of = None
        query = scope.get("query_string")
        if query:
            parsed = _stored_query(query)
            if parsed is None:
                return None
            version, as_of = parsed
        state = self.fastapi_app.state._state  # the dict behind app.state: one lookup per item
        settings = state.get("settings")
        if settings is None:  # not started yet
            return None
        now = state["clock"]()
        if as_of is not None and as_of > now:
            return None
        client = scope.get("client")
        if state["rate_limiter"].take(client[0] if client else "unknown", settings.anonymous_rate_per_minute,
                                      settings.anonymous_burst):
            return None  # refused: the routed path answers 429 with Retry-After (not counted twice)
        scope.setdefault("state", {})[RATE_CHECKED] = True
        resource = "metadata" if m.group(2) else "document"
        cache: public.PublicCache = state["public_cache"]
        release_id = m.group(1)
        try:
            versions = cache.fresh_versions(release_id)
            if versions is None:
                versions = await cache.versions(state["sessions"], state["tables"], release_id)
            picked = public.pick_visible(versions, as_of or now, version)
            if picked is None:
                return None
            row = cache.cached_body(picked[2], resource)
            if row is None:
                row = await cache.body(state["sessions"], state["tables"], picked[2], resource)
        except Exception:  # e.g. the database is down: the routed path reports it as a problem
            return None
        if row is None:
            return None
        full, bare = public.stored_headers(row, version is not None or as_of is not None, settings.public_max_age_seconds)
        route = scope["route"] = self._route(resource)
        # bare[0] is the ETag header: the usual If-None-Match is that one tag, byte for byte
        if if_none_match is not None and (if_none_match == bare[0][1]
                                          or public.matches_header(if_none_match.decode("latin-1"), row["etag"])):
            return 304, bare, b"", route, correlation
        return 200, full, row["body"], route, correlation


_DOWN_THE_STACK = frozenset((b"x-api-key", b"x-internal-token", b"content-length", b"transfer-encoding"))
_CORRELATION = CORRELATION_HEADER.lower().encode()


def _stored_query(query: bytes) -> tuple[int | None, dt.datetime | None] | None:
    """(version, as_of) from a query of only ``version`` / ``as_of`` in plain forms, else None."""
    version = as_of = None
    for part in query.split(b"&"):
        key, _, raw = part.partition(b"=")
        if key == b"version" and version is None and raw.isdigit() and raw[:1] != b"0" and len(raw) <= 6:
            version = int(raw)
            if version > 100000:
                return None
        elif key == b"as_of" and as_of is None:
            text = unquote_plus(raw.decode("latin-1"))
            if not _PLAIN_INSTANT.match(text):
                return None
            as_of = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if as_of.tzinfo is None:
                as_of = as_of.replace(tzinfo=dt.UTC)
        else:
            return None
    return version, as_of


@router.get("/releases/{release_id}/versions", response_model=VersionList, responses=_responses(True),
            summary="Every published version of a release (corrections with their reasons)")
async def list_versions(release_id: ReleaseId, request: Request, as_of: AsOf = None, format: Format = None) -> Response:
    at = public.read_instant(request, as_of)
    tables = request.app.state.tables
    t = tables["release_version"]
    from sqlalchemy import select

    async with read_session(request) as session:
        rows = [dict(r) for r in (await session.execute(
            select(t).where(t.c.release_id == release_id, public.visible(t, at)).order_by(t.c.version)
        )).mappings()]
    if not rows:
        raise NotFound(f"No published release {release_id} at {at.isoformat(timespec='seconds')}.")
    etag = public.collection_etag(rows, request)

    async def build():
        items = [VersionSummary(version=r["version"], published_at=r["publish_at"], correction_reason=r["correction_reason"])
                 for r in rows]
        if public.wants_csv(request, format):
            return public.to_csv([i.model_dump(mode="json") for i in items], public.columns_of(VersionSummary)), CSV_TYPE
        return public.dumps(VersionList(release_id=release_id, items=items)), JSON_TYPE

    return await public.conditional(request, etag, build)


async def _figures(
    request: Request, release_id: str, *, as_of, version, cursor, limit, format, domain=None, domain_code=None,
    province_code=None, indicators=None, code=None, weighting=None, flag=None,
) -> Response:
    at = public.read_instant(request, as_of)
    parsed = public.decode_cursor(cursor)
    tables = request.app.state.tables
    async with read_session(request) as session:
        row = await public.visible_version(session, tables, release_id, at, version, parsed)
        if province_code is not None:
            if not await public.has_province(session, tables, row["id"], province_code):
                raise NotFound(f"Province {province_code} is not in release {release_id}.")
            domain, domain_code = "province", province_code
        etag = public.version_etag(row, request)

        async def build():
            found = await public.cells(
                session, tables, row["id"], domain=domain, domain_codes=[domain_code] if domain_code else None,
                indicators=indicators, code=code, weighting=weighting, flag=flag, after=_cursor_key(parsed, int, 0),
                limit=limit + 1,
            )
            page, next_cursor = _version_page(row, found, limit, lambda c: c["seq"])
            items = [public.figure(c) for c in page]
            if public.wants_csv(request, format):
                return public.to_csv([i.model_dump(mode="json") for i in items], public.columns_of(Figure)), CSV_TYPE
            return public.dumps(FigurePage(release_id=release_id, version=row["version"], items=items,
                                           next_cursor=next_cursor)), JSON_TYPE

        return await public.conditional(request, etag, build)


@router.get("/releases/{release_id}/national", response_model=FigurePage, responses=_responses(True),
            summary="National SIPAS, part and element indices")
async def national(
    release_id: ReleaseId, request: Request, as_of: AsOf = None, version: Version = None,
    indicator: Annotated[Literal["sipas", "part", "element"] | None, Query()] = None,
    weighting: WeightingFilter = None, cursor: Cursor = None, limit: Limit = 100, format: Format = None,
) -> Response:
    return await _figures(request, release_id, as_of=as_of, version=version, cursor=cursor, limit=limit, format=format,
                          domain="nation", indicators=[indicator] if indicator else ["sipas", "part", "element"],
                          weighting=weighting)


@router.get("/releases/{release_id}/items", response_model=FigurePage, responses=_responses(True),
            summary="Item (criterion) indices, nationally or for a domain")
async def items(
    release_id: ReleaseId, request: Request, as_of: AsOf = None, version: Version = None,
    province_code: ProvinceFilter = None, domain: DomainFilter = None, domain_code: DomainCode = None,
    code: CodeFilter = None, weighting: WeightingFilter = None, flag: FlagFilter = None,
    cursor: Cursor = None, limit: Limit = 100, format: Format = None,
) -> Response:
    return await _figures(request, release_id, as_of=as_of, version=version, cursor=cursor, limit=limit, format=format,
                          domain=domain, domain_code=domain_code, province_code=province_code, indicators=["item"],
                          code=code, weighting=weighting, flag=flag)


@router.get("/releases/{release_id}/expectations", response_model=FigurePage, responses=_responses(True),
            summary="Expectation indicators (share choosing each improvement option)")
async def expectations(
    release_id: ReleaseId, request: Request, as_of: AsOf = None, version: Version = None,
    province_code: ProvinceFilter = None, domain: DomainFilter = None, domain_code: DomainCode = None,
    code: CodeFilter = None, weighting: WeightingFilter = None, flag: FlagFilter = None,
    cursor: Cursor = None, limit: Limit = 100, format: Format = None,
) -> Response:
    return await _figures(request, release_id, as_of=as_of, version=version, cursor=cursor, limit=limit, format=format,
                          domain=domain, domain_code=domain_code, province_code=province_code,
                          indicators=["expectation"], code=code, weighting=weighting, flag=flag)


@router.get("/releases/{release_id}/figures", response_model=FigurePage, responses=_responses(True),
            summary="Every published cell, with filters (the generic collection)")
async def figures(
    release_id: ReleaseId, request: Request, as_of: AsOf = None, version: Version = None,
    domain: DomainFilter = None, domain_code: DomainCode = None, province_code: ProvinceFilter = None,
    indicator: Annotated[Literal["sipas", "part", "element", "item", "expectation"] | None, Query()] = None,
    code: CodeFilter = None, weighting: WeightingFilter = None, flag: FlagFilter = None,
    cursor: Cursor = None, limit: Limit = 100, format: Format = None,
) -> Response:
    return await _figures(request, release_id, as_of=as_of, version=version, cursor=cursor, limit=limit, format=format,
                          domain=domain, domain_code=domain_code, province_code=province_code,
                          indicators=[indicator] if indicator else None, code=code, weighting=weighting, flag=flag)


@router.get("/releases/{release_id}/provinces", response_model=ProvincePage, responses=_responses(True),
            summary="Provinces with their SIPAS, part and element indices (CSV: one row per figure)")
async def provinces(
    release_id: ReleaseId, request: Request, as_of: AsOf = None, version: Version = None,
    province_code: ProvinceFilter = None,
    indicator: Annotated[Literal["sipas", "part", "element"] | None, Query()] = None,
    weighting: WeightingFilter = None, cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Provinces per page (at most 100)")] = 100,
    format: Format = None,
) -> Response:
    at = public.read_instant(request, as_of)
    parsed = public.decode_cursor(cursor)
    tables = request.app.state.tables
    async with read_session(request) as session:
        row = await public.visible_version(session, tables, release_id, at, version, parsed)
        if province_code is not None and not await public.has_province(session, tables, row["id"], province_code):
            raise NotFound(f"Province {province_code} is not in release {release_id}.")
        etag = public.version_etag(row, request)

        async def build():
            codes = await public.province_codes(session, tables, row["id"], _cursor_key(parsed, str, ""), limit + 1,
                                                province_code)
            page_codes, next_cursor = _version_page(row, codes, limit, lambda code: code)
            found = await public.cells(session, tables, row["id"], domain="province", domain_codes=page_codes,
                                       indicators=[indicator] if indicator else ["sipas", "part", "element"],
                                       weighting=weighting)
            grouped: dict[str, list[Figure]] = {c: [] for c in page_codes}
            for c in found:
                grouped[c["domain_code"]].append(public.figure(c))
            if public.wants_csv(request, format):
                flat = [f.model_dump(mode="json") for figs in grouped.values() for f in figs]
                return public.to_csv(flat, public.columns_of(Figure)), CSV_TYPE
            body = ProvincePage(release_id=release_id, version=row["version"], next_cursor=next_cursor,
                                items=[ProvinceFigures(province_code=c, figures=f) for c, f in grouped.items()])
            return public.dumps(body), JSON_TYPE

        return await public.conditional(request, etag, build)


@router.get("/releases/{release_id}/provinces/{province_code}", response_model=ProvinceFigures,
            responses=_responses(False), summary="One province: every published figure (indices, items, expectations)")
async def province(
    release_id: ReleaseId, province_code: ProvincePath, request: Request, as_of: AsOf = None, version: Version = None,
    weighting: WeightingFilter = None,
) -> Response:
    at = public.read_instant(request, as_of)
    tables = request.app.state.tables
    async with read_session(request) as session:
        row = await public.visible_version(session, tables, release_id, at, version)
        etag = public.version_etag(row, request)

        async def build():
            found = await public.cells(session, tables, row["id"], domain="province", domain_codes=[province_code],
                                       weighting=weighting)
            if not found:
                raise NotFound(f"Province {province_code} is not in release {release_id}.")
            return public.dumps(ProvinceFigures(province_code=province_code, figures=[public.figure(c) for c in found])), JSON_TYPE

        if not public.matches(request, etag) and not await public.has_province(session, tables, row["id"], province_code):
            raise NotFound(f"Province {province_code} is not in release {release_id}.")
        return await public.conditional(request, etag, build)


@router.get("/releases/{release_id}/rankings", response_model=RankingPage, responses=_responses(True),
            summary="Provinces ranked (ties share a rank), with the change against the previous wave")
async def list_rankings(
    release_id: ReleaseId, request: Request, as_of: AsOf = None, version: Version = None,
    indicator: Annotated[str, Query(pattern=CODE_PATTERN, description="sipas or an element code")] = "sipas",
    province_code: ProvinceFilter = None, cursor: Cursor = None, limit: Limit = 100, format: Format = None,
) -> Response:
    at = public.read_instant(request, as_of)
    parsed = public.decode_cursor(cursor)
    tables = request.app.state.tables
    async with read_session(request) as session:
        row = await public.visible_version(session, tables, release_id, at, version, parsed)
        etag = public.version_etag(row, request)

        async def build():
            after = _cursor_key(parsed, int, 0)
            found = await public.rankings(session, tables, row["id"], indicator, province_code, after, limit + 1)
            if province_code is not None and not found and not after:
                raise NotFound(f"Province {province_code} is not ranked on {indicator} in release {release_id}.")
            page, next_cursor = _version_page(row, found, limit, lambda r: r["seq"])
            items = [public.ranking(r) for r in page]
            if public.wants_csv(request, format):
                return public.to_csv([i.model_dump(mode="json") for i in items], public.columns_of(Ranking)), CSV_TYPE
            return public.dumps(RankingPage(release_id=release_id, version=row["version"], items=items,
                                            next_cursor=next_cursor)), JSON_TYPE

        return await public.conditional(request, etag, build)


@router.get("/provinces/{province_code}/series", response_model=Series, responses=_responses(True),
            summary="A province across waves, with method-break and merger flags")
async def series(
    province_code: ProvincePath, request: Request, as_of: AsOf = None,
    indicator: Annotated[Literal["sipas", "part", "element", "item", "expectation"], Query()] = "sipas",
    code: Annotated[str, Query(pattern=CODE_PATTERN)] = "sipas",
    weighting: Annotated[Literal["none", "design"], Query()] = "none",
    format: Format = None,
) -> Response:
    at = public.read_instant(request, as_of)
    tables = request.app.state.tables
    async with read_session(request) as session:
        rows = await _visible_or_404(session, request, at, as_of)
        etag = public.collection_etag(rows, request)

        async def build():
            points: list[SeriesPoint] = []
            previous: dict | None = None
            for r in sorted(rows, key=lambda r: (r["facts"]["wave"]["year"], r["facts"]["wave"]["code"])):
                found = await public.cells(session, tables, r["id"], domain="province", domain_codes=[province_code],
                                           indicators=[indicator], code=code, weighting=weighting)
                if not found:
                    continue
                cell = found[0]
                rank_indicator = code if indicator in ("sipas", "element") else None
                ranked = (await public.rankings(session, tables, r["id"], rank_indicator, province_code, 0, 1)
                          if rank_indicator else [])
                wave = r["facts"]["wave"]
                method_break = previous is not None and previous["facts"]["methodology_version"] != r["facts"]["methodology_version"]
                merger_break = previous is not None and public.unit_era(previous["facts"]["wave"]) != public.unit_era(wave)
                note = ranked[0]["comparability_note"] if ranked and not ranked[0]["comparable"] else None
                points.append(SeriesPoint(
                    wave=public.wave_facts(r), release_id=r["release_id"], version=r["version"],
                    methodology_version=r["facts"]["methodology_version"], value=cell["value"], se=cell["se"],
                    ci_low=cell["ci_low"], ci_high=cell["ci_high"], n=cell["n"], flag=cell["flag"],
                    rank=ranked[0]["rank"] if ranked else None, method_break=method_break, merger_break=merger_break,
                    comparability_note=note,
                ))
                previous = r
            if not points:
                raise NotFound(f"Province {province_code} has no published {indicator} {code}.")
            if public.wants_csv(request, format):
                return public.to_csv([p.model_dump(mode="json") for p in points], public.columns_of(SeriesPoint)), CSV_TYPE
            return public.dumps(Series(province_code=province_code, indicator=indicator, code=code,
                                       weighting=weighting, items=points)), JSON_TYPE

        return await public.conditional(request, etag, build)
