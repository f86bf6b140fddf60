"""``make demo``: play a national SIPAS wave against the running stack, through its HTTP APIs.

    python -m demo [--seed 2026] [--frame-size 2000000] [--sample-size 40000] [--methodology sipas-2017]

Starts the embedded stack (``python -m services run``) in the background when nothing answers on
the services' ports, issues the actors' API keys (an operator's job, as ``python -m services
keys issue`` does; kept in ``<data dir>/demo-keys.json`` for re-runs), then plays the wave with a
progress bar per stage and prints the published national SIPAS, the top and bottom provinces,
the counts at each stage and the public page's URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from demo.data import DemoConfig
from demo.scenario import SERVICES, DemoError, Report, Scenario, http_actors
from shared.auth import Role
from shared.settings import PlatformSettings

console = Console()


class RichProgress:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def stage(self, name: str) -> None:
        console.rule(f"[bold]{name}")

    def task(self, description: str, total: int | None):
        task = self.progress.add_task(description, total=total)

        def advance(n: int, total: int | None = None) -> None:
            if total is not None:
                self.progress.update(task, total=total)
            self.progress.advance(task, n)

        return advance

    def note(self, text: str) -> None:
        console.print(f"  {text}")


def service_urls(platform: PlatformSettings) -> dict[str, str]:
    return {name: platform.url_of(name).rstrip("/") for name in SERVICES}


def _up(urls: dict[str, str]) -> bool:
    try:
        return all(httpx.get(f"{u}/readyz", timeout=2).status_code == 200 for u in urls.values())
    except httpx.HTTPError:
        return False


def ensure_stack(urls: dict[str, str]) -> subprocess.Popen | None:
    """Start ``python -m services run`` when nothing answers; the demo leaves it running."""
    if _up(urls):
        return None
    console.print("No stack answers on the services' ports: starting the embedded stack (python -m services run).")
    log = open(Path(os.environ.get("SIPAS_DATA_DIR", "data")) / "demo-stack.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "services", "run"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not _up(urls):
        if proc.poll() is not None:
            raise SystemExit(f"the stack exited with {proc.returncode}; see data/demo-stack.log")
        if time.monotonic() > deadline:
            raise SystemExit("the stack did not become ready in 120 s; see data/demo-stack.log")
        time.sleep(0.5)
    console.print(f"Stack started (pid {proc.pid}); stop it with: kill {proc.pid}")
    return proc


async def actor_keys(platform: PlatformSettings, urls: dict[str, str], provinces: list[str] | None = None) -> dict[str, str]:
    """The keys of every actor, reused from an earlier run while they still work."""
    from services.keys import issue_many

    path = Path(platform.data_dir) / "demo-keys.json"
    if path.exists():
        keys = json.loads(path.read_text())
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{urls['sampling']}/v1/waves", headers={"X-API-Key": keys.get("ministry", "")})
        if r.status_code == 200 and (provinces is None or all(f"portal:{p}" in keys for p in provinces)):
            return keys
    if provinces is None:
        from vietnam_provinces import Province

        provinces = sorted(f"{int(p.code):02d}" for p in Province.iter_all())
    wanted: list[tuple[str, Role, str, str | None]] = [
        ("ministry", Role.ministry, "Bộ Nội vụ (demo)", None),
        ("observer", Role.observer, "Mặt trận Tổ quốc (demo)", None),
        ("vnpost", Role.vnpost, "Vietnam Post (demo)", None),
    ]
    for p in provinces:
        wanted.append((f"portal:{p}", Role.portal, f"Cổng dịch vụ công tỉnh {p} (demo)", p))
        wanted.append((f"province:{p}", Role.province, f"Sở Nội vụ tỉnh {p} (demo)", p))
    issued = await issue_many(platform, [(role, label, prov) for _, role, label, prov in wanted])
    keys = {name: k.key for (name, *_), k in zip(wanted, issued)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keys))
    path.chmod(0o600)
    return keys


def print_report(report: Report, urls: dict[str, str]) -> None:
    console.rule("[bold]Published")
    sipas = report.headline()
    if sipas:
        console.print(f"National SIPAS ({sipas['domain_code']}): [bold]{sipas['value']:.2f}[/] "
                      f"(95% CI {sipas['ci_low']:.2f} – {sipas['ci_high']:.2f}, n = {sipas['n']:,})")
    ranked = [r for r in report.rankings if r["value"] is not None]
    table = Table("rank", "province", "SIPAS", "change")
    shown = ranked if len(ranked) <= 10 else ranked[:5] + ranked[-5:]
    for r in shown:
        table.add_row(str(r["rank"]), r["province_code"], f"{r['value']:.2f}",
                      "" if r["rank_change"] is None else f"{r['rank_change']:+d}")
    console.print("Top and bottom five provinces:")
    console.print(table)
    counts = Table("stage", "count")
    for k, v in report.counts.items():
        counts.add_row(k, f"{v:,}")
    console.print(counts)
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in report.stage_seconds.items())
    console.print(f"Time per stage: {timing}")
    console.print(f"Public page: [link]{urls['publication']}/[/link]")


async def amain(cfg: DemoConfig, platform: PlatformSettings) -> Report:
    urls = service_urls(platform)
    keys = await actor_keys(platform, urls, list(cfg.provinces) if cfg.provinces else None)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bars:
        async with http_actors(urls, keys) as actors:
            report = await Scenario(cfg, actors, RichProgress(bars)).play()
    print_report(report, urls)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--frame-size", type=int, default=DemoConfig.frame_size)
    parser.add_argument("--sample-size", type=int, default=DemoConfig.sample_size)
    parser.add_argument("--methodology", default="sipas-2017")
    parser.add_argument("--provinces", help="comma-separated province codes (default: all)")
    parser.add_argument("--no-start", action="store_true", help="fail instead of starting the stack")
    parser.add_argument("--json", action="store_true", help="print the report as JSON at the end")
    args = parser.parse_args(argv)
    cfg = DemoConfig(seed=args.seed, frame_size=args.frame_size, sample_size=args.sample_size,
                     methodology=args.methodology,
                     provinces=tuple(args.provinces.split(",")) if args.provinces else None)
    platform = PlatformSettings()
    urls = service_urls(platform)
    if not args.no_start:
        ensure_stack(urls)
    elif not _up(urls):
        raise SystemExit("the stack is not running (make run)")
    try:
        report = asyncio.run(amain(cfg, platform))
    except DemoError as exc:
        console.print(f"[red]demo stopped:[/] {exc}")
        return 1
    if args.json:
        print(json.dumps(report.__dict__, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
