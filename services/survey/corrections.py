"""Send-backs from verification (``sipas.verification.correction.requested.v1``).

A reviewer who finds a form's answers doubtful sends it back: survey records the request (which
items, why, as codes) and shows it to whoever can correct it -- Vietnam Post sees it in its
assignment pull (``correction``), the ministry's data entry sees it on the form. The corrected
answers come back through the same doors (a Vietnam Post answer batch, or
``POST /v1/data-entry/forms/{code}/correction``) and become the response's next ``revision``,
announced as a new ``response.submitted`` that verification screens again. Without an open
request a form's accepted answers never change: different answers are a conflict.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.survey import forms as F
from services.survey.models import correction, form, form_history, response
from shared.contracts.survey import ResponseSubmitted
from shared.db import insert_for, utcnow
from shared.methodology import Methodology

log = logging.getLogger("sipas.survey.corrections")


async def request_correction(session: AsyncSession, tables: dict, payload: Any) -> None:
    """Consumer effect: record the send-back (idempotent by form and revision) and bump the form's
    change number so the Vietnam Post pull shows it."""
    row = (await session.execute(select(form).where(form.c.form_code == payload.form_code))).mappings().first()
    if row is None:
        log.warning("correction requested for unknown form %s; ignored", payload.form_code)
        return
    row = dict(row)
    current = (await session.execute(
        select(response.c.id, response.c.revision).where(response.c.form_id == row["id"])
    )).first()
    if current is None or current.revision > payload.revision:
        # Nothing to correct, or already corrected past the revision the reviewer saw.
        log.info("correction of %s revision %s is stale; ignored", payload.form_code, payload.revision)
        return
    seq = await F.allocate_changes(session, row["wave_id"], 1)
    inserted = await session.execute(
        insert_for(session, correction)
        .values(
            form_id=row["id"], wave_id=row["wave_id"], response_id=current.id, revision=payload.revision,
            reason_codes=list(payload.reason_codes), items=list(payload.items), requested_at=payload.requested_at,
        )
        .on_conflict_do_nothing(index_elements=["form_id", "revision"])
    )
    if inserted.rowcount != 1:
        return
    now = utcnow()
    await session.execute(update(form).where(form.c.id == row["id"]).values(change_seq=seq, updated_at=now))
    await session.execute(form_history.insert().values(
        form_id=row["id"], from_status=row["status"], to_status=row["status"], actor="verification",
        reason=f"correction requested (revision {payload.revision}): {', '.join(payload.reason_codes)}"[:200], at=now,
    ))


async def open_corrections(session: AsyncSession, form_ids: Sequence[str]) -> dict[str, dict]:
    """The open send-back of each form that has one."""
    found: dict[str, dict] = {}
    for where in F.among(session, correction.c.form_id, form_ids):
        rows = await session.execute(select(correction).where(where, correction.c.resolved_at.is_(None)))
        for r in rows.mappings():
            found[r["form_id"]] = dict(r)
    return found


async def apply_corrections(
    session: AsyncSession, tables: dict, method: Methodology, wave_row: dict,
    items: Sequence[tuple[dict, dict, str, dict]], *, source: str, actor: str,
) -> None:
    """Store corrected answers as the next revision of each form's response, close the
    send-backs and announce each revision. ``items``: (form, record, content hash, correction)."""
    if not items:
        return
    now = utcnow()
    sensitive = set(method.sensitive_questions())
    form_ids = [f["id"] for f, _, _, _ in items]
    current = {
        r["form_id"]: dict(r)
        for r in (await session.execute(select(response).where(response.c.form_id.in_(form_ids)))).mappings()
    }
    first = await F.allocate_changes(session, wave_row["id"], len(items))
    resp_params, corr_params, form_params, hist, events = [], [], [], [], []
    for i, (form_row, rec, digest, corr) in enumerate(items):
        old = current[form_row["id"]]
        revision = old["revision"] + 1
        enumerator = rec.get("enumerator_id") or old["enumerator_id"]
        submitted = rec.get("submitted_at") or now
        resp_params.append({"_id": old["id"], "_answers": rec["answers"], "_hash": digest, "_rev": revision,
                            "_at": submitted, "_source": source, "_enum": enumerator})
        corr_params.append({"_id": corr["id"], "_at": now, "_rev": revision})
        form_params.append({"_id": form_row["id"], "_seq": first + i, "_now": now})
        hist.append({"form_id": form_row["id"], "from_status": form_row["status"], "to_status": form_row["status"],
                     "actor": actor, "reason": f"corrected: revision {revision}", "at": now})
        events.append(ResponseSubmitted(
            wave_id=form_row["wave_id"], form_code=form_row["form_code"], unit_id=form_row["unit_id"],
            response_id=old["id"], revision=revision, stratum=form_row["stratum"],
            province_code=form_row["province_code"], commune_code=form_row["commune_code"], channel=old["channel"],
            enumerator_id=enumerator, methodology_version=wave_row["methodology_version"],
            answers={k: v for k, v in rec["answers"].items() if k not in sensitive},
            started_at=old["started_at"], duration_seconds=old["duration_seconds"], submitted_at=submitted,
        ))
    await session.execute(
        update(response).where(response.c.id == bindparam("_id")).values(
            answers=bindparam("_answers"), content_hash=bindparam("_hash"), revision=bindparam("_rev"),
            submitted_at=bindparam("_at"), source=bindparam("_source"), enumerator_id=bindparam("_enum"),
        ).execution_options(synchronize_session=False),
        resp_params,
    )
    await session.execute(
        update(correction).where(correction.c.id == bindparam("_id")).values(
            resolved_at=bindparam("_at"), resolved_revision=bindparam("_rev")
        ).execution_options(synchronize_session=False),
        corr_params,
    )
    await session.execute(
        update(form).where(form.c.id == bindparam("_id")).values(
            change_seq=bindparam("_seq"), updated_at=bindparam("_now")
        ).execution_options(synchronize_session=False),
        form_params,
    )
    await session.execute(form_history.insert(), hist)
    await F.stage_events(session, tables["outbox"], events)
