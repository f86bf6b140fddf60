"""Platform tables: outbox, inbox, API keys, audit log.

Revision ID: platform_0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

import shared.db

revision = "platform_0001"
down_revision = None
branch_labels = ("platform",)
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("envelope", shared.db.JSONType, nullable=False),
        sa.Column("created_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("published_at", shared.db.UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_outbox_unpublished", "outbox", ["published_at", "seq"])
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(200), primary_key=True),
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("type", sa.String(200), nullable=False),
        sa.Column("received_at", shared.db.UTCDateTime(), nullable=False),
    )
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("prefix", sa.String(16), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", shared.db.UTCDateTime(), nullable=True),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("at", shared.db.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("action", sa.String(100), nullable=False),
        sa.Column("entity", sa.String(50), nullable=False),
        sa.Column("entity_id", sa.String(100), nullable=False),
        sa.Column("wave_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("details", shared.db.JSONType, nullable=True),
        sa.Column("correlation_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_audit_log_wave", "audit_log", ["wave_id", "seq"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("api_key")
    op.drop_table("inbox")
    op.drop_index("ix_outbox_unpublished", "outbox")
    op.drop_table("outbox")
