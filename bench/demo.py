"""The demo as a benchmark: time per stage of a national wave, embedded and on PostgreSQL + RabbitMQ.

    python -m bench.demo [--quick] [--frame-size N] [--sample-size N] [--json PATH]

The scenario of ``make demo`` (``demo/scenario.py``, only the HTTP APIs) runs against an
in-process stack on each backend: SQLite + in-process bus (the baseline column), then
PostgreSQL + RabbitMQ when reachable (own schemas and exchange, dropped afterwards). The ratio is
PostgreSQL's time over the embedded time, per stage (lower is better).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid

import httpx

from bench.common import Result, drop_schemas, parser, report
from demo.data import DemoConfig
from demo.scenario import SERVICES, Scenario, http_actors
from services import app_module
from services.embedded import embedded_stack
from services.keys import issue_many
from shared.auth import Role
from shared.bus.rabbitmq import RabbitMQBus
from shared.settings import SERVICES as SERVICE_NAMES, PlatformSettings

DATABASE_URL = os.environ.get("SIPAS_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BUS_URL = os.environ.get("SIPAS_TEST_BUS_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def play(cfg: DemoConfig, platform: PlatformSettings) -> dict[str, float]:
    async with embedded_stack(platform) as stack:
        from vietnam_provinces import Province

        provinces = cfg.provinces or sorted(f"{int(p.code):02d}" for p in Province.iter_all())
        wanted = [("ministry", Role.ministry, None), ("observer", Role.observer, None), ("vnpost", Role.vnpost, None)]
        for p in provinces:
            wanted += [(f"portal:{p}", Role.portal, p), (f"province:{p}", Role.province, p)]
        issued = await issue_many(platform, [(r, f"bench {n}", p) for n, r, p in wanted])
        keys = {n: k.key for (n, *_), k in zip(wanted, issued)}
        transports = {name: httpx.ASGITransport(app=app) for name, app in stack.apps.items()}
        async with http_actors({n: f"http://{n}" for n in SERVICES}, keys, transports) as actors:
            report_ = await Scenario(cfg, actors).play()
    return report_.stage_seconds


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


async def amain(cfg: DemoConfig) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        print(f"embedded: {cfg.frame_size:,} frame records, {cfg.sample_size:,} units", flush=True)
        embedded = await play(cfg, PlatformSettings(data_dir=tmp, log_level="WARNING", log_json=True))
    services = None
    if await reachable():
        uid = uuid.uuid4().hex[:8]
        platform = PlatformSettings(database_url=DATABASE_URL, bus_url=BUS_URL, schema_prefix=f"b{uid}_",
                                    exchange=f"sipas.bench.{uid}", queue_prefix=f"bench.{uid}",
                                    log_level="WARNING", log_json=True)
        print("PostgreSQL + RabbitMQ", flush=True)
        try:
            services = await play(cfg, platform)
        finally:
            # The benchmark's own schemas and queues (tests.conftest's cleanup only acts in the
            # services test tier, so the benchmark does its own).
            await drop_schemas(DATABASE_URL, platform.schema_prefix, SERVICE_NAMES)
            bus = RabbitMQBus(BUS_URL, exchange=platform.exchange)
            await bus.start()
            try:
                await bus.delete_queues([f"{platform.queue_prefix}.{n}.{c.name}" for n in SERVICE_NAMES
                                         for c in app_module(n).SPEC.consumers])
            finally:
                await bus.close()
    results = []
    for stage, seconds in embedded.items():
        if services is None:
            results.append(Result(f"demo stage {stage}, embedded", seconds, "s", higher_is_better=False))
        else:
            results.append(Result(f"demo stage {stage}, PostgreSQL+RabbitMQ vs embedded", services[stage], "s",
                                  baseline=seconds, baseline_name="embedded", higher_is_better=False))
    total_e = sum(embedded.values())
    results.append(Result("demo whole wave" + (", PostgreSQL+RabbitMQ vs embedded" if services else ", embedded"),
                          sum(services.values()) if services else total_e, "s",
                          baseline=total_e if services else None, baseline_name="embedded", higher_is_better=False,
                          note=f"{cfg.frame_size:,} frame records, {cfg.sample_size:,} sampled units"))
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--frame-size", type=int)
    p.add_argument("--sample-size", type=int)
    args = p.parse_args(argv)
    frame, sample = (20_000, 800) if args.quick else (DemoConfig.frame_size, DemoConfig.sample_size)
    cfg = DemoConfig(seed=7, frame_size=args.frame_size or frame, sample_size=args.sample_size or sample,
                     code="BENCH-DEMO")
    results = asyncio.run(amain(cfg))
    report("The demo wave, time per stage", results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
