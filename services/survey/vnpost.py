"""The Vietnam Post integration (Bưu điện Việt Nam): pull assignments, push status updates and
completed answers in batches (docs/vnpost-integration.md is the contract).

A batch is idempotent twice over. By its id: the first request stores the batch and its
per-record results; the same id with the same body returns those results again (nothing
applied twice), with another body it is a 409, from another key a 403. By record: a form
already carrying the same answers (or status) is ``unchanged``; different answers for a form
that has some is a ``conflict`` reported for that record, never an overwrite. A record is applied
whole or not at all: it is validated first, and all of a batch's writes commit in one
transaction. Concurrent pushes of one batch: the batch row is the first write of the
transaction, so the second push waits on its key and then replays the first one's result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson
from fastapi import FastAPI
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.survey import corrections as C
from services.survey import forms as F
from services.survey.models import form, response, vnpost_batch
from services.survey.versions import methodology
from shared.auth import Principal
from shared.contracts.survey import ResponseSubmitted
from shared.db import insert_for, new_id_strings, utcnow
from shared.errors import Conflict, Forbidden, InvalidState, NotFound
from shared.methodology import Methodology

MAX_BATCH = 5000
# A 5,000-form answer batch is about 5 MB of JSON; anything far above is refused before parsing.
MAX_BATCH_BYTES = 32 * 1024 * 1024
PUSHABLE_STATUSES = ("dispatched", "refused", "unreachable", "ineligible")


def record_result(code: str, outcome: str, status: str | None, errors: list[dict] | None = None) -> dict:
    return {"form_code": code, "outcome": outcome, "status": status, "errors": errors or []}


def error(code: str, message: str, item: str | None = None) -> dict:
    return {"code": code, "item": item, "message": message}


def withdrawn_result(row: dict) -> dict | None:
    """The per-record answer for a withdrawn form (its draw was reset): a ``conflict`` with its
    own error code, so Vietnam Post drops the form instead of retrying or fixing the record."""
    if row["status"] != F.WITHDRAWN:
        return None
    return record_result(row["form_code"], "conflict", row["status"], [error("form_withdrawn", F.WITHDRAWN_MESSAGE)])


def answer_batch_digest(batch_id: str, wave_id: str, records: list[dict]) -> str:
    """Identity of an answer batch's content, canonical (key order and spacing do not count).
    Each record's answers are hashed once (``content_hash``, the same digest a stored response
    keeps, left on the record as ``answers_hash`` by whoever hashed them first) and the batch
    digest is taken over the records with their answers replaced by that digest: the 4 MB body
    is not serialised a second time."""
    records_digest = []
    for rec in records:
        answers_hash(rec)
        records_digest.append({k: v for k, v in rec.items() if k != "answers"})
    return F.content_hash({"digest": 2, "batch_id": batch_id, "wave_id": wave_id, "records": records_digest})


def answers_hash(rec: dict) -> str:
    """The content hash of a pushed record's answers, computed once and kept on the record."""
    if "answers_hash" not in rec:
        rec["answers_hash"] = F.content_hash(rec["answers"])
    return rec["answers_hash"]


async def claim_batch(
    session: AsyncSession, principal: Principal, batch_id: str, kind: str, wave_id: str, body_hash: Callable[[], str],
) -> dict | None:
    """Insert the batch row (first write of the transaction). Returns the stored result when the
    batch was received before (a replay), None when this request owns it.

    ``body_hash`` is called only for a replay, to compare: a new batch stores its hash with its
    result (``store_result``, same transaction), so a push does not wait for it before its first
    write. A second push of the batch meanwhile waits on the row's key and reads both."""
    inserted = await session.execute(
        insert_for(session, vnpost_batch)
        .values(batch_id=batch_id, kind=kind, owner_key_id=principal.key_id, wave_id=wave_id,
                body_hash="", result={}, received_at=utcnow())
        .on_conflict_do_nothing(index_elements=["batch_id"])
    )
    if inserted.rowcount == 1:
        return None
    row = (await session.execute(select(vnpost_batch).where(vnpost_batch.c.batch_id == batch_id))).mappings().one()
    if row["owner_key_id"] != principal.key_id:
        raise Forbidden(f"Batch {batch_id} was sent with another key; batch ids belong to the key that sent them.")
    if row["kind"] != kind or row["body_hash"] != body_hash():
        raise Conflict(f"Batch {batch_id} was received before with a different body; use a new batch id.",
                       batch_id=batch_id)
    return dict(row["result"])


