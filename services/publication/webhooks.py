"""Change notification: signed webhook POSTs to portals and dashboards, and the task that sends them.

A subscriber (``portal`` key; the national CCHC portal is one) registers a URL and receives a
secret once. When a release version becomes public (at its embargo time) the announcer stages
``ReleasePublished`` and queues one delivery per active subscriber, in one transaction; the
sender then POSTs each due delivery:

* body: ``WebhookPayload`` as JSON; headers ``X-SIPAS-Event``, ``X-SIPAS-Delivery`` (the same id
  on every retry and replay: receivers deduplicate on it) and ``X-SIPAS-Signature:
  t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>``. The timestamp is signed with the
  body, so a receiver can refuse a captured request replayed later (e.g. older than 5 minutes).
* any 2xx is success; anything else (status, timeout, refused connection) is a failed attempt,
  retried after ``base × 2^(attempt−1)`` seconds up to ``webhook_max_attempts``; every attempt is
  logged (``webhook_attempt``); ``webhook_disable_after`` consecutive failed attempts disable the
  subscription (its owner re-enables it).

Sending happens outside any transaction: a delivery is claimed by moving its ``next_attempt_at``
forward by a lease (a guarded UPDATE, so two replicas never send the same attempt), the POST is
made, and the outcome is recorded in a second transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from sqlalchemy import select, update

from shared.db import transaction
from shared.errors import BadRequest

log = logging.getLogger("sipas.publication.webhooks")

SIGNATURE_HEADER = "X-SIPAS-Signature"
DELIVERY_HEADER = "X-SIPAS-Delivery"
EVENT_HEADER = "X-SIPAS-Event"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float | None = None, tolerance: int = 300) -> bool:
    """What a receiver does (documented in docs/publication.md; used by the tests)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={parts.get('v1', '')}")


# --- URL policy ---


def _private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast or ip.is_unspecified


