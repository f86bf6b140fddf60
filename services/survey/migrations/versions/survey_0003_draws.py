"""Survey: the draw of each form, and the draws survey has heard of (withdrawing the forms of a voided draw).

Revision ID: survey_0003
Revises: survey_0002
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "survey_0003"
down_revision = "survey_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: forms created before this revision do not know their draw, and are never
    # withdrawn automatically (forms.enter_draw): they may be the forms of the draw in use.
    op.add_column("form", sa.Column("draw_id", sa.String(36), nullable=True))
    op.create_table(
        "sample_draw",
        sa.Column("draw_id", sa.String(36), primary_key=True),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("changed_at", shared.db.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_sample_draw_wave", "sample_draw", ["wave_id", "status"])


def downgrade() -> None:
    op.drop_table("sample_draw")
    with op.batch_alter_table("form") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("draw_id")
