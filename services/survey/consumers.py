"""Events the survey service consumes. Each effect runs inside the inbox transaction, so a
redelivered event changes nothing; form creation is also idempotent by ``unit_id`` (unique)."""

from __future__ import annotations

from services.survey import corrections as C, forms as F
from services.survey.models import metadata, wave
from shared.contracts.sampling import SampleDrawn, UnitReplaced
from shared.service import Consumer
from shared.waves import WAVE_EVENTS, wave_replica_effect


def _tables() -> dict:
    # The platform tables (outbox...) are added to this metadata when the ServiceSpec is built.
    return dict(metadata.tables)


async def on_sample_drawn(session, payload: SampleDrawn, envelope) -> None:
    """One form per sampled unit (``role=sample``; reserves get a form when released)."""
    units = [u for u in payload.units if u.role == "sample"]
    await F.create_forms(session, _tables(), str(payload.wave_id), units, actor="sampling")


async def on_unit_replaced(session, payload: UnitReplaced, envelope) -> None:
    await F.on_unit_replaced(
        session, _tables(), str(payload.wave_id), str(payload.replaced_unit_id), payload.replacement, payload.reserve_exhausted
    )


async def on_correction_requested(session, payload, envelope) -> None:
    """Verification sent a form back (``sipas.verification.correction.requested.v1``)."""
    await C.request_correction(session, _tables(), payload)


CONSUMERS = [
    Consumer("waves", WAVE_EVENTS, wave_replica_effect(wave)),
    Consumer("samples", ["sipas.sampling.sample.drawn.v1"], on_sample_drawn),
    Consumer("replacements", ["sipas.sampling.unit.replaced.v1"], on_unit_replaced),
    Consumer("corrections", ["sipas.verification.correction.requested.v1"], on_correction_requested),
]
