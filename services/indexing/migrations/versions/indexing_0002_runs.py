"""Indexing: the accepted set, frame sizes, provisional sums, final runs with cells and rankings.

Revision ID: indexing_0002
Revises: indexing_0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "indexing_0002"
down_revision = "indexing_0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "form_decision",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("form_code", sa.String(64), primary_key=True),
        sa.Column("decision_version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("methodology_version", sa.String(40), nullable=True),
        sa.Column("stratum", sa.String(120), nullable=True),
        sa.Column("province_code", sa.String(8), nullable=True),
        sa.Column("commune_code", sa.String(16), nullable=True),
        sa.Column("psu", sa.String(120), nullable=True),
        sa.Column("ssu", sa.String(120), nullable=True),
        sa.Column("pi", sa.Float, nullable=True),
        sa.Column("weight", sa.Float, nullable=True),
        sa.Column("level", sa.String(40), nullable=True),
        sa.Column("field", sa.String(120), nullable=True),
        sa.Column("procedure_code", sa.String(64), nullable=True),
        sa.Column("respondent_type", sa.String(40), nullable=True),
        sa.Column("channel", sa.String(10), nullable=True),
        sa.Column("answers", shared.db.JSONType, nullable=True),
        sa.Column("decided_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("received_at", shared.db.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_form_decision_wave_status", "form_decision", ["wave_id", "status"])
    op.create_table(
        "stratum_frame",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("stratum", sa.String(120), primary_key=True),
        sa.Column("draw_id", sa.String(36), nullable=False),
        sa.Column("population", sa.BigInteger, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
    )
    op.create_table(
        "provisional_sum",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("stratum", sa.String(120), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=False),
        sa.Column("level", sa.String(40), nullable=False),
        sa.Column("field", sa.String(120), nullable=False),
        sa.Column("item", sa.String(81), nullable=False),
        *[sa.Column(f"w{k}", sa.Float, nullable=False) for k in range(1, 6)],
        *[sa.Column(f"c{k}", sa.Integer, nullable=False) for k in range(1, 6)],
        sa.UniqueConstraint("wave_id", "stratum", "province_code", "level", "field", "item",
                            name="uq_provisional_sum_cell"),
    )
    op.create_table(
        "provisional_stratum",
        sa.Column("wave_id", sa.String(36), primary_key=True),
        sa.Column("stratum", sa.String(120), primary_key=True),
        sa.Column("sum_w", sa.Float, nullable=False),
        sa.Column("forms", sa.Integer, nullable=False),
    )
    op.create_table(
        "index_run",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("methodology_version", sa.String(40), nullable=False),
        sa.Column("parameters", shared.db.JSONType, nullable=False),
        sa.Column("accepted_fingerprint", sa.String(64), nullable=False),
        sa.Column("accepted_forms", sa.Integer, nullable=False),
        sa.Column("code_version", sa.String(40), nullable=False),
        sa.Column("previous_wave_id", sa.String(36), nullable=True),
        sa.Column("previous_run_id", sa.String(36), nullable=True),
        sa.Column("national_sipas", sa.Float, nullable=True),
        sa.Column("requested_by", sa.String(120), nullable=False),
        sa.Column("completed_at", shared.db.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_index_run_wave", "index_run", ["wave_id"])
    op.create_table(
        "index_cell",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("domain", sa.String(20), nullable=False),
        sa.Column("domain_code", sa.String(160), nullable=False),
        sa.Column("indicator", sa.String(12), nullable=False),
        sa.Column("code", sa.String(81), nullable=False),
        sa.Column("weighting", sa.String(8), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("se", sa.Float, nullable=True),
        sa.Column("ci_low", sa.Float, nullable=True),
        sa.Column("ci_high", sa.Float, nullable=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("cv", sa.Float, nullable=True),
        sa.Column("deff", sa.Float, nullable=True),
        sa.Column("flag", sa.String(12), nullable=False),
        sa.UniqueConstraint("run_id", "domain", "domain_code", "indicator", "code", "weighting", name="uq_index_cell"),
    )
    op.create_table(
        "index_ranking",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=False),
        sa.Column("indicator", sa.String(40), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("rank", sa.Integer, nullable=True),
        sa.Column("previous_rank", sa.Integer, nullable=True),
        sa.Column("rank_change", sa.Integer, nullable=True),
        sa.Column("previous_value", sa.Float, nullable=True),
        sa.Column("comparable", sa.Boolean, nullable=False),
        sa.Column("comparability_note", sa.String(300), nullable=True),
        sa.UniqueConstraint("run_id", "province_code", "indicator", name="uq_index_ranking"),
    )


def downgrade() -> None:
    for table in ("index_ranking", "index_cell", "index_run", "provisional_stratum", "provisional_sum",
                  "stratum_frame", "form_decision"):
        op.drop_table(table)
