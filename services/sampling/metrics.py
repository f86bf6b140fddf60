"""Sampling's own Prometheus metrics (with the ``service`` label, like the platform's)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FRAME_RECORDS = Counter(
    "sipas_sampling_frame_records", "Frame records received, by outcome (accepted, duplicate, rejected)",
    ["service", "outcome"],
)
REPLACEMENTS = Counter(
    "sipas_sampling_replacements", "Replacement requests handled, by outcome (released, exhausted)",
    ["service", "outcome"],
)
RESERVE_EXHAUSTED = Gauge(
    "sipas_sampling_reserve_exhausted_groups",
    "Replacement groups (strata) of a wave with a lost unit and no reserve left",
    ["service", "wave"],
)
