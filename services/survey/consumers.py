"""Events the survey service consumes. Each effect runs inside the inbox transaction, so a
redelivered event changes nothing; form creation is also idempotent by ``unit_id`` (unique)."""

from __future__ import annotations

from services.survey import corrections as C, forms as F
from services.survey.models import metadata, wave
from shared.contracts.sampling import SampleDrawn, SampleVoided, UnitReplaced
from shared.service import Consumer
from shared.waves import WAVE_EVENTS, wave_replica_effect


def _tables() -> dict:
    # The platform tables (outbox...) are added to this metadata when the ServiceSpec is built.
    return dict(metadata.tables)


async def on_sample(session, payload: SampleDrawn | SampleVoided, envelope) -> None:
    """``sample.drawn``: one form per sampled unit (``role=sample``; reserves get a form when
    released), a new draw withdrawing the assigned forms of older ones. ``sample.voided``: the
    draw's assigned forms are withdrawn. One queue for both, so they normally arrive in the
    order sampling published them; ``forms.enter_draw`` copes when they do not."""
    if isinstance(payload, SampleVoided):
        await F.void_draw(session, _tables(), str(payload.wave_id), str(payload.draw_id), payload.reason)
        return
    units = [u for u in payload.units if u.role == "sample"]
    await F.create_forms(session, _tables(), str(payload.wave_id), units, actor="sampling", draw_id=str(payload.draw_id))


async def on_unit_replaced(session, payload: UnitReplaced, envelope) -> None:
    await F.on_unit_replaced(
        session, _tables(), str(payload.wave_id), str(payload.replaced_unit_id), payload.replacement,
        payload.reserve_exhausted, str(payload.draw_id) if payload.draw_id else None,
    )


async def on_correction_requested(session, payload, envelope) -> None:
    """Verification sent a form back (``sipas.verification.correction.requested.v1``)."""
    await C.request_correction(session, _tables(), payload)


CONSUMERS = [
    Consumer("waves", WAVE_EVENTS, wave_replica_effect(wave)),
    Consumer("samples", ["sipas.sampling.sample.drawn.v1", "sipas.sampling.sample.voided.v1"], on_sample),
    Consumer("replacements", ["sipas.sampling.unit.replaced.v1"], on_unit_replaced),
    Consumer("corrections", ["sipas.verification.correction.requested.v1"], on_correction_requested),
]