def check_url(url: str, *, production: bool) -> str:
    """A subscriber URL must be http(s) with a host; in production it may not point at loopback
    or private ranges (the service would otherwise POST into its own network on request)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise BadRequest("The webhook URL is malformed.") from None
    if parts.scheme not in ("http", "https"):
        raise BadRequest("The webhook URL must be http or https.")
    if not host:
        raise BadRequest("The webhook URL has no host.")
    if parts.username or parts.password:
        raise BadRequest("The webhook URL may not carry credentials; the signature authenticates the sender.")
    if production:
        if host == "localhost" or host.endswith(".localhost") or host.endswith(".local"):
            raise BadRequest("The webhook URL points at this machine's network, which production refuses.")
        with contextlib.suppress(ValueError):
            if _private(ipaddress.ip_address(host)):
                raise BadRequest("The webhook URL points at a loopback or private address, which production refuses.")
    return url


async def resolves_public(url: str) -> bool:
    """At delivery time in production: every address the host resolves to must be public (a
    name registered as public may later resolve to a private address)."""
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return all(not _private(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos)


# --- sending ---


def backoff(base: float, attempts: int) -> float:
    return base * 2 ** max(0, attempts - 1)


async def _claim_due(app: FastAPI, now: dt.datetime, limit: int = 20) -> list[str]:
    tables = app.state.tables
    d, w = tables["webhook_delivery"], tables["webhook"]
    lease = now + dt.timedelta(seconds=app.state.settings.webhook_timeout_seconds + 30)
    claimed = []
    async with transaction(app.state.sessions) as session:
        rows = (await session.execute(
            select(d.c.id, d.c.next_attempt_at)
            .join(w, w.c.id == d.c.webhook_id)
            .where(d.c.status == "pending", d.c.next_attempt_at <= now, w.c.active.is_(True))
            .order_by(d.c.next_attempt_at)
            .limit(limit)
        )).all()
        for delivery_id, due in rows:
            result = await session.execute(
                update(d).where(d.c.id == delivery_id, d.c.next_attempt_at == due, d.c.status == "pending")
                .values(next_attempt_at=lease)
            )
            if result.rowcount == 1:
                claimed.append(delivery_id)
    return claimed


async def send(app: FastAPI, delivery_id: str, *, replay: bool = False) -> dict:
    """Make one attempt of a delivery and record it; returns the delivery row after it."""
    tables = app.state.tables
    d, w, a = tables["webhook_delivery"], tables["webhook"], tables["webhook_attempt"]
    settings = app.state.settings
    async with app.state.sessions() as session:
        delivery = dict((await session.execute(select(d).where(d.c.id == delivery_id))).mappings().one())
        hook = dict((await session.execute(select(w).where(w.c.id == delivery["webhook_id"]))).mappings().one())
    body = json.dumps(delivery["payload"], ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(app.state.clock().timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "SIPAS-publication-webhooks/1",
        EVENT_HEADER: delivery["event"],
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: sign(hook["secret"], timestamp, body),
    }
    status_code: int | None = None
    error: str | None = None
    started = time.perf_counter()
    try:
        if app.state.settings.platform.environment == "production" and not await resolves_public(hook["url"]):
            error = "the URL does not resolve to public addresses only; not sent"
        else:
            response = await app.state.webhook_client.post(
                hook["url"], content=body, headers=headers, timeout=settings.webhook_timeout_seconds
            )
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    duration_ms = (time.perf_counter() - started) * 1000
    ok = error is None
    now = app.state.clock()
    async with transaction(app.state.sessions) as session:
        attempts = delivery["attempts"] + 1
        await session.execute(a.insert().values(
            delivery_id=delivery_id, attempt=attempts, at=now, status_code=status_code, error=error,
            duration_ms=round(duration_ms, 3), replay=replay,
        ))
        if ok:
            values: dict[str, Any] = {"status": "delivered", "delivered_at": now, "next_attempt_at": None}
            await session.execute(update(w).where(w.c.id == hook["id"]).values(consecutive_failures=0))
        elif replay or attempts >= settings.webhook_max_attempts:
            # A failed replay is not retried (its owner replays again when ready) and does not
            # undo an earlier success.
            values = {"status": "delivered" if delivery["status"] == "delivered" else "failed", "next_attempt_at": None}
        else:
            values = {"status": "pending",
                      "next_attempt_at": now + dt.timedelta(seconds=backoff(settings.webhook_retry_base_seconds, attempts))}
        await session.execute(update(d).where(d.c.id == delivery_id).values(attempts=attempts, **values))
        if not ok:
            failures = hook["consecutive_failures"] + 1
            changes: dict[str, Any] = {"consecutive_failures": failures}
            if failures >= settings.webhook_disable_after and hook["active"]:
                changes.update(active=False, disabled_at=now,
                               disabled_reason=f"{failures} consecutive failed deliveries (last: {error})")
                log.warning("webhook %s disabled after %d consecutive failures", hook["id"], failures)
            await session.execute(update(w).where(w.c.id == hook["id"]).values(**changes))
        delivery.update(attempts=attempts, **values)
    log.info("webhook delivery %s attempt %d: %s", delivery_id, attempts, "ok" if ok else error)
    return delivery


async def deliver_due(app: FastAPI) -> int:
    claimed = await _claim_due(app, app.state.clock())
    if claimed:
        await asyncio.gather(*(send(app, i) for i in claimed), return_exceptions=False)
    return len(claimed)


# --- the background task: announce released versions whose embargo passed, send deliveries ---


class Scheduler:
    """One loop per process: announce due versions, send due deliveries; woken early after a
    "publish now" and otherwise polling every ``scheduler_poll_seconds``."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.wake = asyncio.Event()
        self.task: asyncio.Task | None = None

    def notify(self) -> None:
        self.wake.set()

    async def run_once(self) -> tuple[int, int]:
        from services.publication import service

        async with transaction(self.app.state.sessions) as session:
            announced = await service.announce_due(session, self.app.state.tables, self.app.state.clock())
        sent = await deliver_due(self.app)
        return announced, sent

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the loop alive; the next round retries
                log.exception("publication scheduler round failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.app.state.settings.scheduler_poll_seconds)
            self.wake.clear()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop(), name="publication-scheduler")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def new_secret() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def new_id() -> str:
    return str(uuid.uuid4())
