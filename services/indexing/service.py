"""Indexing's domain operations: the accepted set, provisional sums, final runs, rankings.

Each operation runs in the caller's transaction (an HTTP unit of work or a consumer's inbox
transaction), so a change, its audit entry and its event commit together.
"""

from __future__ import annotations

import array
import asyncio
import datetime as dt
import functools
import hashlib
import itertools
import json
import logging
import operator
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import and_, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.indexing import compute
from services.indexing.models import (
    form_decision,
    index_cell,
    index_ranking,
    index_run,
    provisional_stratum,
    provisional_sum,
    stratum_frame,
    wave,
)
from shared import audit
from shared.auth import Principal, Role, ensure_province_visible
from shared.contracts.indexing import IndexRunCompleted
from shared.contracts.sampling import SampleDrawn
from shared.contracts.verification import ResponseAccepted, ResponseRejected
from shared.db import insert_for, utcnow
from shared.errors import InvalidState, NotFound
from shared.methodology import Methodology
from shared.outbox import add_event

log = logging.getLogger("sipas.indexing")

#: The 2025 administrative merger (63 → 34 provinces) took effect on this day.
MERGER_DATE = dt.date(2025, 7, 1)
_ITEM_KEY = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")




# --------------------------------------------------------------------------------------------------
# The accepted set (consumer of verification's decisions)
# --------------------------------------------------------------------------------------------------


