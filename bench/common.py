"""What every benchmark uses: timing with medians, peak memory, the machine, a results table.

A benchmark module exposes ``main(argv) -> int`` and accepts ``--quick`` (small sizes, for a
smoke run) and ``--json PATH`` (write its results for the harness). Results are rows of
(name, value, unit, baseline value, ratio, note).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    higher_is_better: bool = True
    target: str | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        return self.value / self.baseline if self.higher_is_better else self.value / self.baseline


def machine() -> dict[str, Any]:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024 // 1024
    except OSError:
        pass
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Median wall time of ``repeat`` runs (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_memory_mib(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Peak Python-allocated memory while ``fn`` runs (tracemalloc; numpy buffers included)."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20, result


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    p.add_argument("--json", type=Path, help="write results here (for bench.run)")
    return p


def report(title: str, results: list[Result], json_path: Path | None = None) -> None:
    print(f"\n{title}")
    print(f"{'measure':<58} {'value':>14} {'baseline':>14} {'ratio':>7}  target")
    for r in results:
        base = f"{r.baseline:,.1f}" if r.baseline is not None else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        print(f"{r.name:<58} {r.value:>12,.1f} {r.unit[:1]} {base:>14} {ratio:>7}  {r.target or ''}")
        if r.note:
            print(f"    {r.note}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps({"title": title, "results": [asdict(r) | {"ratio": r.ratio} for r in results]}, indent=2)
        )


async def drop_schemas(database_url: str, schema_prefix: str, services: list[str] | tuple[str, ...]) -> None:
    """Remove the PostgreSQL schemas a benchmark created (one per service, under its own prefix)."""
    from sqlalchemy import text

    from shared.db import create_engine

    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            for name in services:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema_prefix}{name}" CASCADE'))
    finally:
        await engine.dispose()
