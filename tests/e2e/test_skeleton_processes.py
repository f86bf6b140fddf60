"""The walking skeleton across real processes.

Embedded: ``python -m services run`` (one process). Separate: five ``python -m services serve``
processes on PostgreSQL + RabbitMQ, as production runs them (services tier only). In both, a wave
created over HTTP in sampling becomes visible through the four other services' APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from shared.settings import SERVICES, PlatformSettings
from tests.conftest import BUS_URL, DATABASE_URL, ON_SERVICES, all_queues, drop_backend
from tests.support.stack_process import StackProcess, stack_env

MODES = ["embedded", pytest.param("separate", marks=pytest.mark.services)]


@pytest.mark.parametrize("mode", MODES)
def test_wave_event_crosses_all_five_services(tmp_path, mode):
    env, urls, uid = stack_env(
        tmp_path, database_url=DATABASE_URL if ON_SERVICES else None, bus_url=BUS_URL if ON_SERVICES else None
    )
    stack = StackProcess(env, urls, log_dir=tmp_path)
    try:
        stack.start(mode)
        key = {"X-API-Key": stack.issue_key("ministry")}
        body = {"code": f"E2E-{uid}", "name": "SIPAS e2e", "scope": "national", "year": 2026,
                "methodology_version": "sipas-2017"}
        r = httpx.post(f"{urls['sampling']}/v1/waves", json=body, headers=key | {"X-Correlation-ID": f"e2e-{uid}"})
        assert r.status_code == 201, r.text
        wave_id = r.json()["id"]
        pending = {s for s in SERVICES if s != "sampling"}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                got = httpx.get(f"{urls[name]}/v1/waves/{wave_id}", headers=key)
                if got.status_code == 200:
                    assert got.json()["code"] == body["code"]
                    pending.discard(name)
            time.sleep(0.2)
        assert not pending, f"never reached {sorted(pending)}\n{stack.logs()}"
        # The correlation id of the creating request travelled with the event into the logs.
        logs = stack.logs(tail=None)
        handled = [line for line in logs.splitlines() if f"e2e-{uid}" in line and "handled" in line]
        assert len(handled) >= 4, logs[-3000:]
    finally:
        codes = stack.stop()
        if ON_SERVICES:
            platform = PlatformSettings(schema_prefix=f"t{uid}_", exchange=f"sipas.test.{uid}", queue_prefix=f"test.{uid}")
            asyncio.run(drop_backend(platform, all_queues(platform)))
    assert all(c == 0 for c in codes), f"unclean stop {codes}\n{stack.logs()}"


@pytest.mark.services
def test_stack_kills_a_service_that_does_not_stop_and_leaves_no_process_behind(tmp_path):
    """``services stack`` stopped while one of its services cannot answer SIGTERM (frozen): after
    the grace period it kills that one too, so no service outlives the stack."""
    import os
    import signal
    import subprocess

    env, urls, uid = stack_env(tmp_path, database_url=DATABASE_URL, bus_url=BUS_URL)
    env["SIPAS_STACK_STOP_SECONDS"] = "3"
    stack = StackProcess(env, urls, log_dir=tmp_path)
    children: list[int] = []
    try:
        stack.start("separate")
        parent = stack.procs[0].pid
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()]
        assert len(children) == len(SERVICES), children
        os.kill(children[-1], signal.SIGSTOP)  # frozen: it cannot handle SIGTERM
        started = time.monotonic()
        codes = stack.stop()
        assert time.monotonic() - started < 30, "the stack waited far past its grace period"
        assert codes == [0], f"{codes}\n{stack.logs()}"
        alive = [pid for pid in children if os.path.exists(f"/proc/{pid}") and
                 open(f"/proc/{pid}/stat").read().split()[2] != "Z"]
        assert alive == [], f"services left running: {alive}"
        assert "did not stop within 3 s of SIGTERM: killed" in stack.logs(tail=None)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        platform = PlatformSettings(schema_prefix=f"t{uid}_", exchange=f"sipas.test.{uid}", queue_prefix=f"test.{uid}")
        asyncio.run(drop_backend(platform, all_queues(platform)))
