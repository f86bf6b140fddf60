"""The methodology documents this service ships (``methodologies/*.json``) and serves to the
others by id. The model and answer checks are in ``shared.methodology``."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from shared.methodology import Methodology, parse_methodology

METHODOLOGY_DIR = Path(__file__).with_name("methodologies")
SCHEMA_PATH = METHODOLOGY_DIR / "schema.json"


def builtin_ids() -> list[str]:
    """Ids of the methodology versions shipped with the service."""
    return sorted(p.stem for p in METHODOLOGY_DIR.glob("*.json") if p.name != SCHEMA_PATH.name)


@functools.cache
def load_builtin(methodology_id: str) -> Methodology:
    """Load a shipped methodology version by id (KeyError if there is none)."""
    if methodology_id not in builtin_ids():
        raise KeyError(f"no built-in methodology {methodology_id!r}; have {builtin_ids()}")
    return load_file(METHODOLOGY_DIR / f"{methodology_id}.json")


def load_file(path: str | Path) -> Methodology:
    """Load a methodology document from a JSON file (pydantic ValidationError if invalid)."""
    return parse_methodology(json.loads(Path(path).read_text(encoding="utf-8")))


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a methodology document."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