async def store_result(session: AsyncSession, batch_id: str, result: dict, body_hash: str) -> None:
    """The batch's per-record results and digest. Encoded by orjson here (the JSON column's
    encoder is json.dumps, a 5,000-record result took it ~15 ms; the result holds only strings,
    numbers and lists)."""
    value = "CAST(:result AS jsonb)" if F.is_pg(session) else ":result"
    await session.execute(text(f"UPDATE vnpost_batch SET result = {value}, body_hash = :body_hash WHERE batch_id = :batch_id"),
                          {"result": orjson.dumps(result).decode(), "body_hash": body_hash, "batch_id": batch_id})


def _summary(batch_id: str, kind: str, wave_id: str, records: list[dict]) -> dict:
    counts = {k: 0 for k in ("applied", "unchanged", "conflict", "rejected")}
    for r in records:
        counts[r["outcome"]] += 1
    return {"batch_id": batch_id, "kind": kind, "wave_id": wave_id, "counts": counts, "records": records}


async def _open_wave(session: AsyncSession, wave_id: str) -> dict:
    wave_row = await F.get_wave(session, wave_id)
    if wave_row["status"] == "closed":
        raise InvalidState(f"Wave {wave_row['code']} is closed; it takes no more statuses or answers.")
    return wave_row


def _lookup(rows: dict[str, dict], wave_id: str, code: str, seen: set[str]) -> tuple[dict | None, dict | None]:
    """(form, None) or (None, rejection result)."""
    if code in seen:
        return None, record_result(code, "rejected", None, [error("duplicate_in_batch", "this form appears twice in the batch")])
    seen.add(code)
    row = rows.get(code)
    if row is None or row["wave_id"] != wave_id:
        return None, record_result(code, "rejected", None, [error("unknown_form", f"no form {code} in this wave")])
    return row, None


# What an answer push reads of a form (the timestamps and assignment details stay unread: a
# third of decoding 5,000 full rows).
_ANSWER_FORM_COLUMNS = ("id", "wave_id", "unit_id", "form_code", "stratum", "province_code", "commune_code", "status",
                        "enumerator_id")


async def _forms_and_answers(session: AsyncSession, codes: Sequence[str]) -> tuple[dict[str, dict], dict[str, str]]:
    """The forms with these codes (by code) and the content hash of the stored answers of each
    that has some (by form id), in one look-up: the response's unique key is probed by the join."""
    names = [*_ANSWER_FORM_COLUMNS, "content_hash"]
    joined = select(*[form.c[c] for c in _ANSWER_FORM_COLUMNS], response.c.content_hash).select_from(
        form.outerjoin(response, response.c.form_id == form.c.id))
    forms: dict[str, dict] = {}
    existing: dict[str, str] = {}
    for where in F.among(session, form.c.form_code, codes):
        for row in (await session.execute(joined.where(where))).all():
            d = dict(zip(names, row))
            digest = d.pop("content_hash")
            forms[d["form_code"]] = d
            if digest is not None:
                existing[d["id"]] = digest
    return forms, existing