def _payload_hash(payload: Any) -> str:
    body = json.dumps(payload.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


@functools.lru_cache(maxsize=4)
def _decision_statements(dialect: str) -> tuple[Any, Any, Any]:
    """The accepted set's read (the forms of a batch), insert and update, built once per dialect
    and run with parameters: building them per event cost more than running them."""
    held = select(form_decision).where(form_decision.c.wave_id == bindparam("k_wave"),
                                       form_decision.c.form_code.in_(bindparam("k_forms", expanding=True)))
    if dialect == "postgresql":
        held = held.with_for_update()
    change = update(form_decision).where(form_decision.c.wave_id == bindparam("k_wave"),
                                         form_decision.c.form_code == bindparam("k_form"))
    return held, form_decision.insert(), change


_DESIGN_FIELDS = ("methodology_version", "stratum", "province_code", "commune_code", "psu", "ssu", "pi",
                  "weight", "level", "field", "procedure_code", "respondent_type", "channel")


async def apply_decision(session: AsyncSession, payload: ResponseAccepted | ResponseRejected) -> str:
    """One decision: ``apply_decisions`` of a batch of one."""
    return (await apply_decisions(session, [payload]))[0]


async def apply_decisions(session: AsyncSession, payloads: Sequence[ResponseAccepted | ResponseRejected]) -> list[str]:
    """Make each decision its form's current state if it is newer than what we hold, in order.

    Per decision, what happened: ``"applied"``, ``"older"`` (ignored: a newer decision is held),
    ``"duplicate"`` (same version, same payload: a redelivery), ``"conflict"`` (same version,
    another payload: logged and ignored -- verification numbers decisions, so this is a bug
    upstream, and keeping the first is the only reproducible choice). Provisional sums move by
    the difference between the old and the new state, so the cost is the batch's answers.

    A batch (what the consumer has queued, one transaction) reads its forms in one query, writes
    them with one insert and one update, and adds the provisional differences summed per cell:
    one upsert row per touched cell instead of 22 per form."""
    held_q, insert, change = _decision_statements(session.bind.dialect.name)
    held: dict[tuple[str, str], dict[str, Any]] = {}
    by_wave: dict[str, set[str]] = {}
    for p in payloads:
        by_wave.setdefault(str(p.wave_id), set()).add(p.form_code)
    for wave_id, codes in by_wave.items():
        rows = await session.execute(held_q, {"k_wave": wave_id, "k_forms": sorted(codes)})
        held.update({(wave_id, r["form_code"]): dict(r) for r in rows.mappings()})
    existed = set(held)
    written: dict[tuple[str, str], dict[str, Any]] = {}
    deltas = ProvisionalDeltas()
    outcomes = []
    for payload in payloads:
        wave_id, form_code = str(payload.wave_id), payload.form_code
        old = held.get((wave_id, form_code))
        digest = _payload_hash(payload)
        if old is not None:
            if old["decision_version"] > payload.decision_version:
                outcomes.append("older")
                continue
            if old["decision_version"] == payload.decision_version:
                if old["payload_hash"] != digest:
                    log.error("decision %s v%s of wave %s arrived twice with different payloads; keeping the first",
                              form_code, payload.decision_version, wave_id)
                outcomes.append("duplicate" if old["payload_hash"] == digest else "conflict")
                continue
        accepted = isinstance(payload, ResponseAccepted)
        values: dict[str, Any] = {
            "wave_id": wave_id,
            "form_code": form_code,
            "decision_version": payload.decision_version,
            "status": "accepted" if accepted else "rejected",
            "payload_hash": digest,
            "decided_at": payload.decided_at if payload.decided_at.tzinfo else payload.decided_at.replace(tzinfo=dt.UTC),
            "received_at": utcnow(),
        }
        if accepted:
            values.update({f: getattr(payload, f) for f in _DESIGN_FIELDS})
            values["answers"] = payload.answers
        else:
            # A rejected form keeps nothing it does not need (the answers leave the accepted set).
            values.update({f: None for f in _DESIGN_FIELDS})
            values["answers"] = None
        if old is not None and old["status"] == "accepted":
            deltas.add(wave_id, old, sign=-1)
        if accepted:
            deltas.add(wave_id, values, sign=+1)
        held[(wave_id, form_code)] = written[(wave_id, form_code)] = values
        outcomes.append("applied")
    new_rows = [v for k, v in written.items() if k not in existed]
    changed = [{**v, "k_wave": k[0], "k_form": k[1]} for k, v in written.items() if k in existed]
    if new_rows:
        await session.execute(insert, new_rows)
    if changed:
        await session.execute(change, changed)
    await deltas.write(session)
    return outcomes


@functools.lru_cache(maxsize=4096)
def _is_item_key(code: str) -> bool:
    """Whether an answer key names a satisfaction item (``element.item``); the same few dozen
    keys recur on every form, so the pattern runs once per key, not once per answer."""
    return bool(_ITEM_KEY.match(code))


@functools.lru_cache(maxsize=4)
def _provisional_upserts(dialect: str) -> tuple[Any, Any]:
    """The two upserts of ``ProvisionalDeltas.write``, built once per dialect: executed with a list of
    rows (executemany), the statement is compiled once instead of once per form — building a
    22-row multi-VALUES statement was most of a decision's cost."""
    cells = insert_for(dialect, provisional_sum)
    cols = [f"w{c}" for c in range(1, 6)] + [f"c{c}" for c in range(1, 6)]
    cells = cells.on_conflict_do_update(
        index_elements=["wave_id", "stratum", "province_code", "level", "field", "item"],
        set_={c: provisional_sum.c[c] + cells.excluded[c] for c in cols},
    )
    strata = insert_for(dialect, provisional_stratum)
    strata = strata.on_conflict_do_update(
        index_elements=["wave_id", "stratum"],
        set_={"sum_w": provisional_stratum.c.sum_w + strata.excluded.sum_w,
              "forms": provisional_stratum.c.forms + strata.excluded.forms},
    )
    return cells, strata


_ANSWER_SLOT = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}  # answer code -> its column among w1..w5 / c1..c5
_PLAIN = frozenset({int, str, type(None)})  # value types whose dict lookup cannot mistake a value for a code


