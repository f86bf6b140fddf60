"""Write the AsyncAPI document: ``python -m shared.contracts docs/events/asyncapi.json``."""

import sys
from pathlib import Path

from shared.contracts import render_asyncapi

if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/events/asyncapi.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_asyncapi(), encoding="utf-8")
    print(f"wrote {target}")
