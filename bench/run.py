"""``make bench``: run every benchmark and write docs/benchmarks.md.

    python -m bench.run            # full sizes (minutes to tens of minutes)
    python -m bench.run --quick    # smoke sizes
    python -m bench.run --only sampling
    python -m bench.run --reuse demo=embedded.json --reuse demo=services.json --args sampling="--frame 1000000"

``--reuse NAME=PATH`` puts a module's results from an earlier ``python -m bench.NAME --json PATH``
run in the table instead of running it again (the demo's national wave on both backends takes
the better part of an hour); ``--args NAME="..."`` passes a module its own options. The table's
header says which sections were reused and gives the whole command.

Each ``bench/<name>.py`` module with a ``main(argv)`` runs in its own process (so one
benchmark's memory does not inflate the next one's peak), with ``--json``; the table collects
the measured value, the baseline measured side by side, their ratio and the target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
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
    ap.add_argument("--reuse", action="append", default=[], metavar="NAME=PATH",
                    help="results of bench.NAME from an earlier --json run")
    ap.add_argument("--args", action="append", default=[], metavar="NAME=OPTIONS", help="options for bench.NAME")
    args = ap.parse_args(argv)
    reuse: dict[str, list[str]] = {}
    for name, path in map(_pair, args.reuse):  # a name may come twice (the demo's two backends)
        reuse.setdefault(name, []).append(path)
    extra = {k: shlex.split(v) for k, v in map(_pair, args.args)}
    names = modules(args.only)
    sections, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names, 1):
            if name in reuse:
                print(f"[{i}/{len(names)}] bench.{name}: results of earlier runs, {', '.join(reuse[name])}", flush=True)
                parts = [json.loads(Path(p).read_text()) for p in reuse[name]]
                sections.append((name, {**parts[0], "results": [r for d in parts for r in d["results"]]}, 0.0))
                continue
            print(f"[{i}/{len(names)}] bench.{name} {'(quick)' if args.quick else ''}", flush=True)
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, "-m", f"bench.{name}", "--json", str(out)] + (["--quick"] if args.quick else [])
            cmd += extra.get(name, [])
            started = time.perf_counter()
            code = subprocess.call(cmd, cwd=ROOT)
            took = time.perf_counter() - started
            if code != 0 or not out.exists():
                failures.append(name)
                sections.append((name, None, took))
                continue
            sections.append((name, json.loads(out.read_text()), took))
    m = machine()
    command = " ".join(["python -m bench.run", *(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))])
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` (`make bench`) on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Each measure runs beside its baseline in the same process "
        "on the same machine; the ratio is what to compare across machines.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, {m['platform']}.",
        "",
        *([f"Reused from earlier runs (`python -m bench.NAME --json PATH`), not run again for this table: "
           f"{', '.join(f'`{n}` ({chr(44).join(p)})' for n, p in reuse.items())}.", ""] if reuse else []),
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


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"expected NAME=VALUE, got {text!r}")
    return name, value


if __name__ == "__main__":
    sys.exit(main())
