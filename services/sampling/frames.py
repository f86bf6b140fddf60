"""Sampling frames (khung mẫu): records pushed in batches or uploaded as CSV, checked one by one.

Two kinds: *transaction* frames (people and organisations who received the result of an
administrative procedure, from the provincial portals) and *resident* frames (residents by
commune and village). A record's identity is (wave, transaction id / person id), which is the
table's primary key, so the same record pushed twice is one record. Contacts go to a table of
their own (``frame_contact``); nothing else in the service reads it except the contacts endpoint.

One ingestion path serves the JSON batch API and the CSV upload: records are validated, checked
against the wave's administrative units, deduplicated against the batch and the frame, and
written with bulk ``executemany`` inserts in chunks (ON CONFLICT DO NOTHING keeps a concurrent
push of the same records harmless). Everything of one request happens in one transaction: a
request that fails (a CSV that is not UTF-8, a malformed header) stores nothing.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import hashlib
import io
import json
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import BaseModel, ConfigDict, StringConstraints, TypeAdapter, ValidationError, model_validator
from sqlalchemy import func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from typing_extensions import TypedDict  # pydantic needs this one below Python 3.12

from services.sampling import units
from services.sampling.metrics import FRAME_RECORDS
from services.sampling.models import Wave, frame, frame_batch, frame_contact, frame_record
from shared import audit
from shared.auth import SCOPED_ROLES, Principal, Role, ensure_province_visible
from shared.db import utcnow
from shared.errors import Conflict, Forbidden, InvalidState, NotFound, PayloadTooLarge, Unprocessable

FrameKind = Literal["transaction", "resident"]
MAX_ERRORS = 1000  # a report lists at most this many record errors (counts stay exact)
CHUNK = 5000  # records validated and written together
INSERT_ROWS = 5000  # rows per executemany

Key = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$")]
Province = Annotated[str, StringConstraints(pattern=r"^[0-9]{2}$")]
Commune = Annotated[str, StringConstraints(pattern=r"^[0-9]{5}$")]
Short = Annotated[str, StringConstraints(min_length=1, max_length=60)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Phone = Annotated[str, StringConstraints(pattern=r"^\+?[0-9 .()-]{6,40}$")]
Email = Annotated[str, StringConstraints(pattern=r"^[^@\s]{1,100}@[^@\s]{1,99}$")]


def _nfc_strings(data: Any) -> Any:
    """Vietnamese text may arrive decomposed (NFD, e.g. from macOS): store it composed (NFC), so
    the same name always has the same bytes, sorts and hashes the same."""
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if isinstance(v, str):
                v = v.strip()
                if not v.isascii():  # ASCII is NFC already: skip the (costlier) normalisation
                    v = unicodedata.normalize("NFC", v)
                v = v or None  # an empty CSV cell is a missing value
            out[k] = v
        return out
    return data


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    province_code: Province
    commune_code: Commune | None = None
    full_name: Name | None = None
    phone: Phone | None = None
    email: Email | None = None
    address: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None

    _normalise = model_validator(mode="before")(classmethod(lambda cls, data: _nfc_strings(data)))

    def contact(self) -> dict[str, Any] | None:
        values = dict(full_name=self.full_name, phone=self.phone, email=self.email, address=self.address)
        return values if any(values.values()) else None


class TransactionRecord(_Record):
    """One administrative transaction whose result was delivered (TTHC đã trả kết quả)."""

    transaction_id: Key
    procedure_code: Short
    field: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    level: Literal["central", "province", "district", "commune"]
    agency: Name | None = None
    received_on: dt.date | None = None
    result_on: dt.date | None = None
    respondent_type: Literal["citizen", "organisation"]

    @model_validator(mode="after")
    def _dates(self) -> TransactionRecord:
        if self.received_on and self.result_on and self.result_on < self.received_on:
            raise ValueError("result_on is before received_on")
        return self

    @property
    def key(self) -> str:
        return self.transaction_id

    def row(self) -> dict[str, Any]:
        return dict(province_code=self.province_code, commune_code=self.commune_code, village_code=None,
                    household_id=None, procedure_code=self.procedure_code, field=self.field, level=self.level,
                    agency=self.agency, received_on=self.received_on, result_on=self.result_on,
                    respondent_type=self.respondent_type)


class ResidentRecord(_Record):
    """One resident aged 18+ of a village (thôn, tổ dân phố)."""

    person_id: Key
    commune_code: Commune
    village_code: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")]
    household_id: Annotated[str, StringConstraints(min_length=1, max_length=60)] | None = None

    @property
    def key(self) -> str:
        return self.person_id

    def row(self) -> dict[str, Any]:
        return dict(province_code=self.province_code, commune_code=self.commune_code, village_code=self.village_code,
                    household_id=self.household_id, procedure_code=None, field=None, level=None, agency=None,
                    received_on=None, result_on=None, respondent_type="citizen")


RECORD_MODELS: dict[str, type[_Record]] = {"transaction": TransactionRecord, "resident": ResidentRecord}
KEY_FIELD = {"transaction": "transaction_id", "resident": "person_id"}
RECORD_COLUMNS = ("province_code", "commune_code", "village_code", "household_id", "procedure_code", "field",
                  "level", "agency", "received_on", "result_on", "respondent_type")
CSV_COLUMNS = {kind: tuple(model.model_fields) for kind, model in RECORD_MODELS.items()}


# The same formats as TypedDicts, validated a whole chunk at a time by one TypeAdapter: the
# models above cost an object and a Python validator call per record, which at a million records
# is most of an upload's time; pydantic-core checks a list of TypedDicts without leaving Rust.
# (The models stay: they document the formats and give the CSV columns.) Text is stripped and
# NFC-normalised before validation by ``_clean``, as the models' before-validator does.
_ContactFields = {
    "full_name": NotRequired[Name | None], "phone": NotRequired[Phone | None], "email": NotRequired[Email | None],
    "address": NotRequired[Annotated[str, StringConstraints(min_length=1, max_length=500)] | None],
}
_STRICT = ConfigDict(extra="forbid")
_TransactionDict = TypedDict("_TransactionDict", {
    "transaction_id": Required[Key], "province_code": Required[Province], "commune_code": NotRequired[Commune | None],
    "procedure_code": Required[Short],
    "field": Required[Annotated[str, StringConstraints(min_length=1, max_length=100)]],
    "level": Required[Literal["central", "province", "district", "commune"]], "agency": NotRequired[Name | None],
    "received_on": NotRequired[dt.date | None], "result_on": NotRequired[dt.date | None],
    "respondent_type": Required[Literal["citizen", "organisation"]], **_ContactFields,
})
_ResidentDict = TypedDict("_ResidentDict", {
    "person_id": Required[Key], "province_code": Required[Province], "commune_code": Required[Commune],
    "village_code": Required[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")]],
    "household_id": NotRequired[Annotated[str, StringConstraints(min_length=1, max_length=60)] | None],
    **_ContactFields,
})

def _in_model_order(td, model: type[BaseModel]):
    """The TypedDict with its keys in the model's field order, so problems are listed in the
    same order as the model lists them."""
    fields = td.__annotations__
    assert set(fields) == set(model.model_fields), td
    ordered = TypedDict(td.__name__, {name: fields[name] for name in model.model_fields})
    ordered.__pydantic_config__ = _STRICT
    return ordered


_TransactionDict = _in_model_order(_TransactionDict, TransactionRecord)
_ResidentDict = _in_model_order(_ResidentDict, ResidentRecord)
CHUNK_ADAPTERS = {"transaction": TypeAdapter(list[_TransactionDict]), "resident": TypeAdapter(list[_ResidentDict])}
_DATES_PROBLEM = "record: Value error, result_on is before received_on"  # as TransactionRecord._dates words it


def _clean(item: dict) -> list[str] | None:
    """Strip, NFC-normalise and turn empty text into a missing value, in place (the record is the
    request's own; its payload hash was taken before). Same effect as ``_nfc_strings``. Returns
    the fields holding a NUL character, if any: PostgreSQL text cannot store one, so such a
    record is refused on both backends rather than failing the whole request on one."""
    nul = None
    for k, v in item.items():
        if v.__class__ is str:
            s = v.strip()
            if not s:
                item[k] = None
                continue
            if not s.isascii():
                item[k] = unicodedata.normalize("NFC", s)
            elif s is not v:
                item[k] = s
            if "\x00" in s:
                nul = (nul or []) + [k]
    return nul


def _validate_chunk(kind: str, items: list[dict]) -> tuple[list[tuple[int, dict]], dict[int, list[str]]]:
    """Validate records with one call; returns (position, valid record) pairs and the problems
    of the others by position. Only when some record fails are the others validated again."""
    adapter = CHUNK_ADAPTERS[kind]
    try:
        return list(enumerate(adapter.validate_python(items))), {}
    except ValidationError as exc:
        bad: dict[int, list[str]] = {}
        # Field names and rule messages only: never echo a value (it may be a name or a phone).
        for e in exc.errors(include_url=False, include_context=False, include_input=False):
            loc = e["loc"]
            bad.setdefault(loc[0], []).append(f"{'.'.join(str(p) for p in loc[1:]) or 'record'}: {e['msg']}")
    good = [i for i in range(len(items)) if i not in bad]
    return list(zip(good, adapter.validate_python([items[i] for i in good]))), bad


# --------------------------------------------------------------------------------------------
# access and state checks


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


async def _wave_for_frame(session: AsyncSession, principal: Principal, wave_id: str) -> Wave:
    # Not a UUID: no such wave (and no odd bytes, such as NUL, ever reach the database).
    wave = await session.get(Wave, wave_id) if _is_uuid(wave_id) else None
    if wave is None:
        raise NotFound(f"No wave {wave_id}.")
    ensure_province_visible(principal, wave.province_code, "wave")
    return wave


def _check_manager(principal: Principal, wave: Wave) -> None:
    """Who runs a wave's frame (closing it, designing, drawing): the ministry, or the province
    for its own provincial wave."""
    if principal.role in (Role.ministry, Role.service):
        return
    if principal.role == Role.province and wave.province_code is not None and wave.province_code == principal.province_code:
        return
    raise Forbidden("Only the ministry, or the province for its own provincial wave, may do this.")


async def _open_frame(session: AsyncSession, wave: Wave, kind: str) -> dict:
    if wave.status != "frame_open":
        raise InvalidState(f"The wave is {wave.status}: frames are accepted only while it is frame_open.")
    row = (await session.execute(select(frame).where(frame.c.wave_id == wave.id))).mappings().first()
    if row is None:
        try:
            async with session.begin_nested():
                await session.execute(frame.insert().values(wave_id=wave.id, kind=kind, status="open",
                                                            record_count=0, opened_at=utcnow()))
        except IntegrityError:
            pass  # created concurrently by another push
        row = (await session.execute(select(frame).where(frame.c.wave_id == wave.id))).mappings().first()
    if row["kind"] != kind:
        raise Conflict(f"This wave's frame holds {row['kind']} records, not {kind} records.")
    if row["status"] != "open":
        raise InvalidState("The frame is closed: no more records are accepted.")
    return dict(row)


# --------------------------------------------------------------------------------------------
# ingestion (shared by JSON batches and CSV uploads)


@dataclass
class Ingest:
    """The running state of one push or upload."""

    wave: Wave
    kind: str
    principal: Principal
    index: units.UnitIndex
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[dict] = field(default_factory=list)
    seen: dict[str, tuple] = field(default_factory=dict)
    staging: bool = False  # PostgreSQL: the COPY staging table exists in this transaction

    def error(self, index: int, key: str | None, problems: list[str]) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"index": index, "record_key": key, "problems": problems})

    def report(self, batch_id: str) -> dict:
        return dict(batch_id=batch_id, kind=self.kind, received=self.received, accepted=self.accepted,
                    duplicates=self.duplicates, rejected=self.rejected,
                    errors=sorted(self.errors, key=lambda e: e["index"]),
                    errors_truncated=self.rejected > len(self.errors), replayed=False)


async def ingest_chunk(session: AsyncSession, state: Ingest, raw: list[tuple[int, Any]]) -> None:
    """Validate and store up to a few thousand records (index, raw dict).

    Records are plain tuples from validation to the database (no object per record): the record
    row in ``_ALL`` order, its contact in ``_CONTACT`` order.
    """
    kind = state.kind
    key_field = KEY_FIELD[kind]
    items: list[dict] = []
    positions: list[int] = []
    for index, item in raw:
        state.received += 1
        if not isinstance(item, dict):
            state.error(index, None, ["record: must be an object"])
            continue
        nul = _clean(item)
        if nul:
            key = item.get(key_field)
            state.error(index, key if isinstance(key, str) and "\x00" not in key else None,
                        [f"{name}: must not contain NUL characters" for name in nul])
            continue
        items.append(item)
        positions.append(index)
    checked, bad = _validate_chunk(kind, items)
    for i, problems in bad.items():
        key = items[i].get(key_field)
        state.error(positions[i], key if isinstance(key, str) else None, problems)

    wave_id = state.wave.id
    index_units = state.index
    commune_province = index_units.commune_province
    provinces = index_units.provinces
    only_province = state.principal.province_code if state.principal.role in SCOPED_ROLES else None
    wave_province = state.wave.province_code
    seen = state.seen
    transaction = kind == "transaction"
    # key -> (position, record row, contact row or None)
    valid: dict[str, tuple[int, tuple, tuple | None]] = {}
    for i, rec in checked:
        index = positions[i]
        key = rec[key_field]
        province, commune = rec["province_code"], rec.get("commune_code")
        if transaction:
            received_on, result_on = rec.get("received_on"), rec.get("result_on")
            if received_on and result_on and result_on < received_on:
                state.error(index, key, [_DATES_PROBLEM])
                continue
        if commune is None or commune_province.get(commune) != province or province not in provinces:
            unit_problem = index_units.problem(province, commune)
            if unit_problem:
                state.error(index, key, [unit_problem])
                continue
        if only_province is not None and province != only_province:
            state.error(index, key, [f"province_code: this key may push records of province {only_province} only"])
            continue
        if wave_province is not None and province != wave_province:
            state.error(index, key, [f"province_code: the wave covers province {wave_province} only"])
            continue
        if transaction:
            row = (wave_id, key, province, commune, None, None, rec["procedure_code"], rec["field"], rec["level"],
                   rec.get("agency"), received_on, result_on, rec["respondent_type"])
        else:
            row = (wave_id, key, province, commune, rec["village_code"], rec.get("household_id"), None, None, None,
                   None, None, None, "citizen")
        earlier = seen.get(key)
        if earlier is None and key in valid:
            earlier = valid[key][1][2:]
        if earlier is not None:
            if earlier == row[2:]:
                state.duplicates += 1
            else:
                state.error(index, key, ["record_key: appears twice in this upload with different content"])
            continue
        contact = (rec.get("full_name"), rec.get("phone"), rec.get("email"), rec.get("address"))
        valid[key] = (index, row, (wave_id, key, *contact) if any(contact) else None)
    if not valid:
        return
    conn = await session.connection()
    postgres = conn.dialect.name == "postgresql"
    # Insert first, ON CONFLICT DO NOTHING, keeping the keys that were new: a fresh frame (the
    # usual case, by the million) costs no lookup at all. Only keys already in the frame are
    # read back, to tell a duplicate from a clash.
    rows = [row for _, row, _ in valid.values()]
    if postgres:
        inserted = await _pg_insert_records(conn, state, rows)
    else:
        inserted = set()
        rec_stmt = (
            units.insert_for(session, frame_record)
            .on_conflict_do_nothing(index_elements=["wave_id", "record_key"])
            .returning(frame_record.c.record_key)
        )
        for start in range(0, len(rows), INSERT_ROWS):
            part = [dict(zip(_ALL, r)) for r in rows[start : start + INSERT_ROWS]]
            inserted.update((await conn.execute(rec_stmt, part)).scalars().all())
    existing: dict[str, tuple] = {}
    if len(inserted) < len(valid):
        clashes = [k for k in valid if k not in inserted]
        cols = [frame_record.c.record_key] + [frame_record.c[c] for c in RECORD_COLUMNS]
        for start in range(0, len(clashes), 500):
            part = clashes[start : start + 500]
            result = await session.execute(
                select(*cols).where(frame_record.c.wave_id == wave_id, frame_record.c.record_key.in_(part))
            )
            for r in result.all():
                existing[r[0]] = tuple(r[1:])
    contacts = []
    for key, (index, row, contact) in valid.items():
        content = row[2:]
        if key not in inserted:
            if existing.get(key) == content:
                state.duplicates += 1
            else:
                state.error(index, key, ["record_key: already in the frame with different content"])
            continue
        if contact:
            contacts.append(contact)
        seen[key] = content
    if len(seen) > 200_000:  # in-upload duplicate check: bounded memory, the DB check remains
        seen.clear()
    if contacts:
        if postgres:
            # Only contacts of records this transaction has just inserted: none can be there yet
            # (a contact is only ever written with its new record), so a plain COPY is safe.
            raw_conn = await _driver_connection(conn)
            await raw_conn.copy_records_to_table("frame_contact", records=contacts, columns=_CONTACT)
        else:
            con_stmt = units.insert_for(session, frame_contact).on_conflict_do_nothing(
                index_elements=["wave_id", "record_key"]
            )
            for start in range(0, len(contacts), INSERT_ROWS):
                await conn.execute(con_stmt, [dict(zip(_CONTACT, c)) for c in contacts[start : start + INSERT_ROWS]])
    state.accepted += len(inserted)


_ALL = ("wave_id", "record_key", *RECORD_COLUMNS)
_CONTACT = ("wave_id", "record_key", "full_name", "phone", "email", "address")
_STAGE = "sipas_frame_record_stage"


async def _driver_connection(conn):
    """The asyncpg connection under the session's (same connection, same transaction)."""
    return (await conn.get_raw_connection()).driver_connection


async def _pg_insert_records(conn, state: Ingest, rows: list[tuple]) -> set[str]:
    """PostgreSQL: COPY the rows into a temporary staging table (binary COPY is several times
    cheaper than any INSERT for the client and the server), then one INSERT … SELECT … ON
    CONFLICT DO NOTHING RETURNING record_key moves them into the frame: the same idempotency as
    a plain insert, and the keys that were new. The staging table lives until the transaction
    ends (ON COMMIT DROP; a rollback removes it too), so it is created once per upload."""
    if not state.staging:
        # Through SQLAlchemy, so the transaction is begun before the driver connection is used.
        # (IF NOT EXISTS: two ingestions in one transaction share it; it is emptied after each chunk.)
        await conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (LIKE frame_record) ON COMMIT DROP")
        state.staging = True
    raw_conn = await _driver_connection(conn)
    await raw_conn.copy_records_to_table(_STAGE, records=rows, columns=_ALL)
    cols = ", ".join(_ALL)
    keys = await raw_conn.fetch(
        f"INSERT INTO frame_record ({cols}) SELECT {cols} FROM {_STAGE} "
        "ON CONFLICT (wave_id, record_key) DO NOTHING RETURNING record_key"
    )
    await raw_conn.execute(f"TRUNCATE {_STAGE}")
    return {k[0] for k in keys}


def _batch_scope(principal: Principal) -> str:
    """Batch ids are a portal's own: two provinces may both send batch "2026-08-01"."""
    return principal.province_code or "*"


async def _stored_batch(session: AsyncSession, wave_id: str, scope: str, batch_id: str) -> dict | None:
    row = (
        await session.execute(
            select(frame_batch.c.payload_hash, frame_batch.c.report).where(
                frame_batch.c.wave_id == wave_id, frame_batch.c.province_code == scope, frame_batch.c.batch_id == batch_id
            )
        )
    ).first()
    return None if row is None else {"payload_hash": row[0], "report": row[1]}


def _replay(stored: dict, payload_hash: str, batch_id: str) -> dict:
    if stored["payload_hash"] != payload_hash:
        raise Conflict(f"Batch {batch_id} was already received with different content.", batch_id=batch_id)
    return {**stored["report"], "replayed": True}


async def _finish(session: AsyncSession, tables, state: Ingest, scope: str, batch_id: str, source: str,
                  payload_hash: str) -> dict:
    report = state.report(batch_id)
    try:
        async with session.begin_nested():
            await session.execute(frame_batch.insert().values(
                wave_id=state.wave.id, province_code=scope, batch_id=batch_id, source=source,
                payload_hash=payload_hash, report=report, actor=state.principal.actor, created_at=utcnow()))
    except IntegrityError as exc:
        raise Conflict(f"Batch {batch_id} is being received by another request; send it again for its report.") from exc
    await session.execute(
        update(frame).where(frame.c.wave_id == state.wave.id).values(record_count=frame.c.record_count + state.accepted)
    )
    for outcome, n in (("accepted", state.accepted), ("duplicate", state.duplicates), ("rejected", state.rejected)):
        if n:
            FRAME_RECORDS.labels("sampling", outcome).inc(n)
    await audit.record(session, tables["audit_log"], state.principal, "frame.batch", "frame", state.wave.id,
                       wave_id=state.wave.id, details={"batch_id": batch_id, "source": source, "kind": state.kind,
                                                       "received": state.received, "accepted": state.accepted,
                                                       "duplicates": state.duplicates, "rejected": state.rejected})
    return report


async def push_batch(session: AsyncSession, tables, principal: Principal, wave_id: str, kind: str,
                     batch_id: str, records: list[Any]) -> dict:
    from services.sampling.schemas import MAX_BATCH

    if len(records) > MAX_BATCH:
        raise PayloadTooLarge(f"A batch holds at most {MAX_BATCH} records; this one has {len(records)}. "
                              "Split it, or upload a CSV file.", limit=MAX_BATCH)
    wave = await _wave_for_frame(session, principal, wave_id)
    scope = _batch_scope(principal)
    payload_hash = hashlib.sha256(
        json.dumps(records, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()
    ).hexdigest()
    stored = await _stored_batch(session, wave.id, scope, batch_id)
    if stored is not None:
        return _replay(stored, payload_hash, batch_id)
    await _open_frame(session, wave, kind)
    state = Ingest(wave, kind, principal, await units.load_index(session, wave.unit_set))
    for start in range(0, len(records), CHUNK):
        await ingest_chunk(session, state, list(enumerate(records[start : start + CHUNK], start=start)))
    return await _finish(session, tables, state, scope, batch_id, "api", payload_hash)


# --------------------------------------------------------------------------------------------
# CSV upload (streamed)


async def _csv_records(chunks: AsyncIterator[bytes], hasher) -> AsyncIterator[list[list[str]]]:
    """Decode a streamed UTF-8 CSV and yield parsed rows in groups, never holding the file.

    A record may span lines (a quoted address with a newline): lines are grouped until their
    quotes balance before parsing. A byte sequence that is not UTF-8 stops the upload with a
    clear problem (the whole request is rolled back).
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    pending = ""
    offset = 0

    def parse(text: str) -> list[list[str]]:
        return list(csv.reader(io.StringIO(text), strict=True))

    def decode(data: bytes, final: bool = False) -> str:
        try:
            return decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise Unprocessable(
                f"The file is not UTF-8 (invalid byte at offset {offset + exc.start}). Save it as "
                "'CSV UTF-8' and upload it again; nothing was stored.", encoding="utf-8"
            ) from None

    async for data in chunks:
        hasher.update(data)
        text = pending + decode(data)
        offset += len(data)
        cut = text.rfind("\n")
        if cut < 0:
            pending = text
            continue
        complete, pending = text[: cut + 1], text[cut + 1 :]
        if complete.count('"') % 2:  # a quoted field continues past the last newline
            pending = complete + pending
            continue
        yield _safe_parse(parse, complete)
    tail = pending + decode(b"", True)
    if tail.strip():
        yield _safe_parse(parse, tail)


def _safe_parse(parse, text: str) -> list[list[str]]:
    try:
        return parse(text)
    except csv.Error as exc:
        raise Unprocessable(f"The CSV file is malformed ({exc}); nothing was stored.") from None


async def upload_csv(session: AsyncSession, tables, principal: Principal, wave_id: str, kind: str, batch_id: str,
                     chunks: AsyncIterator[bytes]) -> dict:
    wave = await _wave_for_frame(session, principal, wave_id)
    scope = _batch_scope(principal)
    hasher = hashlib.sha256()
    stored = await _stored_batch(session, wave.id, scope, batch_id)
    if stored is not None:
        async for data in chunks:
            hasher.update(data)
        return _replay(stored, hasher.hexdigest(), batch_id)
    await _open_frame(session, wave, kind)
    state = Ingest(wave, kind, principal, await units.load_index(session, wave.unit_set))
    header: list[str] | None = None
    allowed = CSV_COLUMNS[kind]
    row_no = 0
    buffer: list[tuple[int, Any]] = []
    async for rows in _csv_records(chunks, hasher):
        for row in rows:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if header is None:
                header = [h.strip() for h in row]
                unknown = [h for h in header if h not in allowed]
                missing = [c for c in (KEY_FIELD[kind], "province_code") if c not in header]
                if unknown or missing or len(set(header)) != len(header):
                    raise Unprocessable(
                        "The CSV header does not match the frame format; nothing was stored.",
                        unknown_columns=unknown, missing_columns=missing, allowed_columns=list(allowed),
                    )
                continue
            if len(row) != len(header):
                state.received += 1
                state.error(row_no, None, [f"row: {len(row)} cells, the header has {len(header)}"])
            else:
                buffer.append((row_no, dict(zip(header, row))))
            row_no += 1
            if len(buffer) >= CHUNK:
                await ingest_chunk(session, state, buffer)
                buffer = []
    if header is None:
        raise Unprocessable("The CSV file is empty (no header row); nothing was stored.")
    if buffer:
        await ingest_chunk(session, state, buffer)
    return await _finish(session, tables, state, scope, batch_id, "csv", hasher.hexdigest())


# --------------------------------------------------------------------------------------------
# reading and closing


async def frame_row(session: AsyncSession, wave_id: str) -> dict | None:
    row = (await session.execute(select(frame).where(frame.c.wave_id == wave_id))).mappings().first()
    return dict(row) if row else None


async def read_frame(session: AsyncSession, principal: Principal, wave_id: str) -> dict:
    wave = await _wave_for_frame(session, principal, wave_id)
    row = await frame_row(session, wave.id)
    if row is None:
        raise NotFound("This wave has no frame yet: push records while the wave is frame_open.")
    query = (
        select(frame_record.c.province_code, func.count())
        .where(frame_record.c.wave_id == wave.id)
        .group_by(frame_record.c.province_code)
    )
    if principal.role in SCOPED_ROLES:
        query = query.where(frame_record.c.province_code == principal.province_code)
    by_province = {p: n for p, n in (await session.execute(query)).all()}
    return {**row, "by_province": by_province}


def ordered_by_key(session: AsyncSession, column):
    """ORDER BY in code-point order on both backends (PostgreSQL's default collation is a
    locale's, which orders differently from one machine to the next)."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        return column.collate("C")
    return column


def _fingerprint_line(key: str, values: Iterable[Any]) -> bytes:
    cells = [key] + [v.isoformat() if isinstance(v, dt.date) else v for v in values]
    return (json.dumps(cells, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


async def fingerprint(session: AsyncSession, wave_id: str) -> str:
    """SHA-256 of the frame's canonical content: one JSON line per record, in code-point order of
    the record key, with every frame column (contacts excluded: they do not affect the draw and
    the observers who compare fingerprints may not see them)."""
    hasher = hashlib.sha256(b"sipas-frame/1\n")
    cols = [frame_record.c.record_key] + [frame_record.c[c] for c in RECORD_COLUMNS]
    result = await session.stream(
        select(*cols).where(frame_record.c.wave_id == wave_id).order_by(ordered_by_key(session, frame_record.c.record_key)),
        execution_options={"yield_per": 10_000},
    )
    async for part in result.partitions():
        hasher.update(b"".join(_fingerprint_line(r[0], r[1:]) for r in part))
    return hasher.hexdigest()


async def close_frame(session: AsyncSession, tables, principal: Principal, wave_id: str) -> dict:
    wave = await _wave_for_frame(session, principal, wave_id)
    _check_manager(principal, wave)
    row = await frame_row(session, wave.id)
    if row is None:
        raise InvalidState("This wave has no frame to close.")
    if row["status"] == "closed":
        return await read_frame(session, principal, wave_id)
    count = await session.scalar(select(func.count()).select_from(frame_record).where(frame_record.c.wave_id == wave.id))
    digest = await fingerprint(session, wave.id)
    result = await session.execute(
        update(frame).where(frame.c.wave_id == wave.id, frame.c.status == "open")
        .values(status="closed", fingerprint=digest, record_count=count, closed_at=utcnow())
    )
    if result.rowcount != 1:
        raise Conflict("The frame was closed concurrently.")
    await audit.record(session, tables["audit_log"], principal, "frame.close", "frame", wave.id, wave_id=wave.id,
                       details={"records": count, "fingerprint": digest})
    return await read_frame(session, principal, wave_id)


__all__ = ["CSV_COLUMNS", "close_frame", "fingerprint", "push_batch", "read_frame", "tuple_", "upload_csv"]
