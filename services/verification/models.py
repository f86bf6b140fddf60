"""Verification's tables (its own metadata: no other service reads them)."""

from __future__ import annotations

from shared.db import service_base
from shared.waves import add_wave_replica

Base = service_base("verification")

# This service's copy of sampling's waves, fed by wave events.
wave = add_wave_replica(Base.metadata)
