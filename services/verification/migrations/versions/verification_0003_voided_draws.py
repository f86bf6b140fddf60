"""Verification: the draws the ministry reset, so a late chunk of one cannot bring its units back.

Revision ID: verification_0003
Revises: verification_0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "verification_0003"
down_revision = "verification_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "voided_draw",
        sa.Column("draw_id", sa.String(36), primary_key=True),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("voided_at", shared.db.UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("voided_draw")
