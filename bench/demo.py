"""The demo as a benchmark: time per stage of a national wave, embedded and on PostgreSQL + RabbitMQ.

    python -m bench.demo [--quick] [--frame-size N] [--sample-size N] [--only embedded|services] [--json PATH]

The scenario of ``make demo`` (``demo/scenario.py``, only the HTTP APIs) plays against the stack
as it really runs, over HTTP: ``python -m services run`` (one process, SQLite + in-process bus;
the baseline column), then five ``python -m services serve`` processes on PostgreSQL + RabbitMQ
when reachable (``python -m services stack``; own schemas, exchange and queues, dropped
afterwards). Both stacks get free ports and a data directory of their own. The ratio is the
five processes' time over the embedded time, per stage (lower is better).

In-process ASGI transports would skip what the demo really pays (HTTP, JSON over a socket,
uvicorn) and would hide every citizen behind one client address, so the online channel's
per-client rate limit would throttle the whole wave to one answer a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from bench.common import Result, drop_schemas, parser, report
from demo.data import DemoConfig
from demo.scenario import Report, Scenario, http_actors
from services import app_module
from services.keys import issue_many
from shared.auth import Role
from shared.bus.rabbitmq import RabbitMQBus
from shared.settings import SERVICES as SERVICE_NAMES, PlatformSettings
from tests.support.stack_process import ROOT, StackProcess, stack_env

DATABASE_URL = os.environ.get("SIPAS_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BUS_URL = os.environ.get("SIPAS_TEST_BUS_URL", "amqp://guest:guest@127.0.0.1:5672/")


class _Stages:
    """Prints each stage's time as it ends (a national wave runs for a long time)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def stage(self, name: str) -> None:
        print(f"  [{self.label}] {time.strftime('%H:%M:%S')} {name}", flush=True)

    def task(self, description: str, total: int | None):
        return lambda n, total=None: None

    def note(self, text: str) -> None:
        print(f"  [{self.label}]   {text}", flush=True)


def actor_keys_wanted(cfg: DemoConfig) -> list[tuple[str, Role, str | None]]:
    from vietnam_provinces import Province

    provinces = cfg.provinces or sorted(f"{int(p.code):02d}" for p in Province.iter_all())
    wanted = [("ministry", Role.ministry, None), ("observer", Role.observer, None), ("vnpost", Role.vnpost, None)]
    for p in provinces:
        wanted += [(f"portal:{p}", Role.portal, p), (f"province:{p}", Role.province, p)]
    return wanted


def start(procs: StackProcess, mode: str, workdir: Path) -> None:
    """``StackProcess.start`` with a longer wait: five processes importing, migrating and
    connecting take more than the tests' 90 s on a busy machine."""
    if mode == "embedded":
        procs.cli("migrate")
    log = open(workdir / f"{mode}.log", "wb")
    procs.procs.append(subprocess.Popen([sys.executable, "-m", "services", "run" if mode == "embedded" else "stack"],
                                        env=procs.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    procs.wait_ready(timeout=600)


async def play(cfg: DemoConfig, mode: str, workdir: Path) -> Report:
    """Start a stack of our own (``embedded`` or ``separate``), play the wave, stop and drop it."""
    services = mode == "separate"
    env, urls, _uid = stack_env(workdir, database_url=DATABASE_URL if services else None,
                                bus_url=BUS_URL if services else None)
    env.update(SIPAS_LOG_LEVEL="WARNING")
    env.pop("SIPAS_OUTBOX_POLL_SECONDS", None)  # the defaults `make run` uses
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    with mock.patch.dict(os.environ, env):
        platform = PlatformSettings()
    procs = StackProcess(env, urls, log_dir=workdir)
    try:
        await asyncio.to_thread(start, procs, mode, workdir)
        wanted = actor_keys_wanted(cfg)
        issued = await issue_many(platform, [(r, f"bench {n}", p) for n, r, p in wanted])
        keys = {n: k.key for (n, *_), k in zip(wanted, issued)}
        async with http_actors(urls, keys) as actors:
            return await Scenario(cfg, actors, _Stages(mode)).play()
    except BaseException as exc:
        print(f"  [{mode}] the wave failed: {exc!r}; logs in {workdir}", flush=True)
        raise
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(procs.stop)
        if services:
            for attempt in range(5):  # a service process still closing can deadlock DROP SCHEMA
                try:
                    await drop_schemas(DATABASE_URL, platform.schema_prefix, SERVICE_NAMES)
                    break
                except Exception as exc:
                    print(f"  dropping the benchmark's schemas failed ({exc.__class__.__name__}); retrying", flush=True)
                    await asyncio.sleep(5)
            bus = RabbitMQBus(BUS_URL, exchange=platform.exchange)
            await bus.start()
            try:
                await bus.delete_queues([f"{platform.queue_prefix}.{n}.{c.name}" for n in SERVICE_NAMES
                                         for c in app_module(n).SPEC.consumers])
            finally:
                await bus.close()


async def reachable() -> bool:
    try:
        import aio_pika
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(DATABASE_URL.replace("+asyncpg", "")), 5)
        await conn.close()
        amqp = await asyncio.wait_for(aio_pika.connect(BUS_URL), 5)
        await amqp.close()
        return True
    except Exception:
        return False


async def amain(cfg: DemoConfig, only: str | None) -> list[Result]:
    size = f"{cfg.frame_size:,} frame records, {cfg.sample_size:,} sampled units"
    embedded = services = None
    with tempfile.TemporaryDirectory() as tmp:
        if only in (None, "embedded"):
            print(f"embedded (python -m services run): {size}", flush=True)
            embedded = (await play(cfg, "embedded", Path(tmp) / "embedded")).stage_seconds
        if only in (None, "services") and await reachable():
            print(f"five processes on PostgreSQL + RabbitMQ (python -m services stack): {size}", flush=True)
            services = (await play(cfg, "separate", Path(tmp) / "separate")).stage_seconds
    results = []
    for stage in (embedded or services or {}):
        if embedded and services:
            results.append(Result(f"demo stage {stage}, PostgreSQL+RabbitMQ vs embedded", services[stage], "s",
                                  baseline=embedded[stage], baseline_name="embedded", higher_is_better=False))
        elif embedded:
            results.append(Result(f"demo stage {stage}, embedded", embedded[stage], "s", higher_is_better=False))
        else:
            results.append(Result(f"demo stage {stage}, PostgreSQL+RabbitMQ", services[stage], "s", higher_is_better=False))
    total_e = sum(embedded.values()) if embedded else None
    total_s = sum(services.values()) if services else None
    if total_e and total_s:
        results.append(Result("demo whole wave, PostgreSQL+RabbitMQ vs embedded", total_s, "s", baseline=total_e,
                              baseline_name="embedded", higher_is_better=False, note=size))
    else:
        label = "embedded" if total_e else "PostgreSQL+RabbitMQ"
        results.append(Result(f"demo whole wave, {label}", total_e or total_s or 0.0, "s", higher_is_better=False, note=size))
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--frame-size", type=int)
    p.add_argument("--sample-size", type=int)
    p.add_argument("--only", choices=["embedded", "services"], help="one backend only")
    args = p.parse_args(argv)
    frame, sample = (20_000, 800) if args.quick else (DemoConfig.frame_size, DemoConfig.sample_size)
    cfg = DemoConfig(seed=7, frame_size=args.frame_size or frame, sample_size=args.sample_size or sample,
                     code="BENCH-DEMO")
    results = asyncio.run(amain(cfg, args.only))
    report("The demo wave, time per stage", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
