"""Events published by the indexing service."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from shared.events import EventData, contract


@contract
class IndexRunCompleted(EventData):
    """A final index run finished; its results are immutable and readable from indexing's API."""

    event_type = "sipas.indexing.run.completed.v1"
    producer = "indexing"
    run_id: uuid.UUID
    wave_id: uuid.UUID
    kind: Literal["final", "provisional"]
    methodology_version: str
    accepted_fingerprint: str
    accepted_forms: int
    code_version: str
    completed_at: dt.datetime
    national_sipas: float | None

    def subject(self) -> str:
        return str(self.wave_id)
