"""Releases: from a final index run to a public, versioned release (công bố).

Each operation runs in the caller's transaction and writes its audit entry and events there too.
A version's content (cells, rankings, the wave's facts, footnotes) is frozen when the version is
created; approving and scheduling only set who and when. Public visibility is never a stored
flag: a version is public at instant t iff it was released with ``publish_at <= t``, so an
embargo holds to the second whether or not the background task has run, and "as of" reads of
the past are exact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import Table, and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.publication.schemas import (
    ReleaseCreate,
    CorrectionCreate,
    RunExport,
    VersionRead,
    ReleaseRead,
    WebhookPayload,
)
from shared import audit
from shared.auth import Principal
from shared.contracts.publication import ReleasePublished
from shared.db import insert_for, utcnow
from shared.errors import Conflict, InvalidState, NotFound
from shared.outbox import add_event
from shared.peers import call

RELEASED = "released"
# A scheduled embargo can be moved only while it is at least this far away (public caches
# refresh their version lists every second; this leaves them ample time).
RESCHEDULE_GUARD_SECONDS = 10


def whole_second(t: dt.datetime) -> dt.datetime:
    """Embargoes are kept to the second: a publish time never carries a fraction."""
    return t.astimezone(dt.UTC).replace(microsecond=0)


def public_status(row: Any, now: dt.datetime) -> str:
    if row["status"] != RELEASED:
        return row["status"]
    return "published" if row["publish_at"] <= now else "scheduled"


def visible(table: Table, at: dt.datetime):
    """SQL condition: the version is public at instant ``at``."""
    return and_(table.c.status == RELEASED, table.c.publish_at <= at)


def canonical_hash(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


# --- index runs (from indexing's events) ---


async def record_run(session: AsyncSession, table: Table, payload: Any) -> None:
    """Remember a completed run; a redelivered or repeated announcement changes nothing."""
    stmt = insert_for(session, table).values(
        run_id=str(payload.run_id),
        wave_id=str(payload.wave_id),
        kind=payload.kind,
        methodology_version=payload.methodology_version,
        accepted_fingerprint=payload.accepted_fingerprint,
        accepted_forms=payload.accepted_forms,
        code_version=payload.code_version,
        completed_at=payload.completed_at,
        national_sipas=payload.national_sipas,
        received_at=utcnow(),
    ).on_conflict_do_nothing(index_elements=["run_id"])
    await session.execute(stmt)


async def final_run(session: AsyncSession, tables: dict[str, Table], run_id: str) -> dict:
    row = (await session.execute(select(tables["index_run"]).where(tables["index_run"].c.run_id == run_id))).mappings().first()
    if row is None:
        raise NotFound(f"No index run {run_id} has been announced to publication.")
    if row["kind"] != "final":
        raise InvalidState(f"Run {run_id} is {row['kind']}: only a final run can be released.")
    return dict(row)


async def fetch_export(app: FastAPI, run: dict) -> RunExport:
    """Fetch a run's full results from indexing once (internal token), checked against what its
    event announced. Only the fields publication declares are kept (allow-list)."""
    run_id = run["run_id"]
    response = await call(app, "indexing", "GET", f"/v1/runs/{run_id}/export")
    if response.status_code == 404:
        raise InvalidState(f"The indexing service does not know run {run_id}.")
    if response.status_code != 200:
        raise InvalidState(f"The indexing service answered {response.status_code} for the export of run {run_id}.")
    try:
        export = RunExport.model_validate_json(response.content)
    except ValidationError as exc:
        errors = [{"loc": [str(p) for p in e["loc"]][:6], "msg": e["msg"]} for e in exc.errors()[:10]]
        raise InvalidState(f"The export of run {run_id} does not match the contract.", errors=errors) from exc
    got = export.run
    if (str(got.run_id), str(got.wave_id), got.kind, got.accepted_fingerprint) != (
        run_id, run["wave_id"], "final", run["accepted_fingerprint"]
    ):
        raise InvalidState(f"The export of run {run_id} is not the run its event announced.")
    return export


# --- building a version's frozen content ---


async def _wave_facts(session: AsyncSession, tables: dict[str, Table], wave_id: str) -> dict:
    row = (await session.execute(select(tables["wave"]).where(tables["wave"].c.id == wave_id))).mappings().first()
    if row is None:
        raise InvalidState(f"Wave {wave_id} has not reached publication yet; try again shortly.")
    return {
        "wave_id": row["id"], "code": row["code"], "name": row["name"], "year": row["year"], "scope": row["scope"],
        "province_code": row["province_code"],
        "fieldwork_start": row["fieldwork_start"].isoformat() if row["fieldwork_start"] else None,
        "fieldwork_end": row["fieldwork_end"].isoformat() if row["fieldwork_end"] else None,
    }


def _sort_cells(cells):
    return sorted(cells, key=lambda c: (c.domain, c.domain_code, c.indicator, c.code, c.weighting))


async def _add_version(
    session: AsyncSession,
    tables: dict[str, Table],
    principal: Principal,
    *,
    release_id: str,
    version: int,
    export: RunExport,
    footnotes: list[str],
    correction_reason: str | None,
) -> str:
    run = export.run
    facts = {
        "wave": await _wave_facts(session, tables, str(run.wave_id)),
        "methodology_version": run.methodology_version,
        "code_version": run.code_version,
        "accepted_forms": run.accepted_forms,
        "accepted_fingerprint": run.accepted_fingerprint,
        "previous_wave_id": str(run.previous_wave_id) if run.previous_wave_id else None,
    }
    cells = [c.model_dump() for c in _sort_cells(export.cells)]
    for c in cells:
        if c["flag"] == "suppressed":  # a suppressed cell never carries a figure, whatever was sent
            c.update(value=None, se=None, ci_low=None, ci_high=None, cv=None, deff=None)
    rankings = sorted((r.model_dump() for r in export.rankings), key=lambda r: (r["indicator"], r["rank"] is None, r["rank"] or 0, r["province_code"]))
    content_hash = canonical_hash(
        {"release": release_id, "version": version, "facts": facts, "footnotes": footnotes,
         "reason": correction_reason, "cells": cells, "rankings": rankings}
    )
    version_id = str(uuid.uuid4())
    await session.execute(
        tables["release_version"].insert().values(
            id=version_id, release_id=release_id, version=version, run_id=str(run.run_id), status="draft",
            correction_reason=correction_reason, footnotes=footnotes, facts=facts, content_hash=content_hash,
            created_at=utcnow(), created_by=principal.actor,
        )
    )
    if cells:
        await session.execute(tables["release_cell"].insert(), [{"version_id": version_id, **c} for c in cells])
    if rankings:
        await session.execute(tables["release_ranking"].insert(), [{"version_id": version_id, **r} for r in rankings])
    return version_id


async def create_release(
    session: AsyncSession, tables: dict[str, Table], principal: Principal, body: ReleaseCreate, export: RunExport
) -> str:
    wave_id = str(export.run.wave_id)
    existing = await session.scalar(select(tables["release"].c.id).where(tables["release"].c.wave_id == wave_id))
    if existing:
        raise Conflict(f"Wave {wave_id} has a release already; publish a correction instead.", release_id=existing)
    release_id = str(uuid.uuid4())
    try:
        async with session.begin_nested():
            await session.execute(
                tables["release"].insert().values(id=release_id, wave_id=wave_id, created_at=utcnow(), created_by=principal.actor)
            )
    except IntegrityError as exc:  # a concurrent create for the same wave
        raise Conflict(f"Wave {wave_id} has a release already.") from exc
    await _add_version(session, tables, principal, release_id=release_id, version=1, export=export,
                       footnotes=list(body.footnotes), correction_reason=None)
    await audit.record(session, tables["audit_log"], principal, "release.create", "release", release_id,
                       wave_id=wave_id, details={"run_id": str(body.run_id), "version": 1})
    return release_id


async def _versions(session: AsyncSession, tables: dict[str, Table], release_id: str) -> list[dict]:
    t = tables["release_version"]
    rows = (await session.execute(select(t).where(t.c.release_id == release_id).order_by(t.c.version))).mappings()
    return [dict(r) for r in rows]


async def get_release_row(session: AsyncSession, tables: dict[str, Table], release_id: str) -> dict:
    row = (await session.execute(select(tables["release"]).where(tables["release"].c.id == release_id))).mappings().first()
    if row is None:
        raise NotFound(f"No release {release_id}.")
    return dict(row)


async def create_correction(
    session: AsyncSession, tables: dict[str, Table], principal: Principal, release_id: str,
    body: CorrectionCreate, export: RunExport, now: dt.datetime | None = None,
) -> int:
    release = await get_release_row(session, tables, release_id)
    if str(export.run.wave_id) != release["wave_id"]:
        raise InvalidState("A correction must come from a run of the same wave.")
    versions = await _versions(session, tables, release_id)
    latest = versions[-1]
    now = now or utcnow()
    if public_status(latest, now) != "published":
        raise InvalidState(
            f"Version {latest['version']} is {public_status(latest, now)}: a correction follows a public version "
            "(finish the open one first)."
        )
    version = latest["version"] + 1
    footnotes = list(body.footnotes) if body.footnotes is not None else list(latest["footnotes"])
    try:
        async with session.begin_nested():
            await _add_version(session, tables, principal, release_id=release_id, version=version, export=export,
                               footnotes=footnotes, correction_reason=body.reason)
    except IntegrityError as exc:
        raise Conflict(f"Version {version} of release {release_id} was just created by another request.") from exc
    await audit.record(session, tables["audit_log"], principal, "release.correct", "release", release_id,
                       wave_id=release["wave_id"], reason=body.reason,
                       details={"run_id": str(export.run.run_id), "version": version})
    return version


async def get_version(session: AsyncSession, tables: dict[str, Table], release_id: str, version: int) -> dict:
    t = tables["release_version"]
    row = (await session.execute(select(t).where(t.c.release_id == release_id, t.c.version == version))).mappings().first()
    if row is None:
        raise NotFound(f"No version {version} of release {release_id}.")
    return dict(row)


async def approve(session: AsyncSession, tables: dict[str, Table], principal: Principal, release_id: str, version: int) -> None:
    row = await get_version(session, tables, release_id, version)
    if row["status"] != "draft":
        raise InvalidState(f"Version {version} is {public_status(row, utcnow())}, not a draft.")
    t = tables["release_version"]
    await session.execute(
        update(t).where(t.c.id == row["id"]).values(status="approved", approved_at=utcnow(), approved_by=principal.actor)
    )
    await audit.record(session, tables["audit_log"], principal, "release.approve", "release", release_id,
                       wave_id=row["facts"]["wave"]["wave_id"], details={"version": version})


async def release_version(
    session: AsyncSession, tables: dict[str, Table], principal: Principal, release_id: str, version: int,
    publish_at: dt.datetime | None, now: dt.datetime | None = None,
) -> dict:
    """Schedule (``publish_at`` in the future) or publish now (``None``). An approved version, or
    a scheduled one whose embargo has not passed (rescheduling), may be released."""
    row = await get_version(session, tables, release_id, version)
    now = now or utcnow()
    state = public_status(row, now)
    if state not in ("approved", "scheduled"):
        raise InvalidState(f"Version {version} is {state}: only an approved or scheduled version can be released.")
    if state == "scheduled" and (row["publish_at"] - now).total_seconds() < RESCHEDULE_GUARD_SECONDS:
        # Caches of other processes may hold the current embargo for a moment: too close to move.
        raise InvalidState(f"Version {version} becomes public in less than {RESCHEDULE_GUARD_SECONDS} s; "
                           "it can no longer be rescheduled.")
    if publish_at is None:
        when = whole_second(now)
        action = "release.publish"
    else:
        if publish_at.tzinfo is None:
            raise InvalidState("publish_at needs a time zone offset (e.g. +07:00 or Z).")
        when = whole_second(publish_at)
        if when <= now:
            raise InvalidState("publish_at is not in the future; publish now instead.")
        action = "release.schedule"
    t = tables["release_version"]
    # The guard on the old state makes two racing releases of one version a conflict, not a mix.
    result = await session.execute(
        update(t)
        .where(t.c.id == row["id"], t.c.status == row["status"], (t.c.publish_at.is_(None)) | (t.c.publish_at > now))
        .values(status=RELEASED, publish_at=when)
    )
    if result.rowcount != 1:
        raise Conflict(f"Version {version} changed meanwhile; read it again.")
    row.update(status=RELEASED, publish_at=when)
    await precompute_bodies(session, tables, row)
    await audit.record(session, tables["audit_log"], principal, action, "release", release_id,
                       wave_id=row["facts"]["wave"]["wave_id"], details={"version": version, "publish_at": when.isoformat()})
    return row


async def add_comment(session: AsyncSession, tables: dict[str, Table], principal: Principal, release_id: str,
                      version: int, text: str) -> None:
    row = await get_version(session, tables, release_id, version)
    await session.execute(
        tables["release_comment"].insert().values(
            version_id=row["id"], author=principal.actor, role=principal.role.value, text=text, created_at=utcnow()
        )
    )
    await audit.record(session, tables["audit_log"], principal, "release.comment", "release", release_id,
                       wave_id=row["facts"]["wave"]["wave_id"], details={"version": version})


async def comments(session: AsyncSession, tables: dict[str, Table], release_id: str, version: int) -> list[dict]:
    row = await get_version(session, tables, release_id, version)
    t = tables["release_comment"]
    rows = (await session.execute(select(t).where(t.c.version_id == row["id"]).order_by(t.c.seq))).mappings()
    return [{**r, "version": version} for r in rows]


def version_read(row: dict, now: dt.datetime) -> VersionRead:
    return VersionRead(
        release_id=row["release_id"], version=row["version"], run_id=row["run_id"], status=public_status(row, now),
        correction_reason=row["correction_reason"], footnotes=row["footnotes"], publish_at=row["publish_at"],
        announced_at=row["announced_at"], approved_at=row["approved_at"], approved_by=row["approved_by"],
        created_at=row["created_at"], created_by=row["created_by"],
    )


async def release_read(session: AsyncSession, tables: dict[str, Table], release_id: str,
                       now: dt.datetime | None = None) -> ReleaseRead:
    release = await get_release_row(session, tables, release_id)
    now = now or utcnow()
    versions = [version_read(v, now) for v in await _versions(session, tables, release_id)]
    return ReleaseRead(**release, versions=versions)


async def list_releases(session: AsyncSession, tables: dict[str, Table], now: dt.datetime | None = None) -> list[ReleaseRead]:
    ids = (await session.scalars(select(tables["release"].c.id).order_by(tables["release"].c.created_at.desc()).limit(500))).all()
    return [await release_read(session, tables, i, now) for i in ids]


# --- precomputed public bodies ---


async def precompute_bodies(session: AsyncSession, tables: dict[str, Table], version_row: dict) -> None:
    """Render the version's release document and metadata once, when it is released: public
    reads serve these bytes and their hash as they are."""
    from services.publication import public

    t = tables["release_body"]
    await session.execute(delete(t).where(t.c.version_id == version_row["id"]))
    for resource, body in (await public.render_precomputed(session, tables, version_row)).items():
        await session.execute(
            t.insert().values(version_id=version_row["id"], resource=resource, media_type="application/json",
                              etag=public.etag_of(body), body=body)
        )


# --- announcing (event + webhooks) ---


async def announce_due(session: AsyncSession, tables: dict[str, Table], now: dt.datetime | None = None) -> int:
    """Announce every released version whose embargo has passed and that was not announced yet:
    stage ReleasePublished and queue one webhook delivery per active subscriber. Runs from the
    background task and right after "publish now"; the ``announced_at IS NULL`` guard makes each
    version announced once even when two replicas race."""
    now = now or utcnow()
    t = tables["release_version"]
    query = select(t).where(visible(t, now), t.c.announced_at.is_(None)).order_by(t.c.publish_at).limit(50)
    if session.bind.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = [dict(r) for r in (await session.execute(query)).mappings()]
    announced = 0
    for row in rows:
        result = await session.execute(
            update(t).where(t.c.id == row["id"], t.c.announced_at.is_(None)).values(announced_at=now)
        )
        if result.rowcount != 1:
            continue
        wave_id = row["facts"]["wave"]["wave_id"]
        await add_event(session, tables["outbox"], ReleasePublished(
            release_id=uuid.UUID(row["release_id"]), version=row["version"], wave_id=uuid.UUID(wave_id),
            run_id=uuid.UUID(row["run_id"]), published_at=row["publish_at"], correction_reason=row["correction_reason"],
        ))
        await queue_deliveries(session, tables, row, now)
        announced += 1
    return announced


async def queue_deliveries(session: AsyncSession, tables: dict[str, Table], row: dict, now: dt.datetime) -> None:
    hooks = (await session.execute(select(tables["webhook"].c.id).where(tables["webhook"].c.active.is_(True)))).scalars().all()
    d = tables["webhook_delivery"]
    for hook_id in hooks:
        delivery_id = str(uuid.uuid4())
        payload = WebhookPayload(
            event="release.published" if row["version"] == 1 else "release.corrected",
            delivery_id=delivery_id, release_id=row["release_id"], version=row["version"],
            wave_id=row["facts"]["wave"]["wave_id"], published_at=row["publish_at"],
            correction_reason=row["correction_reason"],
            url=f"/v1/public/releases/{row['release_id']}?version={row['version']}",
        )
        stmt = insert_for(session, d).values(
            id=delivery_id, webhook_id=hook_id, version_id=row["id"], event=payload.event,
            payload=payload.model_dump(mode="json"), status="pending", attempts=0, next_attempt_at=now, created_at=now,
        ).on_conflict_do_nothing(index_elements=["webhook_id", "version_id"])
        await session.execute(stmt)


async def count_versions(session: AsyncSession, tables: dict[str, Table]) -> int:
    return int(await session.scalar(select(func.count()).select_from(tables["release_version"])) or 0)
