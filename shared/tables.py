"""The platform tables every service database has: outbox, inbox, API keys, audit log.

They are plain SQLAlchemy Core tables added to each service's own MetaData (a service's tables
and these live in one database, so an event row commits in the same transaction as the change
it announces). Their migrations are the ``platform`` branch in ``shared/migrations``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text

from shared.db import JSONType, UTCDateTime

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a bigint.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def add_platform_tables(metadata: MetaData) -> dict[str, Table]:
    outbox = Table(
        "outbox",
        metadata,
        Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("type", String(200), nullable=False),
        # JSON text, encoded by the service (orjson) and parsed by the relay with the envelopes'
        # validation in one pass: written once, read back whole, never queried inside. A 5,000-form
        # Vietnam Post batch stages 10,000 envelopes (8 MB): ~250 ms to write as jsonb, ~65 as
        # json (the server parses it to check it), ~40 as text (platform_0002, platform_0004).
        Column("envelope", Text, nullable=False),
        # A row holds one event (``envelope`` is its envelope, ``size`` 1) or a group of events
        # staged by one statement (``envelope`` is the list, ``size`` its length): a 5,000-form
        # Vietnam Post batch stages 10,000 events, and as 10,000 rows their inserts, and the
        # relay's reads and updates of them, were a quarter of the push. ``sent`` counts the
        # group's events the broker has confirmed, so a broker failure halfway resumes there.
        Column("size", Integer, nullable=False, server_default="1"),
        Column("sent", Integer, nullable=False, server_default="0"),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("published_at", UTCDateTime(), nullable=True),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("last_error", Text, nullable=True),
        Index("ix_outbox_unpublished", "published_at", "seq"),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("consumer", String(200), primary_key=True),
        Column("event_id", String(36), primary_key=True),
        Column("type", String(200), nullable=False),
        Column("received_at", UTCDateTime(), nullable=False),
    )
    api_key = Table(
        "api_key",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("prefix", String(16), nullable=False, unique=True),
        Column("key_hash", String(64), nullable=False),
        Column("role", String(20), nullable=False),
        Column("province_code", String(8), nullable=True),
        Column("label", String(200), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("revoked_at", UTCDateTime(), nullable=True),
    )
    audit_log = Table(
        "audit_log",
        metadata,
        Column("seq", BigIntPK, primary_key=True, autoincrement=True),
        Column("at", UTCDateTime(), nullable=False),
        Column("actor", String(200), nullable=False),
        Column("role", String(20), nullable=False),
        Column("action", String(100), nullable=False),
        Column("entity", String(50), nullable=False),
        Column("entity_id", String(100), nullable=False),
        Column("wave_id", String(36), nullable=True),
        Column("reason", Text, nullable=True),
        Column("details", JSONType, nullable=True),
        Column("correlation_id", String(64), nullable=True),
        Index("ix_audit_log_wave", "wave_id", "seq"),
    )
    return {"outbox": outbox, "inbox": inbox, "api_key": api_key, "audit_log": audit_log}
