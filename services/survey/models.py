"""Survey's tables (its own metadata: no other service reads them).

Plain SQLAlchemy Core tables: forms are created and updated in bulk (a sample of tens of
thousands of units, Vietnam Post batches of 5,000), which Core does with one statement per table.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, String, Table, UniqueConstraint

from shared.db import JSONType, UTCDateTime, service_base
from shared.tables import BigIntPK
from shared.waves import add_wave_replica

Base = service_base("survey")
metadata = Base.metadata

# This service's copy of sampling's waves, fed by wave events.
wave = add_wave_replica(metadata)

# Methodology versions published through the API (the shipped ones are files, see documents.py).
# A row is never updated: a published version is immutable.
methodology_version = Table(
    "methodology_version",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("document", JSONType, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("published_at", UTCDateTime(), nullable=False),
    Column("published_by", String(200), nullable=False),
)

# One row per wave: its form-code prefix, the next serial to hand out and the wave's change
# counter. Every write to a wave's forms updates this row first, so the row lock orders the
# writers of one wave: serials are never handed out twice and ``change_seq`` values commit in
# increasing order (the Vietnam Post changes-since cursor never skips a change).
wave_counter = Table(
    "wave_counter",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    Column("prefix", String(4), nullable=False),
    Column("next_serial", Integer, nullable=False),
    Column("change_seq", BigInteger, nullable=False),
    UniqueConstraint("prefix", name="uq_wave_counter_prefix"),
)

form = Table(
    "form",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("wave_id", String(36), nullable=False),
    Column("unit_id", String(36), nullable=False),
    Column("form_code", String(16), nullable=False),
    Column("serial", Integer, nullable=False),
    Column("role", String(10), nullable=False),
    Column("stratum", String(100), nullable=False),
    Column("province_code", String(8), nullable=False),
    Column("commune_code", String(12), nullable=True),
    Column("status", String(20), nullable=False),
    Column("post_office", String(40), nullable=True),
    Column("enumerator_id", String(40), nullable=True),
    Column("replaces_form_id", String(36), nullable=True),
    Column("reserve_exhausted", Boolean, nullable=False),
    Column("change_seq", BigInteger, nullable=False),
    Column("opened_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The sampling draw the form's unit belongs to (survey_0003; null for forms made before it),
    # so the forms of a voided draw can be withdrawn.
    Column("draw_id", String(36), nullable=True),
    UniqueConstraint("unit_id", name="uq_form_unit"),
    UniqueConstraint("form_code", name="uq_form_code"),
    Index("ix_form_wave_change", "wave_id", "change_seq"),
    Index("ix_form_wave_status", "wave_id", "status"),
)

# The draws of each wave survey has heard of. ``voided``: reset in sampling (sample.voided) or
# superseded by a later draw of the wave; a chunk or replacement of such a draw arriving late (the
# bus does not keep order across redeliveries) creates no form.
sample_draw = Table(
    "sample_draw",
    metadata,
    Column("draw_id", String(36), primary_key=True),
    Column("wave_id", String(36), nullable=False),
    Column("status", String(10), nullable=False),  # active | voided
    Column("reason", String(500), nullable=True),
    Column("changed_at", UTCDateTime(), nullable=False),
    Index("ix_sample_draw_wave", "wave_id", "status"),
)

# Every status move of every form, oldest first.
form_history = Table(
    "form_history",
    metadata,
    Column("seq", BigIntPK, primary_key=True, autoincrement=True),
    Column("form_id", String(36), nullable=False),
    Column("from_status", String(20), nullable=True),
    Column("to_status", String(20), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", String(200), nullable=True),
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_form_history_form", "form_id", "seq"),
)

# The accepted answers of a form: at most one (unique form_id), whatever the channel.
response = Table(
    "response",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("form_id", String(36), nullable=False),
    Column("wave_id", String(36), nullable=False),
    Column("channel", String(10), nullable=False),
    Column("answers", JSONType, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("enumerator_id", String(40), nullable=True),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("duration_seconds", Float, nullable=True),
    Column("submitted_at", UTCDateTime(), nullable=False),
    Column("source", String(80), nullable=False),
    # 1 for the first answers; +1 for each correction after a send-back by verification.
    Column("revision", Integer, nullable=False),
    UniqueConstraint("form_id", name="uq_response_form"),
    Index("ix_response_wave", "wave_id"),
)

# Send-backs from verification (correction.requested): open until corrected answers arrive
# (Vietnam Post push or ministry keying), which become the response's next revision. Item codes
# and reason codes only; the reviewer's free-text comment stays in verification.
correction = Table(
    "correction",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("form_id", String(36), nullable=False),
    Column("wave_id", String(36), nullable=False),
    Column("response_id", String(36), nullable=False),
    Column("revision", Integer, nullable=False),
    Column("reason_codes", JSONType, nullable=False),
    Column("items", JSONType, nullable=False),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    Column("resolved_revision", Integer, nullable=True),
    UniqueConstraint("form_id", "revision", name="uq_correction_revision"),
    Index("ix_correction_wave_open", "wave_id", "resolved_at"),
)

# Vietnam Post batches as received: the id makes a replay a no-op (same body: the stored result
# is returned) and a different body under a used id a 409.
vnpost_batch = Table(
    "vnpost_batch",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("kind", String(10), nullable=False),
    Column("owner_key_id", String(36), nullable=False),
    Column("wave_id", String(36), nullable=False),
    Column("body_hash", String(64), nullable=False),
    Column("result", JSONType, nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
)

# Keyed paper forms: entries 1 and 2 by two operators, entry 3 by a third when they differ.
# ``mismatches`` / ``compared_items`` are filled when the form is resolved (per-operator rates).
data_entry = Table(
    "data_entry",
    metadata,
    Column("id", BigIntPK, primary_key=True, autoincrement=True),
    Column("form_id", String(36), nullable=False),
    Column("wave_id", String(36), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("operator", String(40), nullable=False),
    Column("answers", JSONType, nullable=False),
    Column("mismatches", Integer, nullable=True),
    Column("compared_items", Integer, nullable=True),
    Column("entered_at", UTCDateTime(), nullable=False),
    UniqueConstraint("form_id", "seq", name="uq_data_entry_seq"),
    UniqueConstraint("form_id", "operator", name="uq_data_entry_operator"),
    Index("ix_data_entry_wave_operator", "wave_id", "operator"),
)
