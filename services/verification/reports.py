"""Read-side reports: entry verification (double-entry mismatch rates) and quality counts per
wave, province, commune and enumerator, as JSON, CSV and Prometheus text.

Counts are computed from the current state of the forms (a few tens of thousands rows per
wave), so a report always agrees with the decisions as they stand.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.verification.models import BackCheck, EntryComparison, Form, Response
from services.verification.schemas import Disagreement, EntryVerification, OperatorRate, QualityRow

GROUPINGS = ("wave", "province", "commune", "enumerator")


async def entry_verification(session: AsyncSession, wave_id: str, province: str | None) -> EntryVerification:
    query = select(EntryComparison).where(EntryComparison.wave_id == wave_id)
    if province is not None:
        query = query.where(EntryComparison.province_code == province)
    rows = (await session.scalars(query.order_by(EntryComparison.form_code))).all()
    forms: Counter[str] = Counter()
    with_disagreement: Counter[str] = Counter()
    items: Counter[str] = Counter()
    unresolved: list[Disagreement] = []
    for row in rows:
        for operator in set(row.operators):
            forms[operator] += 1
            if row.disagreements:
                with_disagreement[operator] += 1
                items[operator] += len(row.disagreements)
        if row.disagreements and not row.resolved:
            unresolved.append(Disagreement(form_code=row.form_code, operators=row.operators,
                                           disagreements=row.disagreements, resolved_by_third_entry=row.resolved))
    operators = [
        OperatorRate(operator=op, forms=n, forms_with_disagreements=with_disagreement[op], items_disagreed=items[op],
                     mismatch_rate=round(with_disagreement[op] / n, 6))
        for op, n in sorted(forms.items())
    ]
    return EntryVerification(
        forms_compared=len(rows),
        forms_with_disagreements=sum(1 for r in rows if r.disagreements),
        unresolved=unresolved,
        operators=operators,
    )


def _key(form: Form, by: str) -> str:
    if by == "wave":
        return form.wave_id
    if by == "province":
        return form.province_code or ""
    if by == "commune":
        return f"{form.province_code or ''}/{form.commune_code or ''}"
    return form.enumerator_id or ""


async def quality(session: AsyncSession, wave_id: str, by: str, province: str | None) -> list[QualityRow]:
    query = select(Form).where(Form.wave_id == wave_id)
    if province is not None:
        query = query.where(Form.province_code == province)
    forms = (await session.scalars(query)).all()
    checks = {
        c.form_code: c.outcome
        for c in (await session.scalars(select(BackCheck).where(BackCheck.wave_id == wave_id))).all()
    }
    # Only responses rejected as duplicates are counted here (the form itself may be accepted).
    dup_codes = Counter(
        r.form_code for r in (await session.scalars(
            select(Response).where(Response.wave_id == wave_id, Response.outcome == "rejected")
        )).all() if any(f.get("rule") == "duplicate" for f in (r.findings or []))
    )
    rows: dict[str, dict[str, Any]] = defaultdict(
        lambda: dict(dispatched=0, returned=0, valid=0, rejected=0, rejected_by_reason=Counter(), flagged=0,
                     duplicates=0, back_checked=0, denied=0)
    )
    for form in forms:
        row = rows[_key(form, by)]
        row["dispatched"] += form.dispatched
        if form.state is not None:
            row["returned"] += 1
        if form.state == "accepted":
            row["valid"] += 1
        elif form.state == "rejected":
            row["rejected"] += 1
            for reason in form.reasons or ["unspecified"]:
                row["rejected_by_reason"][reason] += 1
        elif form.state == "has_issues":
            row["flagged"] += 1
        row["duplicates"] += dup_codes.get(form.form_code, 0)
        outcome = checks.get(form.form_code)
        if outcome is not None:
            row["back_checked"] += 1
            row["denied"] += outcome == "denied"
    return [
        QualityRow(key=key, **{**values, "rejected_by_reason": dict(sorted(values["rejected_by_reason"].items()))})
        for key, values in sorted(rows.items())
    ]


CSV_COLUMNS = ["key", "dispatched", "returned", "valid", "rejected", "flagged", "duplicates", "back_checked", "denied",
               "rejected_by_reason"]


def to_csv(rows: list[QualityRow]) -> str:
    """One line per group; ``rejected_by_reason`` as ``reason=n;reason=n``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        reasons = ";".join(f"{k}={v}" for k, v in r.rejected_by_reason.items())
        writer.writerow([r.key, r.dispatched, r.returned, r.valid, r.rejected, r.flagged, r.duplicates,
                         r.back_checked, r.denied, reasons])
    return out.getvalue()


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def to_prometheus(wave_id: str, rows: list[QualityRow]) -> str:
    """Prometheus text exposition of a per-province report (gauges; no personal data: the
    labels are the wave id, province codes and rule names)."""
    lines = [
        "# HELP sipas_verification_forms Forms of a wave per province by measure.",
        "# TYPE sipas_verification_forms gauge",
    ]
    for r in rows:
        for measure in ("dispatched", "returned", "valid", "rejected", "flagged", "duplicates", "back_checked", "denied"):
            lines.append(
                f'sipas_verification_forms{{wave="{_label(wave_id)}",province="{_label(r.key)}",measure="{measure}"}} '
                f"{getattr(r, measure)}"
            )
    lines += [
        "# HELP sipas_verification_rejected Rejected forms of a wave per province by reason.",
        "# TYPE sipas_verification_rejected gauge",
    ]
    for r in rows:
        for reason, n in r.rejected_by_reason.items():
            lines.append(
                f'sipas_verification_rejected{{wave="{_label(wave_id)}",province="{_label(r.key)}",'
                f'reason="{_label(reason)}"}} {n}'
            )
    return "\n".join(lines) + "\n"