class ProvisionalDeltas:
    """The provisional sums' changes of a batch of decisions, summed per cell before they are
    written: one upsert row per (cell, item) and per stratum, whatever the number of forms.

    ``add`` only notes each form's cell, signed weight and its item answers as small integer
    codes (the forms of a wave share one questionnaire, so the answer keys of a form are looked
    up once per distinct key order, not once per answer); :meth:`totals` sums them per (cell,
    item, code) with ``np.bincount``, which adds in the order the forms came, as a loop would."""

    def __init__(self) -> None:
        self.strata: dict[tuple[str, str], list] = {}  # (wave, stratum) -> [Σw, forms]
        self._cell_id: dict[tuple, int] = {}  # (wave, cell key) -> number
        self._item_id: dict[str, int] = {}
        self._layouts: dict[tuple, tuple[Any, np.ndarray, int]] = {}  # answer keys -> (getter, items, number)
        self._layout_items: list[np.ndarray] = []
        self._form_cell: list[int] = []  # per form with item answers
        self._form_w: list[float] = []
        self._form_sign: list[int] = []
        self._form_layout: list[int] = []
        self._slot = array.array("b")  # per item answer: 0-4 for codes 1-5, -1 otherwise (bytes: numpy reads them as is)

    def add(self, wave_id: str, form: Mapping[str, Any], sign: int) -> None:
        """A form's whole effect on the sums: its cell is (stratum, province, level, field);
        each item answered 1–5 adds its weight to that code's Σw and one to its count."""
        key = (form["stratum"], form["province_code"] or "", form["level"] or "", form["field"] or "")
        w = sign * float(form["weight"])
        stratum = self.strata.get((wave_id, key[0]))
        if stratum is None:
            stratum = self.strata[(wave_id, key[0])] = [0.0, 0]
        stratum[0] += w
        stratum[1] += sign
        cell = self._cell_id.setdefault((wave_id, key), len(self._cell_id))
        answers = form["answers"] or {}
        keys = tuple(answers)
        layout = self._layouts.get(keys)
        if layout is None:
            layout = self._layouts[keys] = self._layout(keys)
        getter, items, number = layout
        if not items.shape[0]:
            return
        values = getter(answers)
        if set(map(type, values)) <= _PLAIN:
            self._slot.extend(map(_ANSWER_SLOT.get, values, itertools.repeat(-1)))
        else:  # bools (True hashes like 1), floats, lists: only int codes count
            self._slot.extend([_ANSWER_SLOT.get(v, -1) if type(v) is int else -1 for v in values])
        self._form_cell.append(cell)
        self._form_w.append(w)
        self._form_sign.append(sign)
        self._form_layout.append(number)

    def _layout(self, keys: tuple) -> tuple[Any, np.ndarray, int]:
        """For one order of answer keys: a getter of the item answers (always a tuple), their
        item numbers, and the layout's number."""
        names = [k for k in keys if _is_item_key(k)]
        items = np.array([self._item_id.setdefault(k, len(self._item_id)) for k in names], dtype=np.int64)
        getter = operator.itemgetter(*names) if len(names) > 1 else (lambda a, n=names: tuple(a[k] for k in n))
        self._layout_items.append(items)
        return getter, items, len(self._layout_items) - 1

    def totals(self) -> tuple[list[tuple], list[str], np.ndarray, np.ndarray]:
        """The summed changes, one row per touched (cell, item) in (cell, item) order: the rows'
        (wave, cell key), item codes, Σw per answer code (rows × 5) and counts (rows × 5)."""
        if not self._slot:
            return [], [], np.zeros((0, 5)), np.zeros((0, 5), dtype=np.int64)
        n_items = len(self._item_id)
        layouts = np.asarray(self._form_layout)
        per_form = np.array([a.shape[0] for a in self._layout_items])[layouts]
        cell = np.repeat(np.asarray(self._form_cell, dtype=np.int64), per_form)
        w = np.repeat(np.asarray(self._form_w), per_form)
        sign = np.repeat(np.asarray(self._form_sign, dtype=np.float64), per_form)
        if len(self._layout_items) == 1:
            item = np.tile(self._layout_items[0], layouts.shape[0])
        else:
            item = np.concatenate([self._layout_items[i] for i in self._form_layout])
        slot = np.frombuffer(self._slot, dtype=np.int8)
        ok = slot >= 0
        pair = cell[ok] * n_items + item[ok]
        n_pairs = len(self._cell_id) * n_items
        bins = pair * 5 + slot[ok]
        sum_w = np.bincount(bins, weights=w[ok], minlength=n_pairs * 5).reshape(-1, 5)
        count = np.bincount(bins, weights=sign[ok], minlength=n_pairs * 5).reshape(-1, 5).astype(np.int64)
        touched = np.flatnonzero(np.bincount(pair, minlength=n_pairs))  # pairs with an answer 1-5
        cells = list(self._cell_id)
        names = list(self._item_id)
        cell_rank = np.empty(len(cells), dtype=np.int64)
        cell_rank[sorted(range(len(cells)), key=cells.__getitem__)] = np.arange(len(cells))
        item_rank = np.empty(n_items, dtype=np.int64)
        item_rank[sorted(range(n_items), key=names.__getitem__)] = np.arange(n_items)
        t_cell, t_item = touched // n_items, touched % n_items
        touched = touched[np.lexsort((item_rank[t_item], cell_rank[t_cell]))]
        t_cell, t_item = (touched // n_items).tolist(), (touched % n_items).tolist()
        return [cells[c] for c in t_cell], [names[i] for i in t_item], sum_w[touched], count[touched]

    async def write(self, session: AsyncSession) -> None:
        cells, strata = _provisional_upserts(session.bind.dialect.name)
        keys, items, sum_w, count = self.totals()
        rows = []
        for (wave_id, (stratum, province, level, field)), item, ws, cs in zip(keys, items, sum_w.tolist(),
                                                                             count.tolist()):
            row = {"wave_id": wave_id, "stratum": stratum, "province_code": province, "level": level,
                   "field": field, "item": item}
            for code in range(1, 6):
                row[f"w{code}"] = ws[code - 1]
                row[f"c{code}"] = cs[code - 1]
            rows.append(row)
        if rows:
            await session.execute(cells, rows)
        if self.strata:
            await session.execute(strata, [{"wave_id": w, "stratum": s, "sum_w": sw, "forms": n}
                                           for (w, s), (sw, n) in sorted(self.strata.items())])


async def apply_sample_drawn(session: AsyncSession, payload: SampleDrawn) -> None:
    """Chunk 0 of a draw carries the strata with their frame sizes; a new draw replaces the old."""
    if payload.chunk != 0:
        return
    wave_id, draw_id = str(payload.wave_id), str(payload.draw_id)
    await session.execute(delete(stratum_frame).where(stratum_frame.c.wave_id == wave_id,
                                                      stratum_frame.c.draw_id != draw_id))
    for s in payload.strata:
        stmt = insert_for(session, stratum_frame).values(wave_id=wave_id, stratum=s.stratum, draw_id=draw_id,
                                                      population=s.population, n=s.n)
        stmt = stmt.on_conflict_do_update(index_elements=["wave_id", "stratum"],
                                          set_={"draw_id": draw_id, "population": s.population, "n": s.n})
        await session.execute(stmt)


async def frame_sizes(session: AsyncSession, wave_id: str) -> dict[str, int]:
    rows = await session.execute(select(stratum_frame.c.stratum, stratum_frame.c.population)
                                 .where(stratum_frame.c.wave_id == wave_id))
    return {s: int(p) for s, p in rows}


async def accepted_rows(session: AsyncSession, wave_id: str) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(form_decision).where(form_decision.c.wave_id == wave_id, form_decision.c.status == "accepted")
        .order_by(form_decision.c.form_code))
    return [dict(r) for r in rows.mappings()]


