"""Publication's tables (its own metadata: no other service reads them).

A release (công bố) belongs to one wave; each version of it is a frozen copy of one final index
run's results (cells and rankings), so publication never reads indexing's tables and a published
figure can never change under a reader: a correction is a new version, the old one stays.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from shared.db import JSONType, UTCDateTime, service_base
from shared.tables import BigIntPK
from shared.waves import add_wave_replica

Base = service_base("publication")
metadata = Base.metadata

# This service's copy of sampling's waves, fed by wave events.
wave = add_wave_replica(metadata)

# Index runs announced by indexing (only final runs can become releases).
index_run = Table(
    "index_run",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("wave_id", String(36), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("methodology_version", String(40), nullable=False),
    Column("accepted_fingerprint", String(128), nullable=False),
    Column("accepted_forms", Integer, nullable=False),
    Column("code_version", String(80), nullable=False),
    Column("completed_at", UTCDateTime(), nullable=False),
    Column("national_sipas", Float, nullable=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Index("ix_index_run_wave", "wave_id"),
)

# One release per wave; its versions carry the content.
release = Table(
    "release",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("wave_id", String(36), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(200), nullable=False),
    UniqueConstraint("wave_id", name="uq_release_wave"),
)

# status: draft → approved → released. A released version is public once publish_at <= now
# (the embargo); that comparison is made on every read, so visibility never waits for a task.
release_version = Table(
    "release_version",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("release_id", String(36), ForeignKey("release.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("status", String(20), nullable=False),
    Column("correction_reason", Text, nullable=True),
    Column("footnotes", JSONType, nullable=False),
    # Frozen facts of the wave and the run, as published (metadata of the release).
    Column("facts", JSONType, nullable=False),
    # SHA-256 of the version's canonical content: every public ETag about it derives from this.
    Column("content_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("approved_at", UTCDateTime(), nullable=True),
    Column("approved_by", String(200), nullable=True),
    Column("publish_at", UTCDateTime(), nullable=True),
    # When ReleasePublished was staged and webhooks queued (by the announcer task).
    Column("announced_at", UTCDateTime(), nullable=True),
    UniqueConstraint("release_id", "version", name="uq_release_version"),
    Index("ix_release_version_visible", "status", "publish_at"),
)

release_cell = Table(
    "release_cell",
    metadata,
    Column("seq", BigIntPK, primary_key=True, autoincrement=True),
    Column("version_id", String(36), ForeignKey("release_version.id"), nullable=False),
    Column("domain", String(20), nullable=False),
    Column("domain_code", String(64), nullable=False),
    Column("indicator", String(20), nullable=False),
    Column("code", String(64), nullable=False),
    Column("weighting", String(10), nullable=False),
    Column("value", Float, nullable=True),
    Column("se", Float, nullable=True),
    Column("ci_low", Float, nullable=True),
    Column("ci_high", Float, nullable=True),
    Column("n", Integer, nullable=False),
    Column("cv", Float, nullable=True),
    Column("deff", Float, nullable=True),
    Column("flag", String(20), nullable=False),
    Index("ix_release_cell_lookup", "version_id", "domain", "domain_code", "indicator"),
)

release_ranking = Table(
    "release_ranking",
    metadata,
    Column("seq", BigIntPK, primary_key=True, autoincrement=True),
    Column("version_id", String(36), ForeignKey("release_version.id"), nullable=False),
    Column("province_code", String(8), nullable=False),
    Column("indicator", String(64), nullable=False),
    Column("value", Float, nullable=True),
    Column("rank", Integer, nullable=True),
    Column("previous_rank", Integer, nullable=True),
    Column("rank_change", Integer, nullable=True),
    Column("previous_value", Float, nullable=True),
    Column("comparable", Boolean, nullable=False),
    Column("comparability_note", Text, nullable=True),
    Index("ix_release_ranking_lookup", "version_id", "indicator"),
)

# Bodies precomputed when a version is released: served as bytes, with their strong ETag.
release_body = Table(
    "release_body",
    metadata,
    Column("version_id", String(36), ForeignKey("release_version.id"), primary_key=True),
    Column("resource", String(40), primary_key=True),
    Column("media_type", String(60), nullable=False),
    Column("etag", String(80), nullable=False),
    Column("body", LargeBinary, nullable=False),
)

release_comment = Table(
    "release_comment",
    metadata,
    Column("seq", BigIntPK, primary_key=True, autoincrement=True),
    Column("version_id", String(36), ForeignKey("release_version.id"), nullable=False),
    Column("author", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_release_comment_version", "version_id", "seq"),
)

webhook = Table(
    "webhook",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner_key_id", String(36), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("url", String(2000), nullable=False),
    Column("secret", String(128), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("consecutive_failures", Integer, nullable=False),
    Column("disabled_at", UTCDateTime(), nullable=True),
    Column("disabled_reason", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_webhook_owner", "owner_key_id"),
)

# One delivery per (subscriber, release version); its attempts are logged apart.
webhook_delivery = Table(
    "webhook_delivery",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("webhook_id", String(36), ForeignKey("webhook.id"), nullable=False),
    Column("version_id", String(36), ForeignKey("release_version.id"), nullable=False),
    Column("event", String(40), nullable=False),
    Column("payload", JSONType, nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    UniqueConstraint("webhook_id", "version_id", name="uq_webhook_delivery"),
    Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
)

webhook_attempt = Table(
    "webhook_attempt",
    metadata,
    Column("seq", BigIntPK, primary_key=True, autoincrement=True),
    Column("delivery_id", String(36), ForeignKey("webhook_delivery.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Column("replay", Boolean, nullable=False),
    Index("ix_webhook_attempt_delivery", "delivery_id", "seq"),
)