async def push_statuses(
    session: AsyncSession, tables: dict, principal: Principal, batch_id: str, wave_id: str, records: list[dict], body_hash: str
) -> tuple[dict, bool]:
    """Apply a status batch. Returns (result, replayed)."""
    stored = await claim_batch(session, principal, batch_id, "status", wave_id, lambda: body_hash)
    if stored is not None:
        return stored, True
    await F.lock_wave(session, wave_id)  # wave before forms, like every writer (forms.lock_form)
    await _open_wave(session, wave_id)
    rows = await F.forms_by_code(session, [r["form_code"] for r in records])
    results, moves, seen = [], [], set()
    for rec in records:
        row, rejected = _lookup(rows, wave_id, rec["form_code"], seen)
        if rejected:
            results.append(rejected)
            continue
        target = rec["status"]
        if (withdrawn := withdrawn_result(row)) is not None:
            results.append(withdrawn)
        elif row["status"] == target:
            results.append(record_result(row["form_code"], "unchanged", row["status"]))
        elif row["status"] not in F.OPEN:
            results.append(record_result(row["form_code"], "conflict", row["status"], [
                error("conflict", f"the form is {row['status']} already; {target} contradicts it")]))
        else:
            moves.append(F.Move(row, target, rec.get("reason"), rec.get("replacement_reason"), rec.get("enumerator_id")))
            results.append(record_result(row["form_code"], "applied", target))
    await F.apply_moves(session, tables, wave_id, moves, actor=principal.actor)
    result = _summary(batch_id, "status", wave_id, results)
    await store_result(session, batch_id, result, body_hash)
    return result, False


async def push_answers(
    app: FastAPI, session: AsyncSession, tables: dict, principal: Principal, batch_id: str, wave_id: str,
    records: list[dict],
) -> tuple[dict, bool]:
    """Apply an answer batch. Returns (result, replayed).

    Each record's answers are hashed when first needed: for an accepted record, as its response
    row goes out in the COPY (``record_responses``), beside the database's work, rather than all
    5,000 before the first statement; the batch's digest is taken from those at the end."""
    digest_of_batch = functools.partial(answer_batch_digest, batch_id, wave_id, records)
    stored = await claim_batch(session, principal, batch_id, "answers", wave_id, digest_of_batch)
    if stored is not None:
        return stored, True
    await F.lock_wave(session, wave_id)  # wave before forms, like every writer (forms.lock_form)
    wave_row = await _open_wave(session, wave_id)
    method = await methodology(app, session, wave_row["methodology_version"])
    # Every record's answers are checked while the database looks the forms up (the checks need
    # no form; a record rejected for another reason just does not use its result).
    (rows, existing), problems = await F.overlapped(_forms_and_answers(session, [r["form_code"] for r in records]),
                                                    lambda: [method.validate_answers(r["answers"]) for r in records])
    open_corr = await C.open_corrections(session, list(existing))
    results, accepted, corrected, seen = [], [], [], set()
    for rec, problems_of_rec in zip(records, problems):
        row, rejected = _lookup(rows, wave_id, rec["form_code"], seen)
        if rejected:
            results.append(rejected)
            continue
        if (withdrawn := withdrawn_result(row)) is not None:
            results.append(withdrawn)
            continue
        if row["id"] in open_corr:
            # Sent back by verification: these answers become the next revision.
            problems = problems_of_rec
            if problems:
                results.append(record_result(row["form_code"], "rejected", row["status"], [p.model_dump() for p in problems]))
            else:
                corrected.append((row, rec, answers_hash(rec), open_corr[row["id"]]))
                results.append(record_result(row["form_code"], "applied", row["status"]))
            continue
        if row["id"] in existing:
            outcome = "unchanged" if existing[row["id"]] == answers_hash(rec) else "conflict"
            errs = [] if outcome == "unchanged" else [error("conflict", "the form was accepted with different answers")]
            results.append(record_result(row["form_code"], outcome, row["status"], errs))
            continue
        problems = problems_of_rec
        if problems:
            results.append(record_result(row["form_code"], "rejected", row["status"], [p.model_dump() for p in problems]))
            continue
        if row["status"] not in F.OPEN:
            results.append(record_result(row["form_code"], "conflict", row["status"], [
                error("conflict", f"the form is {row['status']}; it cannot be collected")]))
            continue
        accepted.append((row, rec, None))  # hashed as its row is written
        results.append(record_result(row["form_code"], "applied", "collected"))
    await record_responses(
        session, tables, method, wave_row, accepted, channel="paper", source=f"vnpost:{batch_id}", actor=principal.actor
    )
    await C.apply_corrections(session, tables, method, wave_row, corrected, source=f"vnpost:{batch_id}",
                              actor=principal.actor)
    result = _summary(batch_id, "answers", wave_id, results)
    await store_result(session, batch_id, result, digest_of_batch())
    return result, False


