"""Sampling: administrative units and crosswalk, frames (records, contacts apart, batches),
designs, draws and sample units; the wave's unit set.

Revision ID: sampling_0002
Revises: sampling_0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "sampling_0002"
down_revision = "sampling_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("wave") as batch:
        batch.add_column(sa.Column("unit_set", sa.String(40), nullable=False, server_default="vn-2025"))
    op.create_table(
        "admin_unit",
        sa.Column("unit_set", sa.String(40), primary_key=True),
        sa.Column("level", sa.String(20), primary_key=True),
        sa.Column("code", sa.String(10), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("parent_code", sa.String(10), nullable=True),
        sa.Column("province_code", sa.String(10), nullable=False),
        sa.Column("valid_from", sa.Date, nullable=True),
        sa.Column("valid_to", sa.Date, nullable=True),
    )
    op.create_table(
        "unit_crosswalk",
        sa.Column("from_set", sa.String(40), primary_key=True),
        sa.Column("from_level", sa.String(20), primary_key=True),
        sa.Column("from_code", sa.String(10), primary_key=True),
        sa.Column("to_set", sa.String(40), primary_key=True),
        sa.Column("to_level", sa.String(20), primary_key=True),
        sa.Column("to_code", sa.String(10), primary_key=True),
        sa.Column("share", sa.Float, nullable=True),
    )
    op.create_table(
        "frame",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("record_count", sa.Integer, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("opened_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("closed_at", shared.db.UTCDateTime(), nullable=True),
    )
    op.create_table(
        "frame_batch",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("province_code", sa.String(10), primary_key=True),
        sa.Column("batch_id", sa.String(100), primary_key=True),
        sa.Column("source", sa.String(10), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("report", shared.db.JSONType, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at", shared.db.UTCDateTime(), nullable=False),
    )
    op.create_table(
        "frame_record",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("record_key", sa.String(100), primary_key=True),
        sa.Column("province_code", sa.String(10), nullable=False),
        sa.Column("commune_code", sa.String(10), nullable=True),
        sa.Column("village_code", sa.String(40), nullable=True),
        sa.Column("household_id", sa.String(60), nullable=True),
        sa.Column("procedure_code", sa.String(60), nullable=True),
        sa.Column("field", sa.String(100), nullable=True),
        sa.Column("level", sa.String(20), nullable=True),
        sa.Column("agency", sa.String(200), nullable=True),
        sa.Column("received_on", sa.Date, nullable=True),
        sa.Column("result_on", sa.Date, nullable=True),
        sa.Column("respondent_type", sa.String(20), nullable=True),
    )
    op.create_index("ix_frame_record_province", "frame_record", ["wave_id", "province_code"])
    op.create_table(
        "frame_contact",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("record_key", sa.String(100), primary_key=True),
        sa.Column("full_name", sa.String(200), nullable=True),
        sa.Column("phone", sa.String(40), nullable=True),
        sa.Column("email", sa.String(200), nullable=True),
        sa.Column("address", sa.Text, nullable=True),
    )
    op.create_table(
        "design",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("body", shared.db.JSONType, nullable=False),
        sa.Column("updated_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "draw",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("sample_hash", sa.String(64), nullable=False),
        sa.Column("frame_fingerprint", sa.String(64), nullable=False),
        sa.Column("design", shared.db.JSONType, nullable=False),
        sa.Column("strata", shared.db.JSONType, nullable=False),
        sa.Column("n_sample", sa.Integer, nullable=False),
        sa.Column("n_reserve", sa.Integer, nullable=False),
        sa.Column("drawn_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("drawn_by", sa.String(200), nullable=False),
        sa.Column("voided_at", shared.db.UTCDateTime(), nullable=True),
        sa.Column("void_reason", sa.Text, nullable=True),
        sa.UniqueConstraint("wave_id", "generation", name="uq_draw_generation"),
    )
    op.create_table(
        "sample_unit",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("unit_id", sa.String(36), primary_key=True),
        sa.Column("draw_id", sa.String(36), nullable=False),
        sa.Column("record_key", sa.String(100), nullable=False),
        sa.Column("stratum", sa.String(200), nullable=False),
        sa.Column("psu", sa.String(60), nullable=False),
        sa.Column("ssu", sa.String(60), nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("pi", sa.Float, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("province_code", sa.String(10), nullable=False),
        sa.Column("commune_code", sa.String(10), nullable=True),
        sa.Column("level", sa.String(20), nullable=True),
        sa.Column("field", sa.String(100), nullable=True),
        sa.Column("procedure_code", sa.String(60), nullable=True),
        sa.Column("respondent_type", sa.String(20), nullable=True),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("reason", sa.String(20), nullable=True),
        sa.Column("replaced_by", sa.String(36), nullable=True),
        sa.Column("replaces", sa.String(36), nullable=True),
        sa.Column("changed_at", shared.db.UTCDateTime(), nullable=True),
    )
    op.create_index("ix_sample_unit_group", "sample_unit", ["wave_id", "stratum", "psu", "ssu", "role", "position"])
    op.create_index("ix_sample_unit_record", "sample_unit", ["wave_id", "record_key"])


def downgrade() -> None:
    for name in ("sample_unit", "draw", "design", "frame_contact", "frame_record", "frame_batch", "frame",
                 "unit_crosswalk", "admin_unit"):
        op.drop_table(name)
    with op.batch_alter_table("wave") as batch:
        batch.drop_column("unit_set")
