"""The five SIPAS services, one per stage of the cycle.

This package's own modules know all five (to run them together, migrate them, issue keys to
them); the services themselves never import each other.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from shared.settings import SERVICES


def app_module(name: str) -> ModuleType:
    """``services.<name>.app``: exposes ``SPEC`` and ``create_app(settings, *, bus)``."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")
    return importlib.import_module(f"services.{name}.app")


def settings_for(name: str, **overrides):
    module = importlib.import_module(f"services.{name}.settings")
    cls = getattr(module, f"{name.capitalize()}Settings")
    return cls(**overrides)
