"""Platform: the outbox envelope as ``json``, not ``jsonb``, on PostgreSQL (see shared/tables.py).

Written once, read back whole by the relay, never queried inside: jsonb's conversion on the way in
and out cost twice json's validation for nothing. SQLite stores JSON as text either way.

Revision ID: platform_0002
Revises: platform_0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "platform_0002"
down_revision = "platform_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("outbox", "envelope", type_=sa.JSON(), existing_type=postgresql.JSONB(),
                        existing_nullable=False, postgresql_using="envelope::json")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("outbox", "envelope", type_=postgresql.JSONB(), existing_type=sa.JSON(),
                        existing_nullable=False, postgresql_using="envelope::jsonb")