async def accepted_summary(session: AsyncSession, wave_id: str) -> dict[str, Any]:
    rows = await session.execute(
        select(form_decision.c.form_code, form_decision.c.decision_version)
        .where(form_decision.c.wave_id == wave_id, form_decision.c.status == "accepted"))
    pairs = [(c, v) for c, v in rows]
    rejected = await session.scalar(select(func.count()).select_from(form_decision).where(
        form_decision.c.wave_id == wave_id, form_decision.c.status == "rejected"))
    return {"wave_id": wave_id, "accepted_forms": len(pairs), "rejected_forms": int(rejected or 0),
            "accepted_fingerprint": compute.accepted_fingerprint(pairs)}


# --------------------------------------------------------------------------------------------------
# Waves
# --------------------------------------------------------------------------------------------------


def ensure_results_readable(principal: Principal, province_code: str | None, what: str) -> None:
    """Who reads a wave's indices before publication: the ministry and observers, every wave;
    a province key, the waves of its own province (it ran them and needs the figures to act
    on). A national wave's runs rank every province and stay embargoed for province keys until
    publication releases them, so they answer 404 like another province's wave."""
    if principal.role == Role.province and province_code is None:
        raise NotFound(f"No such {what}.")
    ensure_province_visible(principal, province_code, what)


