"""Command line of the SIPAS backend.

    python -m services run                 # embedded: all five services in one process
    python -m services serve sampling      # production: one service per process
    python -m services migrate [NAME ...]  # databases and broker topology
    python -m services stack               # five processes on PostgreSQL + RabbitMQ (no Docker)
    python -m services keys issue --role province --province 01 --label "Sở Nội vụ Hà Nội"
    python -m services keys revoke PREFIX | keys list
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import uvicorn

from services import app_module, settings_for
from services import keys as keys_cli
from services.embedded import declare_topology, embedded_stack, make_bus, migrate_service
from shared.auth import Role
from shared.observability import configure_logging
from shared.settings import SERVICES, PlatformSettings


class _Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to us (five servers share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def _run_embedded(platform: PlatformSettings) -> None:
    for name in SERVICES:  # the key store needs the tables before the stack starts
        await migrate_service(name, settings_for(name, platform=platform))
    key_file = platform.data_dir / "ministry.key"
    if platform.environment == "local" and not await keys_cli.has_ministry_key(platform):
        issued = await keys_cli.issue(platform, Role.ministry, "Bộ Nội vụ (local)")
        key_file.write_text(issued.key + "\n", encoding="utf-8")
        key_file.chmod(0o600)
        print(f"Issued a local ministry API key, saved in {key_file}")
    async with embedded_stack(platform) as stack:
        servers = []
        for name, app in stack.apps.items():
            cfg = stack.settings[name]
            config = uvicorn.Config(app, host=cfg.host, port=cfg.port, lifespan="off", log_config=None)
            servers.append(_Server(config))
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for server in servers:
                server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):
                stop()
                break
            await asyncio.sleep(0.05)
        else:
            print("\nSIPAS is running (embedded: SQLite files in "
                  f"{platform.data_dir}/, in-process event bus). Ctrl-C stops it.")
            for name in SERVICES:
                cfg = stack.settings[name]
                print(f"  {name:<13} http://{cfg.host}:{cfg.port}/docs")
            if key_file.exists():
                print(f"  ministry key  in {key_file}  (send it as the X-API-Key header)")
            sys.stdout.flush()
        await asyncio.gather(*tasks, return_exceptions=True)
        failed = [t for t in tasks if t.done() and not t.cancelled() and (t.exception() or False)]
        if failed:
            raise SystemExit(f"a service failed to start: {failed[0].exception()}")
    print("stopped.")


async def _migrate(platform: PlatformSettings, names: list[str]) -> None:
    for name in names:
        await migrate_service(name, settings_for(name, platform=platform))
        print(f"migrated {name}")
    if not platform.bus_url.startswith("memory"):
        bus = make_bus(platform)
        await bus.start()
        try:
            await declare_topology(bus, {n: settings_for(n, platform=platform) for n in SERVICES})
        finally:
            await bus.close()
        print("declared the broker topology")


def _serve(name: str) -> None:
    settings = settings_for(name)
    app = app_module(name).create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)


def _stack(platform: PlatformSettings) -> int:
    """Five processes, as production runs them; Ctrl-C stops all."""
    asyncio.run(_migrate(platform, list(SERVICES)))
    env = os.environ.copy()
    # The five processes must share one internal token (see PlatformSettings.internal_token).
    env.setdefault("SIPAS_INTERNAL_TOKEN", platform.internal_token)
    procs = [subprocess.Popen([sys.executable, "-m", "services", "serve", name], env=env) for name in SERVICES]
    try:
        for name in SERVICES:
            cfg = settings_for(name, platform=platform)
            print(f"  {name:<13} http://{cfg.host}:{cfg.port}/docs")
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        # A service that has not stopped in time is killed, never left running without its
        # parent (an orphan kept working on a benchmark's dropped schemas).
        grace = platform.stack_stop_seconds
        deadline = time.monotonic() + grace
        for name, p in zip(SERVICES, procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop within {grace:g} s of SIGTERM: killed", file=sys.stderr)
                p.kill()
                p.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services", description="SIPAS backend")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="all five services in one process (embedded mode)")
    serve = sub.add_parser("serve", help="one service in this process (production mode)")
    serve.add_argument("service", choices=SERVICES)
    mig = sub.add_parser("migrate", help="apply migrations and declare the broker topology")
    mig.add_argument("services", nargs="*", help="services to migrate (default: all)")
    sub.add_parser("stack", help="five processes against PostgreSQL + RabbitMQ, without Docker")
    keys = sub.add_parser("keys", help="issue, revoke and list API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kissue = ksub.add_parser("issue")
    kissue.add_argument("--role", required=True, choices=[r.value for r in Role])
    kissue.add_argument("--label", required=True, help="organisation the key is for (not a person's name)")
    kissue.add_argument("--province", help="province code, for province and portal keys")
    krevoke = ksub.add_parser("revoke")
    krevoke.add_argument("prefix")
    ksub.add_parser("list")
    args = parser.parse_args(argv)

    platform = PlatformSettings()
    configure_logging(platform.log_level, platform.log_json if platform.log_json is not None else platform.environment != "local")
    if args.command == "run":
        platform.data_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(_run_embedded(platform))
    elif args.command == "serve":
        _serve(args.service)
    elif args.command == "migrate":
        asyncio.run(_migrate(platform, args.services or list(SERVICES)))
    elif args.command == "stack":
        return _stack(platform)
    elif args.command == "keys":
        if args.keys_command == "issue":
            issued = asyncio.run(keys_cli.issue(platform, Role(args.role), args.label, args.province))
            print(issued.key)
            print(f"(prefix {issued.prefix}; shown once, store it safely)", file=sys.stderr)
        elif args.keys_command == "revoke":
            if not asyncio.run(keys_cli.revoke(platform, args.prefix)):
                print(f"no active key with prefix {args.prefix}", file=sys.stderr)
                return 1
            print(f"revoked {args.prefix}")
        else:
            for row in asyncio.run(keys_cli.list_keys(platform)):
                state = "revoked" if row["revoked_at"] else "active"
                print(f"{row['prefix']}  {row['role']:<9} {row['province_code'] or '-':<4} {state:<8} {row['label']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
