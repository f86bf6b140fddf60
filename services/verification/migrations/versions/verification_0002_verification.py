"""Verification: sample copy, forms, responses, decisions, review history, screening parameters,
back-check draws and outcomes, escalations, entry comparisons.

Revision ID: verification_0002
Revises: verification_0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from shared.db import JSONType, UTCDateTime
from shared.tables import BigIntPK

revision = "verification_0002"
down_revision = "verification_0001"
branch_labels = None
depends_on = None


def _pk() -> sa.Column:
    return sa.Column("id", BigIntPK, primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "sample_unit",
        _pk(),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("unit_id", sa.String(36), nullable=False),
        sa.Column("draw_id", sa.String(36), nullable=False),
        sa.Column("joined", sa.String(20), nullable=False),
        sa.Column("stratum", sa.String(200), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=False),
        sa.Column("commune_code", sa.String(16), nullable=True),
        sa.Column("psu", sa.String(200), nullable=False),
        sa.Column("ssu", sa.String(200), nullable=True),
        sa.Column("pi", sa.Float(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("level", sa.String(100), nullable=True),
        sa.Column("field", sa.String(100), nullable=True),
        sa.Column("procedure_code", sa.String(100), nullable=True),
        sa.Column("respondent_type", sa.String(100), nullable=True),
        sa.Column("replaced", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("wave_id", "unit_id", name="uq_sample_unit"),
    )
    op.create_table(
        "form",
        _pk(),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("form_code", sa.String(40), nullable=False),
        sa.Column("unit_id", sa.String(36), nullable=True),
        sa.Column("province_code", sa.String(8), nullable=True),
        sa.Column("commune_code", sa.String(16), nullable=True),
        sa.Column("enumerator_id", sa.String(100), nullable=True),
        sa.Column("field_status", sa.String(20), nullable=True),
        sa.Column("field_status_time", UTCDateTime(), nullable=True),
        sa.Column("dispatched", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(20), nullable=True),
        sa.Column("decided_by", sa.String(20), nullable=True),
        sa.Column("response_id", sa.String(36), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("reasons", JSONType, nullable=True),
        sa.Column("decision_version", sa.Integer(), nullable=False),
        sa.Column("published", sa.String(20), nullable=True),
        sa.Column("voided", sa.Boolean(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("wave_id", "form_code", name="uq_form_code"),
        sa.Index("ix_form_wave_state", "wave_id", "state"),
    )
    op.create_table(
        "response",
        _pk(),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("form_code", sa.String(40), nullable=False),
        sa.Column("response_id", sa.String(36), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.String(36), nullable=False),
        sa.Column("stratum", sa.String(200), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=False),
        sa.Column("commune_code", sa.String(16), nullable=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("enumerator_id", sa.String(100), nullable=True),
        sa.Column("methodology_version", sa.String(40), nullable=False),
        sa.Column("answers", JSONType, nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("submitted_at", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=True),
        sa.Column("findings", JSONType, nullable=True),
        sa.UniqueConstraint("response_id", "revision", name="uq_response_revision"),
        sa.Index("ix_response_form", "wave_id", "form_code"),
    )
    op.create_table(
        "decision",
        _pk(),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("form_code", sa.String(40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("reasons", JSONType, nullable=False),
        sa.Column("basis", JSONType, nullable=False),
        sa.Column("decided_by", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("reverses", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("response_id", sa.String(36), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("wave_id", "form_code", "version", name="uq_decision_version"),
    )
    op.create_table(
        "form_history",
        _pk(),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("form_code", sa.String(40), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("from_state", sa.String(20), nullable=True),
        sa.Column("to_state", sa.String(20), nullable=True),
        sa.Column("reason_codes", JSONType, nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("details", JSONType, nullable=True),
        sa.Index("ix_form_history_form", "wave_id", "form_code", "id"),
    )
    op.create_table(
        "screening_parameters",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("parameters", JSONType, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "back_check_draw",
        _pk(),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("min_per_enumerator", sa.Integer(), nullable=False),
        sa.Column("population", sa.Integer(), nullable=False),
        sa.Column("selected", sa.Integer(), nullable=False),
        sa.Column("forms_hash", sa.String(64), nullable=False),
        sa.Column("drawn_at", UTCDateTime(), nullable=False),
        sa.Column("drawn_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("wave_id", "province_code", name="uq_back_check_draw"),
    )
    op.create_table(
        "back_check",
        _pk(),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("form_code", sa.String(40), nullable=False),
        sa.Column("unit_id", sa.String(36), nullable=True),
        sa.Column("province_code", sa.String(8), nullable=False),
        sa.Column("enumerator_id", sa.String(100), nullable=True),
        sa.Column("selected_by", sa.String(20), nullable=False),
        sa.Column("draw_id", sa.Integer(), nullable=True),
        sa.Column("selected_at", UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=True),
        sa.Column("differing_items", JSONType, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("recorded_by", sa.String(200), nullable=True),
        sa.Column("recorded_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("wave_id", "form_code", name="uq_back_check_form"),
        sa.Index("ix_back_check_province", "wave_id", "province_code"),
    )
    op.create_table(
        "enumerator_escalation",
        _pk(),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("enumerator_id", sa.String(100), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=False),
        sa.Column("denied", sa.Integer(), nullable=False),
        sa.Column("checked", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("escalated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("wave_id", "enumerator_id", name="uq_enumerator_escalation"),
    )
    op.create_table(
        "entry_comparison",
        _pk(),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("form_code", sa.String(40), nullable=False),
        sa.Column("unit_id", sa.String(36), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=True),
        sa.Column("operators", JSONType, nullable=False),
        sa.Column("disagreements", JSONType, nullable=False),
        sa.Column("resolved", sa.Boolean(), nullable=False),
        sa.Column("compared_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("wave_id", "form_code", name="uq_entry_comparison"),
    )


def downgrade() -> None:
    for table in (
        "entry_comparison",
        "enumerator_escalation",
        "back_check",
        "back_check_draw",
        "screening_parameters",
        "form_history",
        "decision",
        "response",
        "form",
        "sample_unit",
    ):
        op.drop_table(table)