async def get_wave(session: AsyncSession, principal: Principal, wave_id: str) -> dict[str, Any]:
    row = (await session.execute(select(wave).where(wave.c.id == wave_id))).mappings().first()
    if row is None:
        raise NotFound(f"No wave {wave_id} here (yet).")
    ensure_results_readable(principal, row["province_code"], "wave")
    return dict(row)


def _after_merger(w: Mapping[str, Any]) -> bool:
    """Whether a wave's units are the post-merger (34-province) ones: by its fieldwork start,
    else by its year (a wave of 2025 without dates counts as after)."""
    if w.get("fieldwork_start") is not None:
        return w["fieldwork_start"] >= MERGER_DATE
    return w["year"] >= 2025


# --------------------------------------------------------------------------------------------------
# Final runs
# --------------------------------------------------------------------------------------------------


async def previous_final_run(session: AsyncSession, w: Mapping[str, Any]) -> tuple[dict | None, dict | None]:
    """The previous wave: the latest earlier year's wave of the same scope (and province) that
    has a final run; and that wave's latest final run."""
    query = (
        select(wave, index_run.c.id.label("run_id"), index_run.c.methodology_version.label("run_methodology"))
        .join(index_run, and_(index_run.c.wave_id == wave.c.id, index_run.c.kind == "final"))
        .where(wave.c.year < w["year"], wave.c.scope == w["scope"])
        .order_by(wave.c.year.desc(), index_run.c.completed_at.desc(), index_run.c.id)
        .limit(1)
    )
    if w["province_code"] is None:
        query = query.where(wave.c.province_code.is_(None))
    else:
        query = query.where(wave.c.province_code == w["province_code"])
    row = (await session.execute(query)).mappings().first()
    if row is None:
        return None, None
    prev_wave = {k: row[k] for k in row.keys() if k not in ("run_id", "run_methodology")}
    return prev_wave, {"id": row["run_id"], "methodology_version": row["run_methodology"]}


def rankings(values: Mapping[str, Mapping[str, float | None]], indicators: Sequence[str],
             previous: Mapping[tuple[str, str], Mapping[str, Any]], comparable: bool,
             note: str | None) -> list[dict[str, Any]]:
    """Provinces ranked by each indicator (competition ranking), with change against the
    previous wave. Across a method break or the 2025 merger ``comparable`` is False: the previous
    figures are shown for reference but no rank change is computed."""
    out = []
    for ind in indicators:
        col = {p: v.get(ind) for p, v in values.items()}
        ranks = compute.competition_ranks(col)
        for p in sorted(col):
            prev = previous.get((p, ind), {})
            prev_rank, prev_value = prev.get("rank"), prev.get("value")
            change = (prev_rank - ranks[p]) if comparable and prev_rank is not None and ranks[p] is not None else None
            out.append({"province_code": p, "indicator": ind, "value": col[p], "rank": ranks[p],
                        "previous_rank": prev_rank, "rank_change": change, "previous_value": prev_value,
                        "comparable": comparable, "comparability_note": note})
    return out


