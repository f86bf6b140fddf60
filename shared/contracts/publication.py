"""Events published by the publication service (công bố)."""

from __future__ import annotations

import datetime as dt
import uuid

from shared.events import EventData, contract


@contract
class ReleasePublished(EventData):
    """A release version became public (at its embargo time); a correction is a new version."""

    event_type = "sipas.publication.release.published.v1"
    producer = "publication"
    release_id: uuid.UUID
    version: int
    wave_id: uuid.UUID
    run_id: uuid.UUID
    published_at: dt.datetime
    correction_reason: str | None = None

    def subject(self) -> str:
        return str(self.release_id)
