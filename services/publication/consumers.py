"""Events the publication service consumes.

* waves (sampling): the wave replica (a release's facts: code, name, year, fieldwork dates);
* runs (indexing): ``run.completed`` announces a run; a final one can become a draft release.
  Only the announcement is kept here; the figures are fetched from indexing's export when the
  ministry creates the release (and frozen into it).
"""

from __future__ import annotations

from services.publication import service
from services.publication.models import index_run, wave
from shared.service import Consumer
from shared.waves import WAVE_EVENTS, wave_replica_effect

RUN_EVENTS = ["sipas.indexing.run.completed.v1"]


async def run_completed_effect(session, payload, envelope) -> None:
    await service.record_run(session, index_run, payload)


CONSUMERS = [
    Consumer("waves", WAVE_EVENTS, wave_replica_effect(wave)),
    Consumer("runs", RUN_EVENTS, run_completed_effect),
]