async def create_final_run(session: AsyncSession, principal: Principal, w: Mapping[str, Any],
                           methodology: Methodology, rows: list[dict[str, Any]], sizes: dict[str, int]) -> dict:
    """Compute and store a final run of ``rows`` (the accepted set read by the caller)."""
    if not rows:
        raise InvalidState(f"Wave {w['id']} has no accepted forms yet.")
    forms = compute.AcceptedForms.from_rows(rows)
    fingerprint = compute.accepted_fingerprint(zip(forms.form_code, forms.decision_version))
    result = await asyncio.to_thread(compute.compute_run, forms, methodology, sizes)

    prev_wave, prev_run = await previous_final_run(session, w)
    comparable, note, previous = True, None, {}
    if prev_run is not None:
        notes = []
        if prev_run["methodology_version"] != methodology.id:
            notes.append(f"method break: {prev_run['methodology_version']} (previous) vs {methodology.id}")
        if _after_merger(prev_wave) != _after_merger(w):
            notes.append("across the 2025 administrative merger (63 -> 34 provinces); sampling's crosswalk "
                         "is not available to indexing, so the merger is detected from the waves' dates")
        comparable, note = (not notes), ("; ".join(notes) or None)
        prev_rows = await session.execute(select(index_ranking).where(index_ranking.c.run_id == prev_run["id"]))
        previous = {(r["province_code"], r["indicator"]): dict(r) for r in prev_rows.mappings()}
    elements = list(compute.index_design(methodology).elements)
    ranking_rows = rankings(result.province_values, ["sipas", *elements], previous, comparable, note)

    run_id = str(uuid.uuid4())
    completed = utcnow()
    run = {
        "id": run_id, "wave_id": w["id"], "kind": "final", "methodology_version": methodology.id,
        "parameters": {**result.parameters, "headline_weighting": result.headline_weighting,
                       "frame_sizes_known": len(sizes)},
        "accepted_fingerprint": fingerprint, "accepted_forms": forms.n, "code_version": compute.code_version(),
        "previous_wave_id": prev_wave["id"] if prev_wave else None,
        "previous_run_id": prev_run["id"] if prev_run else None,
        "national_sipas": result.national_sipas, "requested_by": principal.actor[:120], "completed_at": completed,
    }
    await session.execute(index_run.insert().values(**run))
    for start in range(0, len(result.cells), 2000):
        await session.execute(index_cell.insert(), [{"run_id": run_id, **c} for c in result.cells[start:start + 2000]])
    if ranking_rows:
        await session.execute(index_ranking.insert(), [{"run_id": run_id, **r} for r in ranking_rows])
    await audit.record(session, _tables(session)["audit_log"], principal, "run.create", "index_run", run_id,
                       wave_id=w["id"], details={"accepted_forms": forms.n, "fingerprint": fingerprint,
                                                 "methodology_version": methodology.id})
    await add_event(session, _tables(session)["outbox"], IndexRunCompleted(
        run_id=uuid.UUID(run_id), wave_id=uuid.UUID(w["id"]), kind="final", methodology_version=methodology.id,
        accepted_fingerprint=fingerprint, accepted_forms=forms.n, code_version=run["code_version"],
        completed_at=completed, national_sipas=result.national_sipas))
    return run


def _tables(session: AsyncSession) -> dict:
    from services.indexing.app import SPEC

    return SPEC.tables


async def get_run(session: AsyncSession, principal: Principal, run_id: str) -> dict[str, Any]:
    row = (await session.execute(select(index_run).where(index_run.c.id == run_id))).mappings().first()
    if row is None:
        raise NotFound(f"No run {run_id}.")
    w = (await session.execute(select(wave.c.province_code).where(wave.c.id == row["wave_id"]))).first()
    ensure_results_readable(principal, w[0] if w else None, "run")
    return dict(row)


async def list_runs(session: AsyncSession, wave_id: str) -> list[dict[str, Any]]:
    rows = await session.execute(select(index_run).where(index_run.c.wave_id == wave_id)
                                 .order_by(index_run.c.completed_at, index_run.c.id))
    return [dict(r) for r in rows.mappings()]


CELL_COLUMNS = ["domain", "domain_code", "indicator", "code", "weighting", "value", "se", "ci_low", "ci_high",
                "n", "cv", "deff", "flag"]


def _cell_query(run_id: str, filters: Mapping[str, Any]):
    query = select(*[index_cell.c[c] for c in CELL_COLUMNS]).where(index_cell.c.run_id == run_id)
    for name, value in filters.items():
        if value is not None:
            query = query.where(index_cell.c[name] == value)
    return query


