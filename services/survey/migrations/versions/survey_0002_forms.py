"""Survey: published methodology versions, forms, history, responses, corrections, Vietnam Post batches, data entry.

Revision ID: survey_0002
Revises: survey_0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

import shared.db
from shared.tables import BigIntPK

revision = "survey_0002"
down_revision = "survey_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "methodology_version",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("document", shared.db.JSONType, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("published_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("published_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "wave_counter",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("prefix", sa.String(4), nullable=False),
        sa.Column("next_serial", sa.Integer, nullable=False),
        sa.Column("change_seq", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("prefix", name="uq_wave_counter_prefix"),
    )
    op.create_table(
        "form",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("unit_id", sa.String(36), nullable=False),
        sa.Column("form_code", sa.String(16), nullable=False),
        sa.Column("serial", sa.Integer, nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("stratum", sa.String(100), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=False),
        sa.Column("commune_code", sa.String(12), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("post_office", sa.String(40), nullable=True),
        sa.Column("enumerator_id", sa.String(40), nullable=True),
        sa.Column("replaces_form_id", sa.String(36), nullable=True),
        sa.Column("reserve_exhausted", sa.Boolean, nullable=False),
        sa.Column("change_seq", sa.BigInteger, nullable=False),
        sa.Column("opened_at", shared.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", shared.db.UTCDateTime(), nullable=False),
        sa.UniqueConstraint("unit_id", name="uq_form_unit"),
        sa.UniqueConstraint("form_code", name="uq_form_code"),
    )
    op.create_index("ix_form_wave_change", "form", ["wave_id", "change_seq"])
    op.create_index("ix_form_wave_status", "form", ["wave_id", "status"])
    op.create_table(
        "form_history",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("form_id", sa.String(36), nullable=False),
        sa.Column("from_status", sa.String(20), nullable=True),
        sa.Column("to_status", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("at", shared.db.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_form_history_form", "form_history", ["form_id", "seq"])
    op.create_table(
        "response",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("form_id", sa.String(36), nullable=False),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("answers", shared.db.JSONType, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("enumerator_id", sa.String(40), nullable=True),
        sa.Column("started_at", shared.db.UTCDateTime(), nullable=True),
        sa.Column("duration_seconds", sa.Float, nullable=True),
        sa.Column("submitted_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(80), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.UniqueConstraint("form_id", name="uq_response_form"),
    )
    op.create_index("ix_response_wave", "response", ["wave_id"])
    op.create_table(
        "correction",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("form_id", sa.String(36), nullable=False),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("response_id", sa.String(36), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("reason_codes", shared.db.JSONType, nullable=False),
        sa.Column("items", shared.db.JSONType, nullable=False),
        sa.Column("requested_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("resolved_at", shared.db.UTCDateTime(), nullable=True),
        sa.Column("resolved_revision", sa.Integer, nullable=True),
        sa.UniqueConstraint("form_id", "revision", name="uq_correction_revision"),
    )
    op.create_index("ix_correction_wave_open", "correction", ["wave_id", "resolved_at"])
    op.create_table(
        "vnpost_batch",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("owner_key_id", sa.String(36), nullable=False),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("result", shared.db.JSONType, nullable=False),
        sa.Column("received_at", shared.db.UTCDateTime(), nullable=False),
    )
    op.create_table(
        "data_entry",
        sa.Column("id", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("form_id", sa.String(36), nullable=False),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("operator", sa.String(40), nullable=False),
        sa.Column("answers", shared.db.JSONType, nullable=False),
        sa.Column("mismatches", sa.Integer, nullable=True),
        sa.Column("compared_items", sa.Integer, nullable=True),
        sa.Column("entered_at", shared.db.UTCDateTime(), nullable=False),
        sa.UniqueConstraint("form_id", "seq", name="uq_data_entry_seq"),
        sa.UniqueConstraint("form_id", "operator", name="uq_data_entry_operator"),
    )
    op.create_index("ix_data_entry_wave_operator", "data_entry", ["wave_id", "operator"])


def downgrade() -> None:
    for name in ("data_entry", "vnpost_batch", "correction", "response", "form_history", "form", "wave_counter", "methodology_version"):
        op.drop_table(name)
