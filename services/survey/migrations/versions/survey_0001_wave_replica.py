"""Survey: replica of sampling's waves.

Revision ID: survey_0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

from shared.waves import create_wave_replica_v1

revision = "survey_0001"
down_revision = None
branch_labels = ("survey",)
depends_on = None


def upgrade() -> None:
    create_wave_replica_v1(op)


def downgrade() -> None:
    op.drop_table("wave")
