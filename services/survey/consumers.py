"""Events the survey service consumes."""

from __future__ import annotations

from services.survey.models import wave
from shared.service import Consumer
from shared.waves import WAVE_EVENTS, wave_replica_effect

CONSUMERS = [
    Consumer("waves", WAVE_EVENTS, wave_replica_effect(wave)),
]
