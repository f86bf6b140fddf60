"""``make test``: the suite on the embedded backend, then on PostgreSQL + RabbitMQ.

The services tier runs when both are reachable (``SIPAS_TEST_DATABASE_URL``,
``SIPAS_TEST_BUS_URL``, localhost defaults). When they are not, it says so plainly and the
command still passes, unless ``SIPAS_REQUIRE_SERVICES=1`` (CI sets it): then it fails.
Extra arguments go to pytest: ``python -m tests.tiers -k outbox``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

DATABASE_URL = os.environ.get("SIPAS_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BUS_URL = os.environ.get("SIPAS_TEST_BUS_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def _probe() -> list[str]:
    problems = []
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(DATABASE_URL.replace("+asyncpg", "")), 5)
        await conn.close()
    except Exception as exc:
        problems.append(f"PostgreSQL at {DATABASE_URL.split('@')[-1]}: {type(exc).__name__}: {exc}")
    try:
        import aio_pika

        conn = await asyncio.wait_for(aio_pika.connect(BUS_URL), 5)
        await conn.close()
    except Exception as exc:
        problems.append(f"RabbitMQ at {BUS_URL.split('@')[-1]}: {type(exc).__name__}: {exc}")
    return problems


def _pytest(backend: str, args: list[str]) -> int:
    print(f"\n=== SIPAS test tier: {backend} ===", flush=True)
    env = {**os.environ, "SIPAS_TEST_BACKEND": backend}
    return subprocess.call([sys.executable, "-m", "pytest", *args], env=env)


def main(args: list[str]) -> int:
    code = _pytest("embedded", args)
    problems = asyncio.run(_probe())
    if problems:
        print("\n=== SIPAS test tier: services — NOT RUN ===")
        for p in problems:
            print(f"  unreachable: {p}")
        if os.environ.get("SIPAS_REQUIRE_SERVICES") == "1":
            print("SIPAS_REQUIRE_SERVICES=1: the PostgreSQL + RabbitMQ tier is required; failing.")
            return 1
        print("  The embedded tier ran; start PostgreSQL and RabbitMQ (or set SIPAS_TEST_DATABASE_URL /")
        print("  SIPAS_TEST_BUS_URL) to run the suite on them too.")
        return code
    services_code = _pytest("services", args)
    print(f"\nembedded tier: {'passed' if code == 0 else 'FAILED'}; "
          f"services tier: {'passed' if services_code == 0 else 'FAILED'}")
    return code or services_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
