"""Forms (phiếu khảo sát): creation from the sample, form codes, status moves with history,
assignments, replacements. Every function runs inside the caller's transaction and stages its
events there, so a change and its announcement commit together.

Writes to one wave's forms first update the wave's ``wave_counter`` row (``_lock_wave``): the row
lock orders concurrent writers of a wave, so serials are never handed out twice and each form
change gets a ``change_seq`` that commits in increasing order -- the changes-since cursor of the
Vietnam Post pull never skips a change.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import orjson
from sqlalchemy import String, Table, any_, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from services.survey.form_code import ALPHABET, MAX_SERIAL, make_form_code
from services.survey.models import form, form_history, sample_draw, wave, wave_counter
from shared.contracts.sampling import SampledUnit
from shared.contracts.survey import FormStatusChanged, ReplacementRequested
from shared.db import insert_for, new_id_strings, utcnow
from shared.errors import InvalidState, NotFound
from shared.events import SPEC_VERSION, EventData
from shared.observability import current_correlation_id
from shared.outbox import add_envelopes, add_group, encode_group

T = TypeVar("T")
W = TypeVar("W")

STATUSES = ("assigned", "dispatched", "collected", "refused", "unreachable", "ineligible", "replaced")
# assigned → dispatched → collected | refused | unreachable | ineligible, then replaced. A form
# may also be collected (online, keyed paper) or refused straight from assigned; ``replaced``
# is reached only when sampling has released the replacement (unit.replaced).
# ``withdrawn`` is outside the fieldwork: an assigned form whose draw was voided (sample.voided)
# or superseded by a new draw of the wave. It is terminal, reached only through ``withdraw_forms``
# (never by hand, hence not in TRANSITIONS["assigned"]), and left out of the progress counts; the
# row and its history stay, so its form code is never handed out again.
WITHDRAWN = "withdrawn"
WITHDRAWN_MESSAGE = "form withdrawn: its draw was reset"
TRANSITIONS: dict[str, frozenset[str]] = {
    "assigned": frozenset({"dispatched", "collected", "refused", "unreachable", "ineligible"}),
    "dispatched": frozenset({"collected", "refused", "unreachable", "ineligible"}),
    "refused": frozenset({"replaced"}),
    "unreachable": frozenset({"replaced"}),
    "ineligible": frozenset({"replaced"}),
    "collected": frozenset(),
    "replaced": frozenset(),
    WITHDRAWN: frozenset(),
}
# Outcomes that ask sampling for the next reserve unit.
NEEDS_REPLACEMENT = frozenset({"refused", "unreachable", "ineligible"})
OPEN = frozenset({"assigned", "dispatched"})
# Form codes a wave may hand out: the serial space of form_code.py.
SERIAL_SPACE = MAX_SERIAL + 1  # 2**25


def content_hash(value: Any) -> str:
    """SHA-256 of canonical JSON (sorted keys, no spaces, UTF-8): the identity of a pushed
    record's content.

    orjson, not ``json.dumps``: a 5,000-form batch hashes every record twice (its answers, then
    the batch), and ``json.dumps(sort_keys=True)`` was an eighth of the batch's time; orjson
    takes a ninth of that. The bytes are those of ``json.dumps(sort_keys=True,
    separators=(",", ":"), ensure_ascii=False, default=str)`` (tested), except floats written
    with an exponent (``1e-7`` where json writes ``1e-07``), which answers never hold."""
    try:
        canonical = orjson.dumps(value, option=_CANONICAL, default=str)
    except TypeError:  # what orjson refuses (integers beyond 64 bits, non-string keys): json's way
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return hashlib.sha256(canonical).hexdigest()


# Datetimes through ``default=str``, as json.dumps wrote them, so stored digests keep matching.
_CANONICAL = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


@dataclass
class Payload:
    """An event payload built as a JSON-ready dict, for the bulk paths (a 5,000-form batch
    stages 10,000 events; building and dumping a pydantic model per event was a third of the
    batch's time). ``stage_events`` validates the first payload of each contract per call
    against the model, so the shape cannot drift from the contract; consumers validate every
    event when they read it (``Envelope.payload``)."""

    contract: type[EventData]
    data: dict[str, Any]
    subject: str | None


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


async def stage_events(session: AsyncSession, outbox: Table, events: Sequence[EventData | Payload]) -> None:
    """``shared.outbox.add_event`` for many events: one outbox row holding them as a group
    (``shared.outbox.add_envelopes``), published in this order, each with its own id."""
    await add_envelopes(session, outbox, envelopes(events))


def envelopes(events: Sequence[EventData | Payload]) -> list[dict]:
    """The events as envelope dicts, ready for ``shared.outbox``."""
    if not events:
        return []
    time = _iso(utcnow())
    cid = current_correlation_id()
    checked: set[type[EventData]] = set()
    out = []
    for event, event_id in zip(events, new_id_strings(len(events))):
        if isinstance(event, Payload):
            cls, data, subject = event.contract, event.data, event.subject
            if cls not in checked:
                cls.model_validate(data)
                checked.add(cls)
        else:
            cls, data, subject = type(event), event.model_dump(mode="json"), event.subject()
        out.append({
            "specversion": SPEC_VERSION, "id": event_id, "type": cls.event_type, "source": f"/sipas/{cls.producer}",
            "time": time, "subject": subject, "correlation_id": cid, "datacontenttype": "application/json", "data": data,
        })
    return out


# ---------------------------------------------------------------------- bulk writes on PostgreSQL
# A 5,000-form batch writes 5,000 responses, form updates and history rows (and one outbox row
# holding its 10,000 events, ``stage_events``). An executemany is one statement execution per
# row on the server plus SQLAlchemy's per-row bind processing in Python, and array parameters
# (``unnest``) cost asyncpg a type check per element. So on PostgreSQL each of these writes is
# one statement whose rows arrive as one JSON document (``json_to_recordset``), encoded by
# orjson in one call (a quarter of pydantic-core's ``to_json`` time on these rows): a single
# execution and round trip, and next to no Python per row. JSON text cannot carry NUL, which the
# API refuses anyway. SQLite keeps the executemany (in-process, no round trips to save).


async def overlapped(write: Awaitable[W], work: Callable[[], T]) -> tuple[W, T]:
    """Run ``write`` (a statement on the session) and meanwhile ``work`` (plain Python that does
    not touch the session); return what both returned once both are done.

    A request's Python and the database's work on its statements otherwise take turns, one of
    the two cores idle each time. The write is started as a task and given one turn of the loop
    to go out on the wire (asyncpg sends a cached statement in one write; aiosqlite hands it to
    its thread), then ``work`` runs while the server executes it. If it had not gone out yet it
    just runs after ``work``: slower, never wrong."""
    task = asyncio.ensure_future(write)
    await asyncio.sleep(0)
    try:
        result = work()
    except BaseException:
        await asyncio.gather(task, return_exceptions=True)  # the session must be idle again
        raise
    return await task, result


async def copy_records(session: AsyncSession, table: str, columns: Sequence[str], records: Iterable[tuple]) -> None:
    """PostgreSQL's binary ``COPY`` of ``records`` into ``table``, on the session's connection and
    inside its transaction (asyncpg's ``copy_records_to_table``; tables are unqualified, the
    service's schema is on the ``search_path``).

    The fastest way PostgreSQL takes rows: no SQL per row, no JSON document to parse, each value
    encoded by asyncpg's C codecs. For 5,000 responses it took half the time of the
    ``json_to_recordset`` insert. The transaction must have begun (a statement ran before): a
    COPY outside one would commit on its own, so that is refused.

    The server's errors come back as SQLAlchemy's ``DBAPIError``, as a statement's would, so the
    service's handler tells a transient one (deadlock, lock timeout: 503 and Retry-After) from
    the rest, whichever way the rows went in."""
    connection = (await (await session.connection()).get_raw_connection()).driver_connection
    if not connection.is_in_transaction():
        raise RuntimeError("copy_records needs a transaction that has begun")
    try:
        await connection.copy_records_to_table(table, columns=list(columns), records=records)
    except asyncpg.PostgresError as exc:
        raise DBAPIError(f"COPY {table}", None, exc) from exc


def json_rows(rows: list[dict]) -> str:
    """Rows as one JSON array for ``json_to_recordset``. Datetimes become ISO 8601 with their
    offset; anything else not JSON-native becomes ``str``, as the JSON column type does."""
    return orjson.dumps(rows, default=str).decode()


def is_pg(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


# A batch of moves and their history rows in one statement: the history comes from the rows the
# UPDATE returns, so it is neither built in Python nor sent and parsed as a second document.
_PG_FORM_MOVES = text(
    "WITH moved AS (UPDATE form SET status = m.status, change_seq = m.seq, enumerator_id = m.enum, "
    "updated_at = CAST(:now AS timestamptz) "
    "FROM json_to_recordset(CAST(:rows AS json)) AS m(id text, status text, seq bigint, enum text, before text, reason text) "
    "WHERE form.id = m.id RETURNING form.id, m.before, m.status, m.reason, m.seq) "
    "INSERT INTO form_history (form_id, from_status, to_status, actor, reason, at) "
    "SELECT moved.id, moved.before, moved.status, CAST(:actor AS text), moved.reason, CAST(:now AS timestamptz) "
    "FROM moved ORDER BY moved.seq"
)

_PG_HISTORY = text(
    "INSERT INTO form_history (form_id, from_status, to_status, actor, reason, at) "
    "SELECT r.form_id, r.from_status, r.to_status, CAST(:actor AS text), r.reason, CAST(:at AS timestamptz) "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(form_id text, from_status text, to_status text, reason text)"
)


_FORM_COLUMNS = {
    "id": "text", "wave_id": "text", "unit_id": "text", "form_code": "text", "serial": "integer", "role": "text",
    "stratum": "text", "province_code": "text", "commune_code": "text", "status": "text", "post_office": "text",
    "enumerator_id": "text", "replaces_form_id": "text", "reserve_exhausted": "boolean", "change_seq": "bigint",
    "opened_at": "timestamptz", "created_at": "timestamptz", "updated_at": "timestamptz", "draw_id": "text",
}
_PG_FORMS = text(
    f"INSERT INTO form ({', '.join(_FORM_COLUMNS)}) SELECT {', '.join('r.' + c for c in _FORM_COLUMNS)} "
    "FROM json_to_recordset(CAST(:rows AS json)) AS r(" + ", ".join(f"{c} {t}" for c, t in _FORM_COLUMNS.items()) + ")"
)


async def insert_history(session: AsyncSession, rows: list[dict]) -> None:
    """History rows of one moment by one actor (``rows`` all share ``actor`` and ``at``)."""
    if not rows:
        return
    if is_pg(session) and len({(r["actor"], r["at"]) for r in rows}) == 1:
        await session.execute(_PG_HISTORY, {"rows": json_rows(rows), "actor": rows[0]["actor"], "at": rows[0]["at"]})
    else:
        await session.execute(form_history.insert(), rows)


# ---------------------------------------------------------------------- wave prefix and serials


def prefix_candidates(code: str, year: int) -> list[str]:
    """Form-code prefixes for a wave, most readable first: the first usable letter of the wave
    code and the two-digit year (``SIPAS-2026`` → ``S26``); years whose digits are not in the
    alphabet (0 and 1 are never used) get two base-32 characters instead. Further candidates add
    a letter of the code, then any alphabet character, for waves of the same year."""
    letters = [ch for ch in code.upper() if ch in ALPHABET and ch.isalpha()] or ["S"]
    yy = f"{year % 100:02d}"
    if not all(ch in ALPHABET for ch in yy):
        offset = (year - 2000) % (32 * 32)
        yy = ALPHABET[offset // 32] + ALPHABET[offset % 32]
    first = letters[0]
    candidates = [first + yy]
    candidates += [first + extra + yy for extra in letters[1:]]
    candidates += [first + yy + ch for ch in ALPHABET]
    candidates += [first + a + yy for a in ALPHABET]
    seen: list[str] = []
    for c in candidates:
        if c not in seen:
            seen.append(c)
    return seen


def scatter(wave_id: str, counter: int) -> int:
    """The serial of the ``counter``-th form of a wave: an affine permutation of 0..2**25-1
    keyed by the wave, so serials are unique within a wave but not sequential (a typed code is
    hard to guess from a neighbour's; see form_code.py)."""
    digest = hashlib.sha256(wave_id.encode()).digest()
    a = int.from_bytes(digest[:4], "big") | 1  # odd: invertible modulo 2**25
    b = int.from_bytes(digest[4:8], "big")
    return (counter * a + b) % SERIAL_SPACE


@dataclass
class WaveLock:
    prefix: str
    first_counter: int  # counters handed out: first_counter .. first_counter + n - 1
    first_change: int


async def _lock_wave(session: AsyncSession, wave_id: str, *, serials: int = 0, changes: int = 0) -> WaveLock:
    """Take ``serials`` serials and ``changes`` change numbers of a wave (creating its counter
    row with a free prefix the first time), holding the row lock until commit."""
    stmt = (
        update(wave_counter)
        .where(wave_counter.c.wave_id == wave_id)
        .values(
            next_serial=wave_counter.c.next_serial + serials,
            change_seq=wave_counter.c.change_seq + changes,
        )
        .returning(wave_counter.c.prefix, wave_counter.c.next_serial, wave_counter.c.change_seq)
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        replica = (await session.execute(select(wave.c.code, wave.c.year).where(wave.c.id == wave_id))).first()
        if replica is None:
            # The wave event has not reached us yet: fail, the bus redelivers later.
            raise LookupError(f"wave {wave_id} is not known to the survey service yet")
        for candidate in prefix_candidates(replica.code, replica.year):
            claim = (
                insert_for(session, wave_counter)
                .values(wave_id=wave_id, prefix=candidate, next_serial=0, change_seq=0)
                .on_conflict_do_nothing()
            )
            await session.execute(claim)
            taken = await session.scalar(select(wave_counter.c.prefix).where(wave_counter.c.wave_id == wave_id))
            if taken is not None:
                break
        row = (await session.execute(stmt)).first()
    if row.next_serial > SERIAL_SPACE:
        raise InvalidState(f"wave {wave_id} has used all {SERIAL_SPACE} form codes")
    return WaveLock(row.prefix, row.next_serial - serials, row.change_seq - changes + 1)


async def lock_wave(session: AsyncSession, wave_id: str) -> None:
    """Take the wave's row lock first (see lock_form); 404 for a wave survey does not know."""
    locked = await session.execute(
        update(wave_counter).where(wave_counter.c.wave_id == wave_id).values(change_seq=wave_counter.c.change_seq)
    )
    if locked.rowcount == 0:
        await get_wave(session, wave_id)
        await _lock_wave(session, wave_id)


async def allocate_changes(session: AsyncSession, wave_id: str, n: int) -> int:
    """First of ``n`` consecutive change numbers of the wave (locks the wave until commit)."""
    return (await _lock_wave(session, wave_id, changes=n)).first_change


# ---------------------------------------------------------------------- creation


def _status_event(row: dict, status: str, reason: str | None = None) -> Payload:
    """``form.status_changed`` of a form row (see ``FormStatusChanged``)."""
    return Payload(FormStatusChanged, {
        "wave_id": str(row["wave_id"]), "form_code": row["form_code"], "unit_id": str(row["unit_id"]),
        "province_code": row["province_code"], "commune_code": row["commune_code"],
        "enumerator_id": row["enumerator_id"], "status": status, "reason": reason,
    }, row["form_code"])


async def create_forms(
    session: AsyncSession,
    tables: dict[str, Table],
    wave_id: str,
    units: Iterable[SampledUnit],
    *,
    actor: str,
    replaces: dict[str, str] | None = None,
    draw_id: str | None = None,
) -> list[dict]:
    """One form per unit not yet having one (idempotent by ``unit_id``, which is unique).
    ``replaces`` maps a new unit id to the id of the form it replaces.

    ``draw_id`` is the units' draw (``enter_draw``): the first units of a new draw of the wave
    withdraw the assigned forms of older draws (the ``sample.voided`` of the older one may come
    later, or never from a producer older than it), and units of a voided draw get no form."""
    units = list(units)
    if not units:
        return []
    if draw_id is not None and not await enter_draw(session, tables, wave_id, draw_id):
        return []
    ids = [str(u.unit_id) for u in units]
    have = set(
        (await session.scalars(select(form.c.unit_id).where(form.c.unit_id.in_(ids)))).all()
    )
    new = [u for u in units if str(u.unit_id) not in have]
    new = list({str(u.unit_id): u for u in new}.values())
    if not new:
        return []
    lock = await _lock_wave(session, wave_id, serials=len(new), changes=len(new))
    now = utcnow()
    rows = []
    ids = new_id_strings(len(new))
    for i, unit in enumerate(new):
        serial = scatter(wave_id, lock.first_counter + i)
        rows.append(
            {
                "id": ids[i],
                "wave_id": wave_id,
                "unit_id": str(unit.unit_id),
                "form_code": make_form_code(lock.prefix, serial),
                "serial": serial,
                "role": unit.role,
                "stratum": unit.stratum,
                "province_code": unit.province_code,
                "commune_code": unit.commune_code,
                "status": "assigned",
                "post_office": None,
                "enumerator_id": None,
                "replaces_form_id": (replaces or {}).get(str(unit.unit_id)),
                "reserve_exhausted": False,
                "change_seq": lock.first_change + i,
                "opened_at": None,
                "created_at": now,
                "updated_at": now,
                "draw_id": draw_id,
            }
        )
    if is_pg(session):
        await session.execute(_PG_FORMS, {"rows": json_rows(rows)})
    else:
        await session.execute(form.insert(), rows)
    await insert_history(
        session,
        [{"form_id": r["id"], "from_status": None, "to_status": "assigned", "actor": actor, "reason": None, "at": now} for r in rows],
    )
    await stage_events(session, tables["outbox"], [_status_event(r, "assigned") for r in rows])
    return rows


# ---------------------------------------------------------------------- draws and withdrawal


async def enter_draw(session: AsyncSession, tables: dict[str, Table], wave_id: str, draw_id: str) -> bool:
    """Note ``draw_id`` as the wave's draw in use; False when it was voided already (its forms
    must not be made). The first time a draw is seen, the wave's other draws become voided
    (superseded: sampling draws again only after a reset) and their assigned forms are withdrawn.
    Forms made before survey_0003 have no draw and are left alone: a replacement or redelivered
    chunk of the draw they belong to would otherwise withdraw a wave in the field. Later chunks
    of the draw find it noted and change nothing else (a wave's 200 chunks do not each scan its
    forms)."""
    await _lock_wave(session, wave_id)  # wave first, like every writer of the wave's forms
    status = await session.scalar(select(sample_draw.c.status).where(sample_draw.c.draw_id == draw_id))
    if status is not None:
        return status == "active"
    now = utcnow()
    await session.execute(sample_draw.insert().values(
        draw_id=draw_id, wave_id=wave_id, status="active", reason=None, changed_at=now))
    reason = f"superseded by draw {draw_id}"
    await session.execute(
        update(sample_draw)
        .where(sample_draw.c.wave_id == wave_id, sample_draw.c.draw_id != draw_id, sample_draw.c.status == "active")
        .values(status="voided", reason=reason, changed_at=now)
    )
    await withdraw_forms(session, tables, wave_id, form.c.draw_id != draw_id,
                         reason="draw reset: a new draw replaced it", actor="sampling")
    return True


async def void_draw(session: AsyncSession, tables: dict[str, Table], wave_id: str, draw_id: str, reason: str) -> int:
    """``sample.voided``: the draw is voided for good (a chunk of it arriving later makes no form)
    and its assigned forms are withdrawn. Returns how many were withdrawn (0 on a redelivery)."""
    await _lock_wave(session, wave_id)
    now = utcnow()
    known = await session.execute(
        update(sample_draw).where(sample_draw.c.draw_id == draw_id, sample_draw.c.status != "voided")
        .values(status="voided", reason=reason[:500], changed_at=now)
    )
    if known.rowcount == 0:
        await session.execute(
            insert_for(session, sample_draw)
            .values(draw_id=draw_id, wave_id=wave_id, status="voided", reason=reason[:500], changed_at=now)
            .on_conflict_do_nothing(index_elements=["draw_id"])
        )
    return await withdraw_forms(session, tables, wave_id, form.c.draw_id == draw_id,
                                reason=f"draw reset: {reason}"[:200], actor="sampling")


async def withdraw_forms(session: AsyncSession, tables: dict[str, Table], wave_id: str, which, *, reason: str,
                         actor: str) -> int:
    """Move the wave's ``assigned`` forms matching ``which`` to ``withdrawn`` (history, a change
    number each so the Vietnam Post pull shows the withdrawal, ``form.status_changed``). Only
    ``assigned`` ones: a reset is refused once the wave is in the field, so no other form of a
    voided draw should exist, and one that does (answered online early) keeps its outcome."""
    rows = (await session.execute(
        select(form).where(form.c.wave_id == wave_id, form.c.status == "assigned", which).order_by(form.c.change_seq)
    )).mappings().all()
    await apply_moves(session, tables, wave_id, [Move(dict(r), WITHDRAWN, reason) for r in rows], actor=actor)
    return len(rows)


def refuse_withdrawn(row: dict) -> None:
    """A withdrawn form takes no answer, status or keying: a clear 409 rather than "cannot go
    from withdrawn to …"."""
    if row["status"] == WITHDRAWN:
        raise InvalidState(WITHDRAWN_MESSAGE, reason="form_withdrawn", form_code=row["form_code"])


# ---------------------------------------------------------------------- reading


async def lock_form(session: AsyncSession, form_code: str) -> None:
    """Take the row lock of the form's wave (``wave_counter``) as the transaction's first
    statement. Every writer of a wave's forms takes that lock before touching a form row, so
    locks are always taken in the same order (wave, then forms) and two writers never deadlock;
    concurrent writers of one form queue on it and the second sees the first's result. On SQLite
    the write also takes the database write lock before anything is read (a read-then-write
    transaction there fails instead of waiting when another writer committed in between)."""
    wave_of_form = select(form.c.wave_id).where(form.c.form_code == form_code).scalar_subquery()
    await session.execute(
        update(wave_counter).where(wave_counter.c.wave_id == wave_of_form).values(change_seq=wave_counter.c.change_seq)
    )


async def get_form(session: AsyncSession, form_code: str) -> dict:
    row = (await session.execute(select(form).where(form.c.form_code == form_code))).mappings().first()
    if row is None:
        raise NotFound(f"No form {form_code}.")
    return dict(row)


def among(session: AsyncSession, column: Any, values: Sequence[str]) -> list[Any]:
    """``column IN values`` as the conditions of the queries that look many rows up: on
    PostgreSQL one condition with the values as one array parameter; on SQLite one per 1,000
    values (its limit on bound parameters). None for no values."""
    values = list(dict.fromkeys(values))
    if is_pg(session):
        return [column == any_(bindparam("values", values, type_=ARRAY(String)))] if values else []
    return [column.in_(values[start : start + 1000]) for start in range(0, len(values), 1000)]


async def forms_by_code(session: AsyncSession, codes: Sequence[str]) -> dict[str, dict]:
    """Forms by code, as plain dicts (callers update them in place as they move them)."""
    found: dict[str, dict] = {}
    names = [c.name for c in form.c]
    for where in among(session, form.c.form_code, codes):
        for row in (await session.execute(select(form).where(where))).all():
            d = dict(zip(names, row))
            found[d["form_code"]] = d
    return found


async def history(session: AsyncSession, form_id: str) -> list[dict]:
    rows = await session.execute(
        select(form_history).where(form_history.c.form_id == form_id).order_by(form_history.c.seq)
    )
    return [dict(r) for r in rows.mappings()]


# ---------------------------------------------------------------------- status moves


@dataclass
class Move:
    """One status move to apply: the form (as read), the new status, why, and optionally a new
    enumerator (Vietnam Post reports who visited)."""

    row: dict
    status: str
    reason: str | None = None
    replacement_reason: str | None = None
    enumerator_id: str | None = None


def check_move(row: dict, status: str) -> None:
    if status not in TRANSITIONS[row["status"]]:
        raise InvalidState(
            f"Form {row['form_code']} cannot go from {row['status']} to {status}.",
            allowed=sorted(TRANSITIONS[row["status"]]),
        )


async def apply_moves(
    session: AsyncSession, tables: dict[str, Table], wave_id: str, moves: Sequence[Move], *, actor: str,
    then: Sequence[EventData | Payload] = (),
) -> None:
    """Apply validated moves of one wave's forms in bulk: status, history, events (a
    ``replacement.requested`` for refused, unreachable and ineligible units). ``then``: more
    events of the same change, staged after the moves' own in the same outbox group."""
    if not moves:
        await stage_events(session, tables["outbox"], then)
        return
    first = await allocate_changes(session, wave_id, len(moves))
    now = utcnow()
    befores = [m.row["status"] for m in moves]
    for i, m in enumerate(moves):
        m.row.update(status=m.status, change_seq=first + i, updated_at=now)
        if m.enumerator_id is not None:
            m.row["enumerator_id"] = m.enumerator_id
    pg = is_pg(session)
    if pg:  # the history rows are written by the same statement
        statement, params = _PG_FORM_MOVES, {"now": now, "actor": actor, "rows": json_rows([
            {"id": m.row["id"], "status": m.status, "seq": m.row["change_seq"], "enum": m.row["enumerator_id"],
             "before": before, "reason": m.reason} for m, before in zip(moves, befores)])}
    else:
        await session.connection()  # make sure the executemany runs on this session's connection
        statement = (
            update(form)
            .where(form.c.id == bindparam("_id"))
            .values(status=bindparam("_status"), change_seq=bindparam("_seq"), updated_at=bindparam("_now"),
                    enumerator_id=bindparam("_enum"))
            .execution_options(synchronize_session=False)
        )
        params = [{"_id": m.row["id"], "_status": m.status, "_seq": m.row["change_seq"], "_now": now,
                   "_enum": m.row["enumerator_id"]} for m in moves]

    def history_and_events() -> tuple[list[dict], dict]:
        hist = [] if pg else [{"form_id": m.row["id"], "from_status": before, "to_status": m.status, "actor": actor,
                               "reason": m.reason, "at": now} for m, before in zip(moves, befores)]
        events: list[EventData | Payload] = []
        for m in moves:
            events.append(_status_event(m.row, m.status, m.reason))
            if m.status in NEEDS_REPLACEMENT:
                reason = m.replacement_reason or ("ineligible" if m.status == "ineligible" else m.status)
                events.append(ReplacementRequested(wave_id=wave_id, form_code=m.row["form_code"], unit_id=m.row["unit_id"],
                                                   reason=reason))
        return hist, encode_group(envelopes([*events, *then]))

    # History rows, events and their encoded outbox group are built while the database updates
    # the forms (a 5,000-form push: ~0.1 s of Python beside ~0.15 s of server time).
    _, (hist, group) = await overlapped(session.execute(statement, params), history_and_events)
    await insert_history(session, hist)
    await add_group(session, tables["outbox"], group)


async def change_status(
    session: AsyncSession,
    tables: dict[str, Table],
    form_code: str,
    status: str,
    *,
    actor: str,
    reason: str | None = None,
    replacement_reason: str | None = None,
) -> dict:
    await lock_form(session, form_code)
    row = await get_form(session, form_code)
    if status == "replaced":
        raise InvalidState("A form is replaced when sampling releases the replacement unit, not by hand.")
    refuse_withdrawn(row)
    check_move(row, status)
    await apply_moves(session, tables, row["wave_id"], [Move(row, status, reason, replacement_reason)], actor=actor)
    return row


# ---------------------------------------------------------------------- assignments


async def assign(
    session: AsyncSession,
    tables: dict[str, Table],
    wave_id: str,
    assignments: Sequence[tuple[str, str | None, str | None]],
    *,
    actor: str,
    province_code: str | None = None,
) -> tuple[int, list[str]]:
    """Set post office and enumerator of open forms (assign or reassign). Returns how many
    changed and the codes that were not assignable (unknown, other wave or province, closed)."""
    rows = await forms_by_code(session, [a[0] for a in assignments])
    refused: list[str] = []
    changes = []
    for code, office, enumerator in assignments:
        row = rows.get(code)
        if row is None or row["wave_id"] != wave_id or (province_code and row["province_code"] != province_code):
            refused.append(code)
            continue
        if row["status"] not in OPEN:
            refused.append(code)
            continue
        if (row["post_office"], row["enumerator_id"]) != (office, enumerator):
            changes.append((row, office, enumerator))
    if changes:
        first = await allocate_changes(session, wave_id, len(changes))
        now = utcnow()
        await session.execute(
            update(form)
            .where(form.c.id == bindparam("_id"))
            .values(post_office=bindparam("_office"), enumerator_id=bindparam("_enum"), change_seq=bindparam("_seq"), updated_at=bindparam("_now"))
            .execution_options(synchronize_session=False),
            [
                {"_id": row["id"], "_office": office, "_enum": enumerator, "_seq": first + i, "_now": now}
                for i, (row, office, enumerator) in enumerate(changes)
            ],
        )
        await session.execute(
            form_history.insert(),
            [
                {"form_id": row["id"], "from_status": row["status"], "to_status": row["status"], "actor": actor,
                 "reason": f"assigned to {office or '-'} / {enumerator or '-'}", "at": now}
                for row, office, enumerator in changes
            ],
        )
    return len(changes), refused


# ---------------------------------------------------------------------- replacements (unit.replaced)


async def on_unit_replaced(
    session: AsyncSession, tables: dict[str, Table], wave_id: str, replaced_unit_id: str,
    replacement: SampledUnit | None, reserve_exhausted: bool, draw_id: str | None = None,
) -> None:
    old = (await session.execute(select(form).where(form.c.unit_id == replaced_unit_id))).mappings().first()
    old = dict(old) if old is not None else None
    # The units' draw: from the event, else (older producers) the replaced unit's form.
    draw_id = draw_id or (old["draw_id"] if old else None)
    if draw_id is not None and not await enter_draw(session, tables, wave_id, draw_id):
        return  # a replacement in a voided draw: nothing of that draw is fielded
    if replacement is not None:
        await create_forms(
            session, tables, wave_id, [replacement], actor="sampling",
            replaces={str(replacement.unit_id): old["id"]} if old else None, draw_id=draw_id,
        )
    if old is None or old["status"] == WITHDRAWN:
        return
    if replacement is not None and old["status"] != "replaced":
        if "replaced" in TRANSITIONS[old["status"]]:
            await apply_moves(session, tables, wave_id, [Move(old, "replaced", "replacement released")], actor="sampling")
        else:
            # Sampling replaced a unit we have not heard was lost (e.g. marked by the province
            # in sampling): record it anyway, sampling owns the decision.
            await apply_moves(session, tables, wave_id, [Move(old, "replaced", f"replaced from {old['status']}")], actor="sampling")
    if reserve_exhausted and not old["reserve_exhausted"]:
        seq = await allocate_changes(session, wave_id, 1)
        await session.execute(
            update(form).where(form.c.id == old["id"]).values(reserve_exhausted=True, change_seq=seq, updated_at=utcnow())
        )
        await session.execute(
            form_history.insert().values(form_id=old["id"], from_status=old["status"], to_status=old["status"],
                                         actor="sampling", reason="reserve exhausted", at=utcnow())
        )


def wave_row_open(wave_row: dict | None) -> bool:
    return wave_row is not None and wave_row["status"] != "closed"


async def get_wave(session: AsyncSession, wave_id: str) -> dict:
    row = (await session.execute(select(wave).where(wave.c.id == wave_id))).mappings().first()
    if row is None:
        raise NotFound(f"No wave {wave_id} here (yet).")
    return dict(row)


def now() -> dt.datetime:
    return utcnow()
