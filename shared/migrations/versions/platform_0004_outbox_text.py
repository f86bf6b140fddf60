"""Platform: the outbox envelope as text (see shared/tables.py).

The service encodes it (orjson) and the relay parses and validates it in one pass
(``TypeAdapter.validate_json``), so PostgreSQL's ``json`` input check was a second parse of
every event, for nothing: a 10,000-event group (8 MB) went in in ~40 ms as text against ~65 as
json. SQLite stored it as text already; its column is redeclared so the models and the
migrated schema agree.

Revision ID: platform_0004
Revises: platform_0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "platform_0004"
down_revision = "platform_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.alter_column("outbox", "envelope", type_=sa.Text(), existing_type=sa.JSON(), existing_nullable=False,
                        postgresql_using="envelope::text")
        if bind.exec_driver_sql(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
        ).first():  # as platform_0003 set it (a new type keeps it; said again, to be sure)
            op.execute("ALTER TABLE outbox ALTER COLUMN envelope SET COMPRESSION lz4")
    else:
        with op.batch_alter_table("outbox") as batch:
            batch.alter_column("envelope", type_=sa.Text(), existing_type=sa.JSON(), existing_nullable=False)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.alter_column("outbox", "envelope", type_=sa.JSON(), existing_type=sa.Text(), existing_nullable=False,
                        postgresql_using="envelope::json")
    else:
        with op.batch_alter_table("outbox") as batch:
            batch.alter_column("envelope", type_=sa.JSON(), existing_type=sa.Text(), existing_nullable=False)
