"""Sampling: waves.

Revision ID: sampling_0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "sampling_0001"
down_revision = None
branch_labels = ("sampling",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wave",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("code", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=True),
        sa.Column("year", sa.Integer, nullable=False),
        sa.Column("methodology_version", sa.String(40), nullable=False),
        sa.Column("fieldwork_start", sa.Date, nullable=True),
        sa.Column("fieldwork_end", sa.Date, nullable=True),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", shared.db.UTCDateTime(), nullable=False),
        sa.UniqueConstraint("code", name="uq_wave_code"),
    )


def downgrade() -> None:
    op.drop_table("wave")
