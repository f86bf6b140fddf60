"""Publication: index runs, releases and their versions (frozen cells, rankings, bodies),
comments, webhooks with their deliveries and attempts.

Revision ID: publication_0002
Revises: publication_0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from shared.db import JSONType, UTCDateTime
from shared.tables import BigIntPK

revision = "publication_0002"
down_revision = "publication_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "index_run",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("methodology_version", sa.String(40), nullable=False),
        sa.Column("accepted_fingerprint", sa.String(128), nullable=False),
        sa.Column("accepted_forms", sa.Integer, nullable=False),
        sa.Column("code_version", sa.String(80), nullable=False),
        sa.Column("completed_at", UTCDateTime(), nullable=False),
        sa.Column("national_sipas", sa.Float, nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_index_run_wave", "index_run", ["wave_id"])
    op.create_table(
        "release",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("wave_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("wave_id", name="uq_release_wave"),
    )
    op.create_table(
        "release_version",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("release_id", sa.String(36), sa.ForeignKey("release.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("correction_reason", sa.Text, nullable=True),
        sa.Column("footnotes", JSONType, nullable=False),
        sa.Column("facts", JSONType, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("approved_at", UTCDateTime(), nullable=True),
        sa.Column("approved_by", sa.String(200), nullable=True),
        sa.Column("publish_at", UTCDateTime(), nullable=True),
        sa.Column("announced_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("release_id", "version", name="uq_release_version"),
    )
    op.create_index("ix_release_version_visible", "release_version", ["status", "publish_at"])
    op.create_table(
        "release_cell",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("version_id", sa.String(36), sa.ForeignKey("release_version.id"), nullable=False),
        sa.Column("domain", sa.String(20), nullable=False),
        sa.Column("domain_code", sa.String(64), nullable=False),
        sa.Column("indicator", sa.String(20), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("weighting", sa.String(10), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("se", sa.Float, nullable=True),
        sa.Column("ci_low", sa.Float, nullable=True),
        sa.Column("ci_high", sa.Float, nullable=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("cv", sa.Float, nullable=True),
        sa.Column("deff", sa.Float, nullable=True),
        sa.Column("flag", sa.String(20), nullable=False),
    )
    op.create_index("ix_release_cell_lookup", "release_cell", ["version_id", "domain", "domain_code", "indicator"])
    op.create_table(
        "release_ranking",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("version_id", sa.String(36), sa.ForeignKey("release_version.id"), nullable=False),
        sa.Column("province_code", sa.String(8), nullable=False),
        sa.Column("indicator", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("rank", sa.Integer, nullable=True),
        sa.Column("previous_rank", sa.Integer, nullable=True),
        sa.Column("rank_change", sa.Integer, nullable=True),
        sa.Column("previous_value", sa.Float, nullable=True),
        sa.Column("comparable", sa.Boolean, nullable=False),
        sa.Column("comparability_note", sa.Text, nullable=True),
    )
    op.create_index("ix_release_ranking_lookup", "release_ranking", ["version_id", "indicator"])
    op.create_table(
        "release_body",
        sa.Column("version_id", sa.String(36), sa.ForeignKey("release_version.id"), primary_key=True),
        sa.Column("resource", sa.String(40), primary_key=True),
        sa.Column("media_type", sa.String(60), nullable=False),
        sa.Column("etag", sa.String(80), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "release_comment",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("version_id", sa.String(36), sa.ForeignKey("release_version.id"), nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_release_comment_version", "release_comment", ["version_id", "seq"])
    op.create_table(
        "webhook",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner_key_id", sa.String(36), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False),
        sa.Column("disabled_at", UTCDateTime(), nullable=True),
        sa.Column("disabled_reason", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_webhook_owner", "webhook", ["owner_key_id"])
    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("webhook_id", sa.String(36), sa.ForeignKey("webhook.id"), nullable=False),
        sa.Column("version_id", sa.String(36), sa.ForeignKey("release_version.id"), nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("webhook_id", "version_id", name="uq_webhook_delivery"),
    )
    op.create_index("ix_webhook_delivery_due", "webhook_delivery", ["status", "next_attempt_at"])
    op.create_table(
        "webhook_attempt",
        sa.Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.String(36), sa.ForeignKey("webhook_delivery.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("status_code", sa.Integer, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("replay", sa.Boolean, nullable=False),
    )
    op.create_index("ix_webhook_attempt_delivery", "webhook_attempt", ["delivery_id", "seq"])


def downgrade() -> None:
    for name in ("webhook_attempt", "webhook_delivery", "webhook", "release_comment", "release_body",
                 "release_ranking", "release_cell", "release_version", "release", "index_run"):
        op.drop_table(name)
