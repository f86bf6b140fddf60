"""Events the sampling service consumes. Each effect runs in the inbox transaction, so a
redelivered event changes nothing; the replacement itself is idempotent by the unit's status too."""

from __future__ import annotations

import logging

from services.sampling import samples
from services.sampling.models import metadata
from shared.contracts.survey import ReplacementRequested
from shared.errors import Problem
from shared.service import Consumer

log = logging.getLogger("sipas.sampling")


async def on_replacement_requested(session, payload: ReplacementRequested, envelope) -> None:
    """Survey lost a unit (refused, unreachable, moved, deceased, ineligible): release the next
    reserve of its group (``unit.replaced``), or record that the group's reserve is exhausted
    (``unit.replaced`` with ``reserve_exhausted``). A request that can never succeed (unknown
    wave or unit, a wave already closed) is logged and dropped: retrying cannot fix it."""
    try:
        await samples.replace(session, dict(metadata.tables), None, str(payload.wave_id), str(payload.unit_id),
                              payload.reason, form_code=payload.form_code)
    except Problem as exc:
        log.warning("replacement request for unit %s of wave %s not applied: %s", payload.unit_id, payload.wave_id,
                    exc.detail, extra={"event_id": str(envelope.id)})


CONSUMERS = [
    Consumer("replacements", ["sipas.survey.replacement.requested.v1"], on_replacement_requested),
]
