"""Events published by the sampling service (chọn mẫu)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from shared.events import EventData, contract

WaveStatus = Literal["draft", "frame_open", "sampled", "in_field", "closed"]
WaveScope = Literal["national", "provincial"]


class _WaveEvent(EventData):
    producer = "sampling"
    wave_id: uuid.UUID
    code: str
    name: str
    scope: WaveScope
    province_code: str | None
    year: int
    methodology_version: str
    fieldwork_start: dt.date | None
    fieldwork_end: dt.date | None
    status: WaveStatus

    def subject(self) -> str:
        return str(self.wave_id)


@contract
class WaveCreated(_WaveEvent):
    """A wave (đợt đo lường) was created. Other services keep their own copy of its facts."""

    event_type = "sipas.sampling.wave.created.v1"


@contract
class WaveUpdated(_WaveEvent):
    """A wave's facts or status changed; carries the whole new state, so consumers just replace."""

    event_type = "sipas.sampling.wave.updated.v1"