async def cells(session: AsyncSession, run_id: str, filters: Mapping[str, Any], limit: int | None = None,
                offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    query = _cell_query(run_id, filters)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    query = query.order_by(index_cell.c.domain, index_cell.c.domain_code, index_cell.c.indicator,
                           index_cell.c.code, index_cell.c.weighting)
    if limit is not None:
        query = query.limit(limit).offset(offset)
    rows = await session.execute(query)
    return [dict(r) for r in rows.mappings()], int(total or 0)


async def run_rankings(session: AsyncSession, run_id: str, indicator: str | None = None) -> list[dict[str, Any]]:
    query = select(index_ranking).where(index_ranking.c.run_id == run_id)
    if indicator is not None:
        query = query.where(index_ranking.c.indicator == indicator)
    rows = await session.execute(query.order_by(index_ranking.c.indicator,
                                                index_ranking.c.rank.is_(None), index_ranking.c.rank,
                                                index_ranking.c.province_code))
    return [{k: v for k, v in dict(r).items() if k not in ("id", "run_id")} for r in rows.mappings()]


# --------------------------------------------------------------------------------------------------
# Provisional index
# --------------------------------------------------------------------------------------------------

PROVISIONAL_DOMAINS = ("nation", "province", "level", "field")


async def provisional(session: AsyncSession, w: Mapping[str, Any], methodology: Methodology,
                      domain: str) -> dict[str, Any]:
    """Provisional indices from the additive sums: unweighted (official rule) and design-weighted
    with the nonresponse adjustment N_h / Σ_{i∈h} w_i applied per stratum. No SE: standard
    errors need the PSU-level data and come with a final run."""
    wave_id = w["id"]
    sums = (await session.execute(select(provisional_sum).where(provisional_sum.c.wave_id == wave_id))).mappings().all()
    strata = {r["stratum"]: (r["sum_w"], r["forms"]) for r in
              (await session.execute(select(provisional_stratum).where(provisional_stratum.c.wave_id == wave_id))).mappings()}
    sizes = await frame_sizes(session, wave_id)
    design = compute.index_design(methodology)
    items = design.items
    pos = {c: j for j, c in enumerate(items)}
    satisfied = set(design.satisfied)
    agg = methodology.aggregation
    thresholds = compute.Thresholds(agg.suppress_below, agg.unreliable_below, agg.unreliable_cv)
    column = {"nation": None, "province": "province_code", "level": "level", "field": "field"}[domain]
    acc: dict[str, np.ndarray] = {}  # domain code -> (4, k): Σw*y, Σw*a, #y, #a
    for r in sums:
        j = pos.get(r["item"])
        if j is None:
            continue
        code = compute.NATION if column is None else r[column]
        if not code:
            continue
        sum_w, _ = strata.get(r["stratum"], (0.0, 0))
        size = sizes.get(r["stratum"])
        adj = size / sum_w if size is not None and sum_w > 1e-9 else 1.0
        a = acc.setdefault(code, np.zeros((4, len(items))))
        for v in range(1, 6):
            wv, cv = r[f"w{v}"], r[f"c{v}"]
            a[1, j] += adj * wv
            a[3, j] += cv
            if v in satisfied:
                a[0, j] += adj * wv
                a[2, j] += cv
    cells_out = []
    for code in sorted(acc):
        a = acc[code]
        n_item = a[3].astype(int)
        for wname, num, den in (("none", a[2], a[3]), ("design", a[0], a[1])):
            ok = den > 1e-9
            ratio = np.where(ok, num / np.where(ok, den, 1.0), np.nan)
            for ind in compute.indicators_for(design, items, ok, with_items=True):
                if ind.coef is None:
                    value, n = None, 0
                else:
                    value = float(ind.coef[ind.coef != 0] @ ratio[ind.coef != 0])
                    n = int(n_item[ind.coef != 0].max())
                cells_out.append(compute.make_cell(domain, code, ind.indicator, ind.code, wname, value, None, n,
                                                   None, thresholds))
    forms = sum(f for _, f in strata.values())
    return {"wave_id": wave_id, "methodology_version": methodology.id, "domain": domain, "accepted_forms": int(forms),
            "cells": cells_out}
