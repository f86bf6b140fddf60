"""Indexing's tables (its own metadata: no other service reads them).

* ``form_decision`` -- the accepted set: one row per form, holding its *latest* decision from
  verification (accepted with its answers and design fields, or rejected). Older decisions are
  ignored, so a reversal is simply a newer row state.
* ``stratum_frame`` -- frame sizes N_h per stratum from sampling's ``sample.drawn`` (chunk 0), for
  the nonresponse adjustment and the first-stage fpc.
* ``provisional_sum`` / ``provisional_stratum`` -- additive sums of the provisional index, per
  finest cell (stratum × province × level × field) and item, updated per decision event.
* ``index_run`` / ``index_cell`` / ``index_ranking`` -- immutable results of final runs.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from shared.db import JSONType, UTCDateTime, service_base
from shared.waves import add_wave_replica

Base = service_base("indexing")
metadata = Base.metadata

# This service's copy of sampling's waves, fed by wave events.
wave = add_wave_replica(metadata)

form_decision = Table(
    "form_decision",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    Column("form_code", String(64), primary_key=True),
    Column("decision_version", Integer, nullable=False),
    Column("status", String(10), nullable=False),  # accepted | rejected
    # sha256 of the decision's payload: the same (form_code, decision_version) with another
    # payload is a conflict, not a silent overwrite.
    Column("payload_hash", String(64), nullable=False),
    Column("methodology_version", String(40), nullable=True),
    Column("stratum", String(120), nullable=True),
    Column("province_code", String(8), nullable=True),
    Column("commune_code", String(16), nullable=True),
    Column("psu", String(120), nullable=True),
    Column("ssu", String(120), nullable=True),
    Column("pi", Float, nullable=True),
    Column("weight", Float, nullable=True),
    Column("level", String(40), nullable=True),
    Column("field", String(120), nullable=True),
    Column("procedure_code", String(64), nullable=True),
    Column("respondent_type", String(40), nullable=True),
    Column("channel", String(10), nullable=True),
    Column("answers", JSONType, nullable=True),
    Column("decided_at", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Index("ix_form_decision_wave_status", "wave_id", "status"),
)

stratum_frame = Table(
    "stratum_frame",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    Column("stratum", String(120), primary_key=True),
    Column("draw_id", String(36), nullable=False),
    Column("population", BigInteger, nullable=False),
    Column("n", Integer, nullable=False),
)

provisional_sum = Table(
    "provisional_sum",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("wave_id", String(36), nullable=False),
    Column("stratum", String(120), nullable=False),
    Column("province_code", String(8), nullable=False),
    Column("level", String(40), nullable=False),  # "" when the form has none
    Column("field", String(120), nullable=False),
    Column("item", String(81), nullable=False),
    # Σ w and counts of answers 1..5: any "satisfied" set can be applied when reading.
    Column("w1", Float, nullable=False),
    Column("w2", Float, nullable=False),
    Column("w3", Float, nullable=False),
    Column("w4", Float, nullable=False),
    Column("w5", Float, nullable=False),
    Column("c1", Integer, nullable=False),
    Column("c2", Integer, nullable=False),
    Column("c3", Integer, nullable=False),
    Column("c4", Integer, nullable=False),
    Column("c5", Integer, nullable=False),
    UniqueConstraint("wave_id", "stratum", "province_code", "level", "field", "item", name="uq_provisional_sum_cell"),
)

provisional_stratum = Table(
    "provisional_stratum",
    metadata,
    Column("wave_id", String(36), primary_key=True),
    Column("stratum", String(120), primary_key=True),
    Column("sum_w", Float, nullable=False),
    Column("forms", Integer, nullable=False),
)

index_run = Table(
    "index_run",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("wave_id", String(36), nullable=False),
    Column("kind", String(12), nullable=False),
    Column("methodology_version", String(40), nullable=False),
    Column("parameters", JSONType, nullable=False),
    Column("accepted_fingerprint", String(64), nullable=False),
    Column("accepted_forms", Integer, nullable=False),
    Column("code_version", String(40), nullable=False),
    Column("previous_wave_id", String(36), nullable=True),
    Column("previous_run_id", String(36), nullable=True),
    Column("national_sipas", Float, nullable=True),
    Column("requested_by", String(120), nullable=False),
    Column("completed_at", UTCDateTime(), nullable=False),
    Index("ix_index_run_wave", "wave_id"),
)

index_cell = Table(
    "index_cell",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("domain", String(20), nullable=False),
    Column("domain_code", String(160), nullable=False),
    Column("indicator", String(12), nullable=False),
    Column("code", String(81), nullable=False),
    Column("weighting", String(8), nullable=False),
    Column("value", Float, nullable=True),
    Column("se", Float, nullable=True),
    Column("ci_low", Float, nullable=True),
    Column("ci_high", Float, nullable=True),
    Column("n", Integer, nullable=False),
    Column("cv", Float, nullable=True),
    Column("deff", Float, nullable=True),
    Column("flag", String(12), nullable=False),
    UniqueConstraint("run_id", "domain", "domain_code", "indicator", "code", "weighting", name="uq_index_cell"),
)

index_ranking = Table(
    "index_ranking",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("province_code", String(8), nullable=False),
    Column("indicator", String(40), nullable=False),
    Column("value", Float, nullable=True),
    Column("rank", Integer, nullable=True),
    Column("previous_rank", Integer, nullable=True),
    Column("rank_change", Integer, nullable=True),
    Column("previous_value", Float, nullable=True),
    Column("comparable", Boolean, nullable=False),
    Column("comparability_note", String(300), nullable=True),
    UniqueConstraint("run_id", "province_code", "indicator", name="uq_index_ranking"),
)
