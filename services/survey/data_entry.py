"""Double data entry of paper forms keyed at the ministry (nhập liệu hai lần).

Two operators key each form independently. If the two entries agree the form is complete;
where they differ a third operator keys the form again from the paper and that entry is the
final one. Each operator is then charged a mismatch for every question where their entry
differs from the final answers: mismatch rate = mismatches / questions compared, per operator.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.survey import corrections as C, forms as F
from services.survey.models import data_entry, response
from services.survey.versions import methodology
from services.survey.vnpost import record_responses
from shared.contracts.survey import DataEntryCompared
from shared.db import utcnow
from shared.errors import Conflict, InvalidState, Unprocessable
from shared.methodology import Methodology


def _canonical(value: Any) -> Any:
    """Order of chosen options does not matter; a missing answer is a blank."""
    if isinstance(value, list):
        return sorted(map(str, value))
    return value


def differences(method: Methodology, a: dict, b: dict) -> list[str]:
    return [q for q in method.question_codes() if _canonical(a.get(q)) != _canonical(b.get(q))]


async def key_entry(
    app: FastAPI, session: AsyncSession, tables: dict, form_code: str, operator: str, answers: dict[str, Any], *, actor: str
) -> dict[str, Any]:
    await F.lock_form(session, form_code)
    row = await F.get_form(session, form_code)
    if await session.scalar(select(response.c.id).where(response.c.form_id == row["id"])) is not None:
        raise InvalidState(f"Form {form_code} is complete already.")
    F.refuse_withdrawn(row)
    if row["status"] not in F.OPEN:
        raise InvalidState(f"Form {form_code} is {row['status']}; it cannot be keyed.")
    wave_row = await F.get_wave(session, row["wave_id"])
    method = await methodology(app, session, wave_row["methodology_version"])
    problems = method.validate_answers(answers)
    if problems:
        raise Unprocessable("Some answers are not valid for this questionnaire.", errors=[p.model_dump() for p in problems])
    entries = [dict(r) for r in (await session.execute(
        select(data_entry).where(data_entry.c.form_id == row["id"]).order_by(data_entry.c.seq)
    )).mappings()]
    if any(e["operator"] == operator for e in entries):
        raise Conflict(f"Operator {operator} has keyed form {form_code} already; another operator must key it.")
    if len(entries) >= 3 or (len(entries) == 2 and not differences(method, entries[0]["answers"], entries[1]["answers"])):
        raise InvalidState(f"Form {form_code} is complete already.")
    seq = len(entries) + 1
    try:
        async with session.begin_nested():
            await session.execute(data_entry.insert().values(
                form_id=row["id"], wave_id=row["wave_id"], seq=seq, operator=operator, answers=answers, entered_at=utcnow()))
    except IntegrityError:
        raise Conflict(f"Form {form_code} was just keyed by someone else; reload and try again.") from None
    entries.append({"seq": seq, "operator": operator, "answers": answers})
    if seq == 1:
        return {"form_code": form_code, "entry": seq, "state": "awaiting_second_entry", "disagreements": []}
    disagreements = differences(method, entries[0]["answers"], entries[1]["answers"])
    if seq == 2 and disagreements:
        return {"form_code": form_code, "entry": seq, "state": "awaiting_third_entry", "disagreements": disagreements}
    final = entries[-1]["answers"]
    compared = len(method.question_codes())
    for e in entries:
        await session.execute(update(data_entry).where(data_entry.c.form_id == row["id"], data_entry.c.seq == e["seq"]).values(
            mismatches=len(differences(method, e["answers"], final)), compared_items=compared))
    rec = {"answers": final, "enumerator_id": None}
    await record_responses(session, tables, method, wave_row, [(row, rec, F.content_hash(final))],
                           channel="paper", source="data_entry", actor=actor)
    await F.stage_events(session, tables["outbox"], [DataEntryCompared(
        wave_id=row["wave_id"], form_code=form_code, unit_id=row["unit_id"],
        operators=[e["operator"] for e in entries], disagreements=disagreements, resolved_by_third_entry=seq == 3)])
    return {"form_code": form_code, "entry": seq, "state": "complete", "disagreements": disagreements}


async def operator_stats(session: AsyncSession, wave_id: str) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(
            data_entry.c.operator,
            func.count().label("entries"),
            func.coalesce(func.sum(data_entry.c.compared_items), 0).label("compared_items"),
            func.coalesce(func.sum(data_entry.c.mismatches), 0).label("mismatches"),
        )
        .where(data_entry.c.wave_id == wave_id)
        .group_by(data_entry.c.operator)
        .order_by(data_entry.c.operator)
    )
    out = []
    for r in rows.mappings():
        compared, mism = int(r["compared_items"]), int(r["mismatches"])
        out.append({"operator": r["operator"], "entries": int(r["entries"]), "compared_items": compared,
                    "mismatches": mism, "mismatch_rate": (mism / compared) if compared else None})
    return out


async def key_correction(
    app: FastAPI, session: AsyncSession, tables: dict, form_code: str, operator: str, answers: dict[str, Any], *, actor: str
) -> dict[str, Any]:
    """Corrected answers of a form verification sent back, keyed at the ministry from the paper
    form (or the re-visit): they become the response's next revision."""
    await F.lock_form(session, form_code)
    row = await F.get_form(session, form_code)
    corr = (await C.open_corrections(session, [row["id"]])).get(row["id"])
    if corr is None:
        raise InvalidState(f"Form {form_code} has no open correction request; its answers cannot change.")
    wave_row = await F.get_wave(session, row["wave_id"])
    method = await methodology(app, session, wave_row["methodology_version"])
    problems = method.validate_answers(answers)
    if problems:
        raise Unprocessable("Some answers are not valid for this questionnaire.", errors=[p.model_dump() for p in problems])
    await C.apply_corrections(session, tables, method, wave_row, [(row, {"answers": answers}, F.content_hash(answers), corr)],
                              source=f"data_entry:{operator}", actor=actor)
    return {"form_code": form_code, "revision": corr["revision"] + 1}
