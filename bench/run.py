"""``make bench``: run every benchmark and write docs/benchmarks.md.

    python -m bench.run            # full sizes (minutes to tens of minutes)
    python -m bench.run --quick    # smoke sizes
    python -m bench.run --only sampling

Each ``bench/<name>.py`` module with a ``main(argv)`` runs in its own process (so one
benchmark's memory does not inflate the next one's peak), with ``--json``; the table collects
the measured value, the baseline measured side by side, their ratio and the target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"__init__", "common", "run"}


def modules(only: list[str]) -> list[str]:
    names = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in SKIP)
    return [n for n in names if not only or any(o in n for o in only)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    names = modules(args.only)
    sections, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names, 1):
            print(f"[{i}/{len(names)}] bench.{name} {'(quick)' if args.quick else ''}", flush=True)
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, "-m", f"bench.{name}", "--json", str(out)] + (["--quick"] if args.quick else [])
            started = time.perf_counter()
            code = subprocess.call(cmd, cwd=ROOT)
            took = time.perf_counter() - started
            if code != 0 or not out.exists():
                failures.append(name)
                sections.append((name, None, took))
                continue
            sections.append((name, json.loads(out.read_text()), took))
    m = machine()
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{'python -m bench.run' + (' --quick' if args.quick else '')}` (`make bench`) on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Each measure runs beside its baseline in the same process "
        "on the same machine; the ratio is what to compare across machines.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, {m['platform']}.",
        "",
        "| benchmark | measure | value | baseline | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, data, took in sections:
        if data is None:
            lines.append(f"| {name} | **failed** (see its output) | | | | |")
            continue
        for r in data["results"]:
            base = f"{r['baseline']:,.2f} ({r['baseline_name']})" if r.get("baseline") is not None else "-"
            ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
            lines.append(f"| {data['title']} | {r['name']} | {r['value']:,.2f} {r['unit']} | {base} | {ratio} | {r.get('target') or ''} |")
    notes = [f"- **{data['title']}** — {r['name']}: {r['note']}" for _, data, _ in sections if data for r in data["results"] if r.get("note")]
    if notes:
        lines += ["", "Notes:", "", *notes]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
