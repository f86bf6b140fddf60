"""The public read side: which version is visible, cursors, ETags, JSON and CSV bodies.

Published content is immutable, so every public answer is a pure function of (the visible
version's content hash, its publish time, the request's path and query). Its strong ETag is
computed from those alone: an ``If-None-Match`` that matches is answered 304 after one small
lookup, without building the body. The release document and its metadata are rendered once,
when the version is released, and served as stored bytes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import datetime as dt
import hashlib
import io
import json
from time import monotonic
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import Table, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.publication.schemas import (
    Figure,
    Ranking,
    ReleaseDocument,
    ReleaseMetadata,
    SampleSize,
    WaveFacts,
)
from services.publication.service import visible
from shared.errors import BadRequest, NotFound

# Bump when the serialisation of computed bodies changes: their ETags change with it, so a
# strong ETag never names two different byte sequences.
BODY_FORMAT = "1"
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv; charset=utf-8"
IMMUTABLE = "public, max-age=31536000, immutable"
# Administrative units changed on 1 July 2025 (63 → 34 provinces): series across it are flagged.
MERGER_DATE = dt.date(2025, 7, 1)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:40] + '"'


def derived_etag(*parts: Any) -> str:
    return '"' + hashlib.sha256("|".join(str(p) for p in (BODY_FORMAT, *parts)).encode()).hexdigest()[:40] + '"'


def request_key(request: Request) -> str:
    """Path and query, normalised (order of parameters does not matter)."""
    return request.url.path + "?" + "&".join(f"{k}={v}" for k, v in sorted(request.query_params.multi_items()))


def matches(request: Request, etag: str) -> bool:
    """Strong comparison (RFC 9110 §13.1.2): weak validators never match."""
    return matches_header(request.headers.get("if-none-match"), etag)


def matches_header(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(tag.strip() == etag for tag in header.split(","))


def stored_headers(row: dict, pinned: bool, max_age: int) -> tuple[list, list]:
    """Raw headers of a stored body's 200 and 304, the same bytes and order the routed path's
    ``Response`` sends; built once per body and cache policy and kept on the cached row."""
    key = (pinned, max_age)
    built = row.setdefault("_headers", {})
    if key not in built:
        common = [(b"etag", row["etag"].encode()),
                  (b"cache-control", (IMMUTABLE if pinned else f"public, max-age={max_age}").encode()),
                  (b"vary", b"Accept")]
        built[key] = (common + [(b"content-length", str(len(row["body"])).encode()),
                                (b"content-type", row["media_type"].encode())], common)
    return built[key]


def cache_headers(request: Request, etag: str) -> dict[str, str]:
    pinned = "as_of" in request.query_params or "version" in request.query_params
    max_age = request.app.state.settings.public_max_age_seconds
    return {
        "ETag": etag,
        "Cache-Control": IMMUTABLE if pinned else f"public, max-age={max_age}",
        "Vary": "Accept",
    }


async def conditional(
    request: Request, etag: str, build: Callable[[], Awaitable[tuple[bytes, str]]]
) -> Response:
    """304 if the client holds ``etag``; otherwise build (bytes, media type) and send it."""
    headers = cache_headers(request, etag)
    if matches(request, etag):
        return Response(status_code=304, headers=headers)
    body, media_type = await build()
    return Response(body, media_type=media_type, headers=headers)


def wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and JSON_TYPE not in accept


def dumps(model: BaseModel | dict) -> bytes:
    if isinstance(model, BaseModel):
        return model.model_dump_json().encode()
    return json.dumps(model, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def _flat(row: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            out[f"{prefix}{key}"] = " | ".join(str(v) for v in value)
        else:
            out[f"{prefix}{key}"] = "" if value is None else value
    return out


def to_csv(rows: list[dict], columns: list[str]) -> bytes:
    """CSV with a header row (UTF-8, with BOM so spreadsheet software reads Vietnamese right)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_flat(row))
    return ("\ufeff" + buffer.getvalue()).encode()


def columns_of(model: type[BaseModel], prefix: str = "") -> list[str]:
    cols: list[str] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cols += columns_of(ann, f"{prefix}{name}.")
        else:
            cols.append(prefix + name)
    return cols


# --- time and cursors ---


def read_instant(request: Request, as_of: dt.datetime | None) -> dt.datetime:
    """The instant a read is made at. ``as_of`` reads the past; the future is refused (it would
    read through embargoes)."""
    now = request.app.state.clock()
    if as_of is None:
        return now
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=dt.UTC)
    if as_of > now:
        raise BadRequest("as_of is in the future: only what has been published can be read.")
    return as_of


