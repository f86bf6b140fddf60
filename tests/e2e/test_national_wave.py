"""The whole cycle, at small scale, through the public HTTP APIs only (``demo.scenario``).

In-process on the test's backend (SQLite + in-process bus, or PostgreSQL + RabbitMQ), then in the
services tier as five separate processes on PostgreSQL + RabbitMQ compared with an embedded run
of the same seed: both must publish the same figures.
"""

from __future__ import annotations

import contextlib
import os
from unittest import mock

import httpx
import pytest

from demo.data import DemoConfig
from demo.scenario import SERVICES, Report, Scenario, http_actors
from services.embedded import embedded_stack
from shared.auth import Role
from shared.settings import PlatformSettings
from tests.conftest import BUS_URL, DATABASE_URL, drop_backend, all_queues
from tests.support.stack_process import StackProcess, stack_env

PROVINCES = ("01", "79", "48", "92")
SMALL = DemoConfig(seed=11, frame_size=3000, sample_size=320, provinces=PROVINCES, online_share=0.05,
                   refusal_rate=0.05, unreachable_rate=0.04, fraud_province_index=2, code="E2E-SMALL")


def wanted_keys() -> list[tuple[str, Role, str | None]]:
    keys = [("ministry", Role.ministry, None), ("observer", Role.observer, None), ("vnpost", Role.vnpost, None)]
    for p in PROVINCES:
        keys += [(f"portal:{p}", Role.portal, p), (f"province:{p}", Role.province, p)]
    return keys


async def play_in_process(stack, clients_keys) -> Report:
    transports = {name: httpx.ASGITransport(app=app) for name, app in stack.apps.items()}
    urls = {name: f"http://{name}" for name in SERVICES}
    async with http_actors(urls, clients_keys, transports) as actors:
        return await Scenario(SMALL, actors).play()


def figures(report: Report) -> dict:
    """What the public sees: national figures and each province's, rounded only by JSON."""
    provinces = {p["province_code"]: {k: v for k, v in p.items() if k not in ("links",)} for p in report.provinces}
    return {"national": report.national, "provinces": provinces}


async def test_a_small_national_wave_is_published_and_a_rerun_adds_nothing(stack, clients):
    keys = {}
    for name, role, province in wanted_keys():
        keys[name] = (await clients.key(role, province))["X-API-Key"]
    first = await play_in_process(stack, keys)

    assert first.release_id and first.run_id
    assert {p["province_code"] for p in first.provinces} == set(PROVINCES)
    assert first.national, "the release has national figures"
    # The fraudulent enumerator's forms were denied at back-check and are out of the accepted set.
    assert first.counts.get("forms denied", 0) > 0
    m = {"X-API-Key": keys["ministry"]}
    accepted = (await clients.indexing.get(f"/v1/waves/{first.wave_id}/accepted", headers=m)).json()
    valid = first.counts["forms valid"]
    assert accepted["accepted_forms"] == valid

    # Re-running the same seed finds everything done: same wave, run, release and figures.
    second = await play_in_process(stack, keys)
    assert (second.wave_id, second.run_id, second.release_id) == (first.wave_id, first.run_id, first.release_id)
    assert figures(second) == figures(first)
    forms = (await clients.survey.get("/v1/forms", params={"wave_id": first.wave_id, "limit": 1}, headers=m)).json()
    assert forms["total"] == first.counts.get("forms total", forms["total"])


@pytest.mark.services
async def test_five_processes_on_postgresql_and_rabbitmq_publish_what_the_embedded_stack_publishes(tmp_path):
    # Embedded: SQLite files and the in-process bus, in this process.
    embedded = PlatformSettings(data_dir=str(tmp_path / "embedded"), log_json=True)
    async with embedded_stack(embedded) as stack:
        keys = {}
        from services.keys import issue_many

        issued = await issue_many(embedded, [(role, f"e2e {name}", p) for name, role, p in wanted_keys()])
        keys = {name: k.key for (name, *_), k in zip(wanted_keys(), issued)}
        reference = await play_in_process(stack, keys)

    # Production shape: five `python -m services serve` processes on PostgreSQL + RabbitMQ.
    env, urls, uid = stack_env(tmp_path / "separate", database_url=DATABASE_URL, bus_url=BUS_URL)
    (tmp_path / "separate").mkdir(exist_ok=True)
    procs = StackProcess(env, urls, log_dir=tmp_path / "separate")
    with mock.patch.dict(os.environ, env):
        platform = PlatformSettings()
    try:
        procs.start("each")  # five `serve` processes after `migrate`; waits 240 s for a busy machine
        from services.keys import issue_many

        issued = await issue_many(platform, [(role, f"e2e {name}", p) for name, role, p in wanted_keys()])
        keys = {name: k.key for (name, *_), k in zip(wanted_keys(), issued)}
        async with http_actors(urls, keys) as actors:
            separate = await Scenario(SMALL, actors).play()
    finally:
        with contextlib.suppress(Exception):
            procs.stop()
        await drop_backend(platform, all_queues(platform))
    assert separate.counts == reference.counts
    assert_same_figures(figures(separate), figures(reference))


def assert_same_figures(got, want, path="") -> None:
    """Equal, numbers to 1e-9 relative (sums may run in another order on another database)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_same_figures(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {len(got)} items != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_figures(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), f"{path}: {got} != {want}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"
