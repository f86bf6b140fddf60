"""Publication's management API: releases for the ministry and observers, webhooks for portals.

The public read side is in ``public_api.py``; this side needs a key.

* ``ministry`` creates a draft from a final index run, approves, schedules (embargo) or
  publishes now, and corrects (a new version with a reason);
* ``observer`` (Fatherland Front, Veterans' Association) reads drafts and comments;
* ``portal`` (the CCHC portal, provincial portals, dashboards) registers webhooks.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sqlalchemy import or_, select, update

from services.publication import public, service, webhooks
from services.publication.schemas import (
    AttemptRead,
    CommentCreate,
    CommentPage,
    CommentRead,
    CorrectionCreate,
    DeliveryList,
    DeliveryRead,
    FigurePage,
    IndexRunPage,
    IndexRunRead,
    PublishBody,
    ReleaseCreate,
    ReleaseList,
    ReleaseRead,
    VersionRead,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookRead,
)
from shared.auth import Principal, Role, require_roles
from shared.errors import Conflict, NotFound, problem_responses
from shared.service import read_session, unit_of_work

UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
ReleaseId = Annotated[str, Path(pattern=UUID_PATTERN, max_length=36, description="Release id")]
VersionNo = Annotated[int, Path(ge=1, le=100000, description="Version number (1 = the first publication)")]
HookId = Annotated[str, Path(pattern=UUID_PATTERN, max_length=36, description="Webhook id")]
DeliveryId = Annotated[str, Path(pattern=UUID_PATTERN, max_length=36, description="Delivery id")]

Ministry = Annotated[Principal, Depends(require_roles(Role.ministry))]
Reviewer = Annotated[Principal, Depends(require_roles(Role.ministry, Role.observer))]
Subscriber = Annotated[Principal, Depends(require_roles(Role.portal, Role.ministry))]

router = APIRouter(prefix="/v1", tags=["releases"])
hooks = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _now(request: Request) -> dt.datetime:
    return request.app.state.clock()


# --- index runs ---


@router.get("/runs", response_model=IndexRunPage, summary="Index runs announced by indexing (final ones can be released)")
async def list_runs(
    request: Request, principal: Reviewer,
    wave_id: Annotated[str | None, Query(pattern=UUID_PATTERN, max_length=36)] = None,
) -> IndexRunPage:
    t = request.app.state.tables["index_run"]
    query = select(t).order_by(t.c.completed_at.desc()).limit(500)
    if wave_id:
        query = query.where(t.c.wave_id == wave_id)
    async with read_session(request) as session:
        rows = (await session.execute(query)).mappings()
        return IndexRunPage(items=[IndexRunRead(**r) for r in rows])


# --- releases ---


@router.post("/releases", response_model=ReleaseRead, status_code=201, responses=problem_responses(413, 503),
             summary="Create a draft release from a final index run (its figures are copied and frozen)")
async def create_release(body: ReleaseCreate, request: Request, principal: Ministry) -> ReleaseRead:
    tables = request.app.state.tables
    async with read_session(request) as session:
        run = await service.final_run(session, tables, str(body.run_id))
    export = await service.fetch_export(request.app, run)  # outside any transaction (an HTTP call)
    async with unit_of_work(request) as session:
        release_id = await service.create_release(session, tables, principal, body, export)
    async with read_session(request) as session:
        return await service.release_read(session, tables, release_id, _now(request))


@router.get("/releases", response_model=ReleaseList, summary="Every release with its versions (drafts included)")
async def list_releases(request: Request, principal: Reviewer) -> ReleaseList:
    async with read_session(request) as session:
        return ReleaseList(items=await service.list_releases(session, request.app.state.tables, _now(request)))


@router.get("/releases/{release_id}", response_model=ReleaseRead, summary="A release and all its versions")
async def get_release(release_id: ReleaseId, request: Request, principal: Reviewer) -> ReleaseRead:
    async with read_session(request) as session:
        return await service.release_read(session, request.app.state.tables, release_id, _now(request))


@router.get("/releases/{release_id}/versions/{version}/figures", response_model=FigurePage,
            summary="A version's figures, drafts included (for review before approval)")
async def version_figures(
    release_id: ReleaseId, version: VersionNo, request: Request, principal: Reviewer,
    domain: Annotated[str | None, Query(pattern=r"^[a-z_]{1,20}$")] = None,
    indicator: Annotated[str | None, Query(pattern=r"^[a-z]{1,20}$")] = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> FigurePage:
    tables = request.app.state.tables
    async with read_session(request) as session:
        row = await service.get_version(session, tables, release_id, version)
        found = await public.cells(session, tables, row["id"], domain=domain,
                                   indicators=[indicator] if indicator else None, after=after, limit=limit + 1)
    page = found[:limit]
    cursor = str(page[-1]["seq"]) if len(found) > limit else None
    return FigurePage(release_id=release_id, version=version, items=[public.figure(c) for c in page], next_cursor=cursor)


@router.post("/releases/{release_id}/corrections", response_model=VersionRead, status_code=201,
             responses=problem_responses(413, 503),
             summary="Correct a published release: a new draft version with a reason (earlier versions stay readable)")
async def create_correction(release_id: ReleaseId, body: CorrectionCreate, request: Request, principal: Ministry) -> VersionRead:
    tables = request.app.state.tables
    async with read_session(request) as session:
        release = await service.get_release_row(session, tables, release_id)
        run_id = str(body.run_id) if body.run_id else None
        if run_id is None:
            versions = await service._versions(session, tables, release_id)
            run_id = versions[-1]["run_id"]
        run = await service.final_run(session, tables, run_id)
    if run["wave_id"] != release["wave_id"]:
        raise Conflict("A correction must come from a run of the release's wave.")
    export = await service.fetch_export(request.app, run)
    async with unit_of_work(request) as session:
        version = await service.create_correction(session, tables, principal, release_id, body, export, _now(request))
    async with read_session(request) as session:
        return service.version_read(await service.get_version(session, tables, release_id, version), _now(request))


@router.post("/releases/{release_id}/versions/{version}/approve", response_model=VersionRead,
             summary="Approve a draft version (after consulting the observers)")
async def approve(release_id: ReleaseId, version: VersionNo, request: Request, principal: Ministry) -> VersionRead:
    tables = request.app.state.tables
    async with unit_of_work(request) as session:
        await service.approve(session, tables, principal, release_id, version)
    async with read_session(request) as session:
        return service.version_read(await service.get_version(session, tables, release_id, version), _now(request))


@router.post("/releases/{release_id}/versions/{version}/publish", response_model=VersionRead,
             responses=problem_responses(413),
             summary="Publish an approved version now, or schedule it (embargo, to the second)")
async def publish(
    release_id: ReleaseId, version: VersionNo, request: Request, principal: Ministry, body: PublishBody | None = None,
) -> VersionRead:
    tables = request.app.state.tables
    async with unit_of_work(request) as session:
        row = await service.release_version(session, tables, principal, release_id, version,
                                            body.publish_at if body else None, _now(request))
    request.app.state.public_cache.invalidate(release_id)
    request.app.state.scheduler.notify()  # announce (event, webhooks) without waiting for the poll
    return service.version_read(row, _now(request))


@router.post("/releases/{release_id}/versions/{version}/comments", response_model=CommentRead, status_code=201,
             responses=problem_responses(413), summary="Comment on a version (observers' supervision, giám sát)")
async def add_comment(
    release_id: ReleaseId, version: VersionNo, body: CommentCreate, request: Request, principal: Reviewer,
) -> CommentRead:
    tables = request.app.state.tables
    async with unit_of_work(request) as session:
        await service.add_comment(session, tables, principal, release_id, version, body.text)
    async with read_session(request) as session:
        rows = await service.comments(session, tables, release_id, version)
    return CommentRead(**{k: rows[-1][k] for k in CommentRead.model_fields})


@router.get("/releases/{release_id}/versions/{version}/comments", response_model=CommentPage,
            summary="Comments on a version, oldest first")
async def list_comments(release_id: ReleaseId, version: VersionNo, request: Request, principal: Reviewer) -> CommentPage:
    async with read_session(request) as session:
        rows = await service.comments(session, request.app.state.tables, release_id, version)
    return CommentPage(items=[CommentRead(**{k: r[k] for k in CommentRead.model_fields}) for r in rows])


# --- webhooks ---


def _hook_read(row) -> dict:
    return {k: row[k] for k in WebhookRead.model_fields}


async def _own_hook(session, request: Request, principal: Principal, hook_id: str) -> dict:
    w = request.app.state.tables["webhook"]
    row = (await session.execute(select(w).where(w.c.id == hook_id))).mappings().first()
    # Another subscriber's webhook is "not found": a key cannot probe who else subscribes.
    if row is None or (principal.role == Role.portal and row["owner_key_id"] != principal.key_id):
        raise NotFound(f"No webhook {hook_id}.")
    return dict(row)


@hooks.post("", response_model=WebhookCreated, status_code=201, responses=problem_responses(413),
            summary="Subscribe a URL to publication and correction notices (the secret is shown once)")
async def create_webhook(body: WebhookCreate, request: Request, principal: Subscriber) -> WebhookCreated:
    production = request.app.state.settings.platform.environment == "production"
    url = webhooks.check_url(body.url, production=production)
    w = request.app.state.tables["webhook"]
    row = {
        "id": webhooks.new_id(), "owner_key_id": principal.key_id, "owner": principal.actor, "url": url,
        "secret": webhooks.new_secret(), "active": True, "consecutive_failures": 0, "disabled_at": None,
        "disabled_reason": None, "created_at": _now(request),
    }
    async with unit_of_work(request) as session:
        await session.execute(w.insert().values(**row))
        from shared import audit

        await audit.record(session, request.app.state.tables["audit_log"], principal, "webhook.create", "webhook",
                           row["id"], details={"url": url})
    return WebhookCreated(**_hook_read(row), secret=row["secret"])


@hooks.get("", response_model=WebhookList, summary="Your webhooks (the ministry sees all)")
async def list_webhooks(request: Request, principal: Subscriber) -> WebhookList:
    w = request.app.state.tables["webhook"]
    query = select(w).order_by(w.c.created_at)
    if principal.role == Role.portal:
        query = query.where(w.c.owner_key_id == principal.key_id)
    async with read_session(request) as session:
        rows = (await session.execute(query)).mappings()
        return WebhookList(items=[WebhookRead(**_hook_read(r)) for r in rows])


@hooks.get("/{hook_id}", response_model=WebhookRead, summary="A webhook")
async def get_webhook(hook_id: HookId, request: Request, principal: Subscriber) -> WebhookRead:
    async with read_session(request) as session:
        return WebhookRead(**_hook_read(await _own_hook(session, request, principal, hook_id)))


@hooks.delete("/{hook_id}", status_code=204, response_class=Response, summary="Unsubscribe (deliveries stop)")
async def delete_webhook(hook_id: HookId, request: Request, principal: Subscriber) -> Response:
    w = request.app.state.tables["webhook"]
    async with unit_of_work(request) as session:
        await _own_hook(session, request, principal, hook_id)
        await session.execute(update(w).where(w.c.id == hook_id).values(
            active=False, disabled_at=_now(request), disabled_reason="unsubscribed by its owner"))
    return Response(status_code=204)


@hooks.post("/{hook_id}/enable", response_model=WebhookRead,
            summary="Re-enable a webhook disabled after repeated failures (pending deliveries resume)")
async def enable_webhook(hook_id: HookId, request: Request, principal: Subscriber) -> WebhookRead:
    w = request.app.state.tables["webhook"]
    async with unit_of_work(request) as session:
        await _own_hook(session, request, principal, hook_id)
        await session.execute(update(w).where(w.c.id == hook_id).values(
            active=True, consecutive_failures=0, disabled_at=None, disabled_reason=None))
    async with read_session(request) as session:
        return WebhookRead(**_hook_read(await _own_hook(session, request, principal, hook_id)))


async def _delivery_reads(session, request: Request, hook_id: str, delivery_id: str | None = None) -> list[DeliveryRead]:
    tables = request.app.state.tables
    d, a, v = tables["webhook_delivery"], tables["webhook_attempt"], tables["release_version"]
    query = (select(d, v.c.release_id, v.c.version).join(v, v.c.id == d.c.version_id)
             .where(d.c.webhook_id == hook_id).order_by(d.c.created_at.desc()).limit(200))
    if delivery_id:
        query = query.where(d.c.id == delivery_id)
    rows = [dict(r) for r in (await session.execute(query)).mappings()]
    attempts: dict[str, list[AttemptRead]] = {r["id"]: [] for r in rows}
    if rows:
        found = await session.execute(select(a).where(a.c.delivery_id.in_(list(attempts))).order_by(a.c.seq))
        for x in found.mappings():
            attempts[x["delivery_id"]].append(AttemptRead(**{k: x[k] for k in AttemptRead.model_fields}))
    return [DeliveryRead(
        id=r["id"], webhook_id=r["webhook_id"], event=r["event"], release_id=r["release_id"], version=r["version"],
        status=r["status"], attempts=r["attempts"], next_attempt_at=r["next_attempt_at"], created_at=r["created_at"],
        delivered_at=r["delivered_at"], log=attempts[r["id"]],
    ) for r in rows]


@hooks.get("/{hook_id}/deliveries", response_model=DeliveryList, summary="Delivery log: every delivery and attempt")
async def list_deliveries(hook_id: HookId, request: Request, principal: Subscriber) -> DeliveryList:
    async with read_session(request) as session:
        await _own_hook(session, request, principal, hook_id)
        return DeliveryList(items=await _delivery_reads(session, request, hook_id))


@hooks.post("/{hook_id}/deliveries/{delivery_id}/replay", response_model=DeliveryRead,
            summary="Send a delivery again now (same delivery id and payload, fresh signature)")
async def replay_delivery(hook_id: HookId, delivery_id: DeliveryId, request: Request, principal: Subscriber) -> DeliveryRead:
    d = request.app.state.tables["webhook_delivery"]
    async with read_session(request) as session:
        hook = await _own_hook(session, request, principal, hook_id)
        row = (await session.execute(select(d).where(d.c.id == delivery_id, d.c.webhook_id == hook_id))).mappings().first()
    if row is None:
        raise NotFound(f"No delivery {delivery_id} for webhook {hook_id}.")
    if not hook["active"]:
        raise Conflict("The webhook is disabled; enable it first (POST .../enable).")
    if row["status"] == "pending":
        raise Conflict("The delivery is still being retried automatically; replay it once it has failed or succeeded.")
    # Claim the replay with a conditional update, so that two replays sent at once (a double
    # click, a retrying client) make one POST: the second finds the lease and gets 409. The
    # lease ends when the attempt is recorded (send clears it) or, after a crash, on its own.
    now = request.app.state.clock()
    lease = now + dt.timedelta(seconds=request.app.state.settings.webhook_timeout_seconds + 30)
    async with unit_of_work(request) as session:
        claimed = await session.execute(
            update(d).where(d.c.id == delivery_id, d.c.status != "pending",
                            or_(d.c.next_attempt_at.is_(None), d.c.next_attempt_at <= now))
            .values(next_attempt_at=lease)
        )
    if claimed.rowcount != 1:
        raise Conflict("The delivery is already being sent (a replay or a retry is in progress); "
                       "read its log and replay it once that attempt is recorded.")
    await webhooks.send(request.app, delivery_id, replay=True)
    async with read_session(request) as session:
        return (await _delivery_reads(session, request, hook_id, delivery_id))[0]