def encode_cursor(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


MALFORMED_CURSOR = "The cursor is malformed; use next_cursor exactly as it was given."


def decode_cursor(cursor: str | None) -> dict | None:
    if cursor is None:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadRequest(MALFORMED_CURSOR) from None
    if not isinstance(data, dict) or "k" not in data:
        raise BadRequest(MALFORMED_CURSOR)
    return data


# --- the visible version ---


async def visible_version(
    session: AsyncSession, tables: dict[str, Table], release_id: str, at: dt.datetime, version: int | None = None,
    cursor: dict | None = None,
) -> dict:
    """The version of a release public at ``at`` (the newest, or ``version``). Unknown, draft
    and embargoed releases are all "not found": the public cannot learn what is coming."""
    t = tables["release_version"]
    query = select(t).where(t.c.release_id == release_id, visible(t, at))
    if cursor is not None and "v" in cursor:
        if version is not None and cursor.get("n") != version:
            raise BadRequest("The cursor belongs to another version than ?version=.")
        query = query.where(t.c.id == str(cursor["v"]))
    elif version is not None:
        query = query.where(t.c.version == version)
    row = (await session.execute(query.order_by(t.c.version.desc()).limit(1))).mappings().first()
    if row is None:
        if cursor is not None and "v" in cursor:
            raise BadRequest("The cursor does not belong to this release.")
        what = f"version {version} of release {release_id}" if version else f"release {release_id}"
        raise NotFound(f"No published {what} at {at.isoformat(timespec='seconds')}.")
    return dict(row)


async def stored_body(session: AsyncSession, tables: dict[str, Table], release_id: str, at: dt.datetime,
                      version: int | None, resource: str) -> dict:
    """Visible version and its precomputed body in one query (the hot path)."""
    v, b = tables["release_version"], tables["release_body"]
    query = (
        select(b.c.etag, b.c.body, b.c.media_type, v.c.version)
        .join(v, v.c.id == b.c.version_id)
        .where(v.c.release_id == release_id, visible(v, at), b.c.resource == resource)
    )
    if version is not None:
        query = query.where(v.c.version == version)
    row = (await session.execute(query.order_by(v.c.version.desc()).limit(1))).mappings().first()
    if row is None:
        what = f"version {version} of release {release_id}" if version else f"release {release_id}"
        raise NotFound(f"No published {what} at {at.isoformat(timespec='seconds')}.")
    return dict(row)


async def visible_releases(session: AsyncSession, tables: dict[str, Table], at: dt.datetime) -> list[dict]:
    """Each release's newest version public at ``at`` (small: one release per wave)."""
    t = tables["release_version"]
    newest = (
        select(t.c.release_id, func.max(t.c.version).label("version"))
        .where(visible(t, at))
        .group_by(t.c.release_id)
        .subquery()
    )
    first = (
        select(t.c.release_id, func.min(t.c.publish_at).label("first_published_at"))
        .where(visible(t, at))
        .group_by(t.c.release_id)
        .subquery()
    )
    query = (
        select(t, first.c.first_published_at)
        .join(newest, and_(newest.c.release_id == t.c.release_id, newest.c.version == t.c.version))
        .join(first, first.c.release_id == t.c.release_id)
    )
    rows = [dict(r) for r in (await session.execute(query)).mappings()]
    rows.sort(key=lambda r: (-r["facts"]["wave"]["year"], r["facts"]["wave"]["code"], r["release_id"]))
    return rows


def collection_etag(rows: list[dict], request: Request) -> str:
    return derived_etag(*(f"{r['id']}@{r['publish_at'].isoformat()}" for r in rows), request_key(request))


def version_etag(row: dict, request: Request) -> str:
    return derived_etag(row["id"], row["content_hash"], row["publish_at"].isoformat(), request_key(request))


# --- bodies ---


def wave_facts(row: dict) -> WaveFacts:
    return WaveFacts(**row["facts"]["wave"])


def figure(row: Any) -> Figure:
    return Figure(
        domain=row["domain"], domain_code=row["domain_code"], indicator=row["indicator"], code=row["code"],
        weighting=row["weighting"], value=row["value"], se=row["se"], ci_low=row["ci_low"], ci_high=row["ci_high"],
        n=row["n"], cv=row["cv"], deff=row["deff"], flag=row["flag"], suppressed=row["flag"] == "suppressed",
    )


def ranking(row: Any) -> Ranking:
    return Ranking(**{k: row[k] for k in Ranking.model_fields})


async def cells(
    session: AsyncSession, tables: dict[str, Table], version_id: str, *, domain: str | None = None,
    domain_codes: list[str] | None = None, indicators: list[str] | None = None, code: str | None = None,
    weighting: str | None = None, flag: str | None = None, after: int = 0, limit: int | None = None,
) -> list[dict]:
    c = tables["release_cell"]
    query = select(c).where(c.c.version_id == version_id, c.c.seq > after)
    if domain:
        query = query.where(c.c.domain == domain)
    if domain_codes is not None:
        query = query.where(c.c.domain_code.in_(domain_codes))
    if indicators:
        query = query.where(c.c.indicator.in_(indicators))
    if code:
        query = query.where(c.c.code == code)
    if weighting:
        query = query.where(c.c.weighting == weighting)
    if flag:
        query = query.where(c.c.flag == flag)
    query = query.order_by(c.c.seq)
    if limit is not None:
        query = query.limit(limit)
    return [dict(r) for r in (await session.execute(query)).mappings()]


async def has_province(session: AsyncSession, tables: dict[str, Table], version_id: str, province_code: str) -> bool:
    c = tables["release_cell"]
    found = await session.scalar(
        select(c.c.seq).where(c.c.version_id == version_id, c.c.domain == "province", c.c.domain_code == province_code).limit(1)
    )
    return found is not None


async def province_codes(session: AsyncSession, tables: dict[str, Table], version_id: str, after: str, limit: int,
                         only: str | None = None) -> list[str]:
    c = tables["release_cell"]
    query = select(c.c.domain_code).where(c.c.version_id == version_id, c.c.domain == "province", c.c.domain_code > after).distinct()
    if only:
        query = query.where(c.c.domain_code == only)
    return list((await session.execute(query.order_by(c.c.domain_code).limit(limit))).scalars())


async def rankings(session: AsyncSession, tables: dict[str, Table], version_id: str, indicator: str,
                   province_code: str | None, after: int, limit: int | None) -> list[dict]:
    r = tables["release_ranking"]
    query = select(r).where(r.c.version_id == version_id, r.c.indicator == indicator, r.c.seq > after)
    if province_code:
        query = query.where(r.c.province_code == province_code)
    query = query.order_by(r.c.seq)
    if limit is not None:
        query = query.limit(limit)
    return [dict(x) for x in (await session.execute(query)).mappings()]


async def metadata_of(session: AsyncSession, tables: dict[str, Table], row: dict) -> ReleaseMetadata:
    sipas = await cells(session, tables, row["id"], domain="province", indicators=["sipas"], weighting="none")
    facts = row["facts"]
    return ReleaseMetadata(
        release_id=row["release_id"], version=row["version"], run_id=row["run_id"], wave=wave_facts(row),
        methodology_version=facts["methodology_version"], code_version=facts["code_version"],
        accepted_forms=facts["accepted_forms"],
        sample_sizes=[SampleSize(province_code=c["domain_code"], n=c["n"]) for c in sipas],
        published_at=row["publish_at"], correction_reason=row["correction_reason"], footnotes=row["footnotes"],
        previous_wave_id=facts["previous_wave_id"],
    )


async def render_precomputed(session: AsyncSession, tables: dict[str, Table], row: dict) -> dict[str, bytes]:
    metadata = await metadata_of(session, tables, row)
    national = await cells(session, tables, row["id"], domain="nation", indicators=["sipas", "part", "element"])
    base = f"/v1/public/releases/{row['release_id']}"
    q = f"?version={row['version']}"
    document = ReleaseDocument(
        metadata=metadata,
        national=[figure(c) for c in national],
        links={name: f"{base}/{name}{q}" for name in
               ("metadata", "national", "provinces", "items", "expectations", "rankings", "figures", "versions")},
    )
    return {"document": dumps(document), "metadata": dumps(metadata)}


def unit_era(wave: dict) -> str:
    start = wave.get("fieldwork_start")
    when = dt.date.fromisoformat(start) if start else dt.date(wave["year"], 12, 31)
    return "34-provinces" if when >= MERGER_DATE else "63-provinces"



# --- the hot path's cache: published bodies are immutable ---


class PublicCache:
    """Per process: each release's released versions (number, publish time, id) and the
    precomputed bodies, so a published release's GET (200 or 304) needs no database round trip.

    Bodies never change once released, so they are kept (LRU, bounded). The version list of a
    release is refreshed after ``ttl`` seconds (and at once in this process when a version is
    released): it lists scheduled versions with their ``publish_at`` too, so the embargo is still
    decided on every read, to the second. What another process releases appears here within
    ``ttl``; an embargo cannot be moved within ``RESCHEDULE_GUARD_SECONDS`` of its time (see
    service.release_version), so a stale list never shows a version early.
    """

    def __init__(self, ttl: float = 1.0, max_releases: int = 10_000, max_bodies: int = 4096) -> None:
        from collections import OrderedDict

        self.ttl = ttl
        self.max_releases = max_releases
        self.max_bodies = max_bodies
        self.releases: dict[str, tuple[float, list[tuple[int, dt.datetime, str]]]] = {}
        self.bodies: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self.loading: dict[str, asyncio.Future] = {}
        self.generation = 0

    def invalidate(self, release_id: str | None = None) -> None:
        self.generation += 1  # a reload begun before this must not store what it read
        if release_id is None:
            self.releases.clear()
            self.loading.clear()
        else:
            self.releases.pop(release_id, None)
            self.loading.pop(release_id, None)

    def fresh_versions(self, release_id: str) -> list[tuple[int, dt.datetime, str]] | None:
        """The cached version list if it is fresh, else None (no await: the fast path's hit).

        A list past its ``ttl`` still answers while another request is reloading it, up to twice
        the ttl: otherwise every request in flight when it expires queues its own query (a busy
        process sent one per open connection each second, and those requests were the p99)."""
        hit = self.releases.get(release_id)
        if hit is not None:
            age = monotonic() - hit[0]
            if age < self.ttl or (age < 2 * self.ttl and release_id in self.loading):
                return hit[1]
        return None

    def cached_body(self, version_id: str, resource: str) -> dict | None:
        hit = self.bodies.get((version_id, resource))
        if hit is not None:
            self.bodies.move_to_end((version_id, resource))
        return hit

    async def versions(self, session_factory, tables: dict[str, Table], release_id: str) -> list[tuple[int, dt.datetime, str]]:
        """The version list, reloaded once per ``ttl``: one query per release in flight at a time,
        which the requests that need it share."""
        hit = self.releases.get(release_id)
        if hit is not None and monotonic() - hit[0] < self.ttl:
            return hit[1]
        pending = self.loading.get(release_id)
        if pending is None:
            pending = self.loading[release_id] = asyncio.ensure_future(
                self._load(session_factory, tables, release_id, self.generation))
            pending.add_done_callback(lambda done: self._loaded(release_id, done))
        # shielded: a client that hangs up must not cancel the query the others wait for
        return await asyncio.shield(pending)

    def _loaded(self, release_id: str, done: asyncio.Future) -> None:
        if self.loading.get(release_id) is done:
            del self.loading[release_id]
        if not done.cancelled():
            done.exception()  # marked retrieved: its waiters re-raise it, but they may all have gone

    async def _load(self, session_factory, tables: dict[str, Table], release_id: str,
                    generation: int) -> list[tuple[int, dt.datetime, str]]:
        now = monotonic()
        t = tables["release_version"]
        async with session_factory() as session:
            rows = (await session.execute(
                select(t.c.version, t.c.publish_at, t.c.id)
                .where(t.c.release_id == release_id, t.c.status == "released")
                .order_by(t.c.version)
            )).all()
        versions = [(r[0], r[1], r[2]) for r in rows]
        if len(self.releases) >= self.max_releases:  # unknown ids are cached too: bound the memory
            self.releases.clear()
        if generation == self.generation:
            self.releases[release_id] = (now, versions)
        return versions

    async def body(self, session_factory, tables: dict[str, Table], version_id: str, resource: str) -> dict | None:
        key = (version_id, resource)
        hit = self.bodies.get(key)
        if hit is not None:
            self.bodies.move_to_end(key)
            return hit
        b = tables["release_body"]
        async with session_factory() as session:
            row = (await session.execute(
                select(b.c.etag, b.c.body, b.c.media_type).where(b.c.version_id == version_id, b.c.resource == resource)
            )).mappings().first()
        if row is None:
            return None
        self.bodies[key] = dict(row)
        if len(self.bodies) > self.max_bodies:
            self.bodies.popitem(last=False)
        return self.bodies[key]


def pick_visible(versions: list[tuple[int, dt.datetime, str]], at: dt.datetime, version: int | None):
    """The highest version published by ``at`` (or exactly ``version`` if published by then)."""
    for v in reversed(versions):  # sorted by version number
        if v[1] <= at and (version is None or v[0] == version):
            return v
    return None
