"""Events the indexing service consumes.

* waves (sampling): the wave replica;
* decisions (verification): ``response.accepted`` / ``response.rejected`` keep the accepted set
  (latest decision per form) and move the provisional sums by the difference;
* sample (sampling): chunk 0 of ``sample.drawn`` gives the strata's frame sizes.

Effects run inside the inbox transaction, so a redelivered event changes nothing.
"""

from __future__ import annotations

from services.indexing import service
from services.indexing.models import wave
from shared.service import Consumer
from shared.waves import WAVE_EVENTS, wave_replica_effect


async def decision_effect(session, payload, envelope) -> None:
    await service.apply_decision(session, payload)


async def decisions_effect(session, items) -> None:
    await service.apply_decisions(session, [payload for payload, _ in items])


async def sample_effect(session, payload, envelope) -> None:
    await service.apply_sample_drawn(session, payload)


CONSUMERS = [
    Consumer("waves", WAVE_EVENTS, wave_replica_effect(wave)),
    Consumer(
        "decisions",
        ["sipas.verification.response.accepted.v1", "sipas.verification.response.rejected.v1"],
        decision_effect,
        batch_effect=decisions_effect,
    ),
    Consumer("sample", ["sipas.sampling.sample.drawn.v1"], sample_effect),
]