async def record_responses(
    session: AsyncSession, tables: dict, method: Methodology, wave_row: dict,
    accepted: Sequence[tuple[dict, dict, str | None]], *, channel: str, source: str, actor: str,
) -> list[str]:
    """Store accepted answers (one response per form: unique), move the forms to collected and
    announce each with ``response.submitted`` -- without the sensitive profile answers.

    ``accepted``: (form row, record, content hash of its answers, or None to hash them here; the
    hash is then left on the record as ``answers_hash``)."""
    if not accepted:
        return []
    now = utcnow()
    ids = new_id_strings(len(accepted))
    pg = F.is_pg(session)

    def row(form_row: dict, rec: dict, digest: str | None, rid: str) -> dict:
        if digest is None:
            digest = answers_hash(rec)
        r = {
            "id": rid, "form_id": form_row["id"], "wave_id": form_row["wave_id"], "channel": channel,
            "answers": rec["answers"], "content_hash": digest,
            "enumerator_id": rec.get("enumerator_id") or form_row["enumerator_id"],
            "started_at": rec.get("started_at"), "duration_seconds": rec.get("duration_seconds"),
            "submitted_at": rec.get("submitted_at") or now, "source": source, "revision": 1,
        }
        # What the UTCDateTime column refuses (the COPY would take it as UTC).
        if pg and ((r["started_at"] is not None and r["started_at"].tzinfo is None) or r["submitted_at"].tzinfo is None):
            raise ValueError("naive datetime given to a UTC column")
        return r

    submitted = _submitted_event(method, wave_row, channel)
    if pg:
        events: list[F.Payload] = []
        dumps = orjson.dumps

        def records() -> Iterator[tuple]:
            # Each row (its answers hashed if need be) and its event are built as asyncpg takes
            # the row: it sends the COPY data in 512 KB messages as it goes, so PostgreSQL
            # stores the first rows while Python builds the next ones.
            for (form_row, rec, digest), rid in zip(accepted, ids):
                r = row(form_row, rec, digest, rid)
                events.append(submitted(form_row, rec, r))
                yield (r["id"], r["form_id"], r["wave_id"], r["channel"], dumps(r["answers"]).decode(), r["content_hash"],
                       r["enumerator_id"], r["started_at"], r["duration_seconds"], r["submitted_at"], r["source"], r["revision"])

        await F.copy_records(session, "response", _RESPONSE_COLUMNS, records())
    else:
        rows = [row(form_row, rec, digest, rid) for (form_row, rec, digest), rid in zip(accepted, ids)]
        # The events are built while SQLite stores the rows (in aiosqlite's thread).
        _, events = await F.overlapped(session.execute(response.insert(), rows), lambda: [
            submitted(form_row, rec, r) for (form_row, rec, _), r in zip(accepted, rows)])
    moves = [F.Move(form_row, "collected", None, None, rec.get("enumerator_id")) for form_row, rec, _ in accepted]
    await F.apply_moves(session, tables, wave_row["id"], moves, actor=actor, then=events)
    return ids


