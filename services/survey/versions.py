"""Methodology versions served by the survey service: the shipped documents (files in
``methodologies/``) and the ones the ministry published through the API (table
``methodology_version``). A published version never changes: publishing an id again with the
same document is a no-op, with another document a 409. Other services read them over HTTP
(``shared.methodology.fetch_methodology``); inside this service ``methodology()`` reads them
directly, cached on the app (immutable, so the cache never goes stale)."""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.survey.documents import METHODOLOGY_DIR, builtin_ids, load_builtin
from services.survey.forms import content_hash
from services.survey.models import methodology_version
from services.survey.schemas import _no_nul
from shared.auth import Principal
from shared.db import utcnow
from shared.errors import Conflict, NotFound, Unprocessable
from shared.methodology import Methodology, parse_methodology


@functools.cache
def builtin_document(methodology_id: str) -> dict[str, Any]:
    """The shipped file's JSON exactly as written."""
    return json.loads((METHODOLOGY_DIR / f"{methodology_id}.json").read_text(encoding="utf-8"))


async def document(session: AsyncSession, methodology_id: str) -> dict[str, Any]:
    if methodology_id in builtin_ids():
        return builtin_document(methodology_id)
    doc = await session.scalar(select(methodology_version.c.document).where(methodology_version.c.id == methodology_id))
    if doc is None:
        raise NotFound(f"No methodology version {methodology_id}.")
    return doc


async def listing(session: AsyncSession) -> list[dict[str, Any]]:
    out = []
    for mid in builtin_ids():
        m = load_builtin(mid)
        out.append({"id": mid, "title": m.title.model_dump(), "valid_from": m.valid_from, "valid_to": m.valid_to,
                    "frame_kind": m.frame_kind, "builtin": True, "published_at": None})
    rows = await session.execute(select(methodology_version).order_by(methodology_version.c.id))
    for row in rows.mappings():
        doc = row["document"]
        out.append({"id": row["id"], "title": doc["title"], "valid_from": doc["valid_from"], "valid_to": doc.get("valid_to"),
                    "frame_kind": doc["frame_kind"], "builtin": False, "published_at": row["published_at"]})
    return out


async def methodology(app: Any, session: AsyncSession, methodology_id: str) -> Methodology:
    cache: dict[str, Methodology] = app.state.__dict__.setdefault("survey_methodologies", {})
    if methodology_id not in cache:
        if methodology_id in builtin_ids():
            cache[methodology_id] = load_builtin(methodology_id)
        else:
            cache[methodology_id] = parse_methodology(await document(session, methodology_id))
    return cache[methodology_id]


async def publish(session: AsyncSession, principal: Principal, doc: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Store a new version. Returns (document, created)."""
    try:
        _no_nul(doc)
        parsed = parse_methodology(doc)
    except ValueError as exc:  # pydantic ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors()] if errors else []
        raise Unprocessable("The document is not a valid methodology version.", errors=details) from exc
    mid = parsed.id
    digest = content_hash(doc)
    if mid in builtin_ids():
        if content_hash(builtin_document(mid)) == digest:
            return builtin_document(mid), False
        raise Conflict(f"Methodology version {mid} is published already and cannot change; publish a new id.")
    existing = (await session.execute(select(methodology_version).where(methodology_version.c.id == mid))).mappings().first()
    if existing is not None:
        if existing["content_hash"] == digest:
            return existing["document"], False
        raise Conflict(f"Methodology version {mid} is published already and cannot change; publish a new id.")
    try:
        async with session.begin_nested():
            await session.execute(
                methodology_version.insert().values(
                    id=mid, document=doc, content_hash=digest, published_at=utcnow(), published_by=principal.actor
                )
            )
    except IntegrityError as exc:
        raise Conflict(f"Methodology version {mid} was just published by another request.") from exc
    return doc, True