def _submitted_event(method: Methodology, wave_row: dict, channel: str) -> Callable[[dict, dict, dict], F.Payload]:
    """The ``response.submitted`` of a stored response (form row, pushed record, response row),
    without the sensitive profile answers."""
    sensitive = set(method.sensitive_questions())
    iso = functools.lru_cache(maxsize=64)(F._iso)  # a batch's rows mostly share one submitted_at
    version = wave_row["methodology_version"]

    def public(answers: dict) -> dict:
        # A copy without the few sensitive keys (a C-level copy, not a loop over 30 answers).
        out = dict(answers)
        for key in sensitive:
            out.pop(key, None)
        return out

    def event(form_row: dict, rec: dict, row: dict) -> F.Payload:
        return F.Payload(ResponseSubmitted, {
            "wave_id": form_row["wave_id"], "form_code": form_row["form_code"], "unit_id": form_row["unit_id"],
            "response_id": row["id"], "revision": 1, "stratum": form_row["stratum"], "province_code": form_row["province_code"],
            "commune_code": form_row["commune_code"], "channel": channel, "enumerator_id": row["enumerator_id"],
            "methodology_version": version,
            "answers": public(rec["answers"]),
            "started_at": F._iso(rec.get("started_at")), "duration_seconds": rec.get("duration_seconds"),
            "submitted_at": iso(row["submitted_at"]),
        }, form_row["form_code"])

    return event


# The response columns in the order of the COPY's records (see record_responses).
_RESPONSE_COLUMNS = ("id", "form_id", "wave_id", "channel", "answers", "content_hash", "enumerator_id", "started_at",
                     "duration_seconds", "submitted_at", "source", "revision")


async def pull(session: AsyncSession, wave_id: str, since: int, limit: int) -> dict[str, Any]:
    """Forms of a wave changed after ``since`` (the cursor of the previous page), oldest change
    first. Contacts are not here: Vietnam Post reads them from sampling by unit id.

    Withdrawn forms (their draw was reset) are left out of a pull from the start (``since=0``):
    that client never had them. A client polling with a later cursor gets each withdrawal once,
    as the form with status ``withdrawn``, so it drops a form it pulled before the reset."""
    await F.get_wave(session, wave_id)
    query = select(form).where(form.c.wave_id == wave_id, form.c.change_seq > since)
    if since == 0:
        query = query.where(form.c.status != F.WITHDRAWN)
    rows = (await session.execute(query.order_by(form.c.change_seq).limit(limit))).mappings().all()
    corrections = await C.open_corrections(session, [r["id"] for r in rows if r["status"] == "collected"])
    items = []
    for r in rows:
        corr = corrections.get(r["id"])
        items.append({
            "form_code": r["form_code"], "unit_id": r["unit_id"], "wave_id": r["wave_id"], "role": r["role"],
            "stratum": r["stratum"], "province_code": r["province_code"], "commune_code": r["commune_code"],
            "post_office": r["post_office"], "enumerator_id": r["enumerator_id"], "status": r["status"],
            "reserve_exhausted": r["reserve_exhausted"], "change_seq": r["change_seq"], "updated_at": r["updated_at"],
            "correction": None if corr is None else {
                "revision": corr["revision"], "items": corr["items"], "reason_codes": corr["reason_codes"],
                "requested_at": corr["requested_at"]},
        })
    cursor = items[-1]["change_seq"] if items else since
    return {"items": items, "next_cursor": cursor, "has_more": len(items) == limit}


async def batch_result(session: AsyncSession, principal: Principal, batch_id: str) -> dict:
    row = (await session.execute(select(vnpost_batch).where(vnpost_batch.c.batch_id == batch_id))).mappings().first()
    if row is None or (principal.role.value == "vnpost" and row["owner_key_id"] != principal.key_id):
        raise NotFound(f"No batch {batch_id}.")
    return dict(row["result"])


class BatchBodyLimit:
    """ASGI middleware: a Vietnam Post push whose declared ``Content-Length`` is above
    ``MAX_BATCH_BYTES`` gets 413 before its body is read or parsed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path", "").startswith("/v1/vnpost/") and scope.get("method") == "POST":
            for name, value in scope.get("headers") or []:
                if name == b"content-length" and value.isdigit() and int(value) > MAX_BATCH_BYTES:
                    from shared.errors import PayloadTooLarge, problem_response

                    too_large = PayloadTooLarge(f"A batch body holds at most {MAX_BATCH_BYTES} bytes; split it.")
                    await problem_response(too_large)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
