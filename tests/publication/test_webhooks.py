"""Change notification: signed POSTs, retries with backoff, the delivery log, replay, disabling."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import update

from services.publication.webhooks import check_url, verify
from shared.errors import BadRequest
from tests.conftest import eventually
from tests.publication.helpers import Receiver, Scenario, serve


async def test_a_subscriber_failing_twice_gets_exactly_one_successful_delivery_and_the_log_shows_every_attempt(stack, clients):
    s = Scenario(stack, clients)
    await s.keys()
    await _webhook_urls_are_checked(s, clients)
    tuning = s.app.state.settings
    tuning.webhook_retry_base_seconds = 0.05
    tuning.scheduler_poll_seconds = 0.05
    tuning.webhook_max_attempts = 5
    tuning.webhook_disable_after = 4
    portal = await clients.key("portal", "01", label="Cổng dịch vụ công quốc gia")
    other_portal = await clients.key("portal", "79")
    flaky, broken = Receiver([500, 503]), Receiver([500] * 20)

    async with serve(flaky.app) as flaky_url, serve(broken.app) as broken_url:
        r = await s.api.post("/v1/webhooks", json={"url": f"{flaky_url}/hook"}, headers=portal)
        assert r.status_code == 201, r.text
        hook = r.json()
        secret = hook.pop("secret")
        assert hook["active"] and "secret" not in (await s.api.get(f"/v1/webhooks/{hook['id']}", headers=portal)).json()
        broken_hook = (await s.api.post("/v1/webhooks", json={"url": f"{broken_url}/hook"}, headers=other_portal)).json()
        # A subscriber sees only its own webhooks; another's is "not found".
        mine = (await s.api.get("/v1/webhooks", headers=portal)).json()["items"]
        assert [h["id"] for h in mine if h["active"]] == [hook["id"]]
        assert broken_hook["id"] not in [h["id"] for h in mine]
        assert (await s.api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=other_portal)).status_code == 404

        wave_id, release_id = await s.published_release()

        async def delivered():
            log = (await s.api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=portal)).json()["items"]
            assert log and log[0]["status"] == "delivered"

        await eventually(delivered)
        assert len(flaky.successes) == 1
        assert [r["status"] for r in flaky.received] == [500, 503, 200]
        # Same delivery id on every attempt; each body is signed with a fresh timestamp.
        ids = {r["headers"]["x-sipas-delivery"] for r in flaky.received}
        assert len(ids) == 1
        for got in flaky.received:
            assert verify(secret, got["headers"]["x-sipas-signature"], got["body"])
            assert not verify("wrong-secret", got["headers"]["x-sipas-signature"], got["body"])
        payload = json.loads(flaky.successes[0]["body"])
        assert payload["event"] == "release.published" and payload["release_id"] == release_id
        assert payload["version"] == 1 and payload["wave_id"] == wave_id
        assert flaky.received[0]["headers"]["x-sipas-event"] == "release.published"

        log = (await s.api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=portal)).json()["items"]
        assert len(log) == 1 and log[0]["status"] == "delivered" and log[0]["attempts"] == 3
        assert [(a["attempt"], a["status_code"], a["replay"]) for a in log[0]["log"]] == [
            (1, 500, False), (2, 503, False), (3, 200, False)]
        assert log[0]["log"][0]["error"] == "HTTP 500"

        # Manual replay: one more signed POST with the same delivery id, logged as a replay.
        r = await s.api.post(f"/v1/webhooks/{hook['id']}/deliveries/{log[0]['id']}/replay", headers=portal)
        assert r.status_code == 200, r.text
        assert r.json()["log"][-1]["replay"] is True and r.json()["status"] == "delivered"
        assert len(flaky.successes) == 2 and flaky.received[-1]["headers"]["x-sipas-delivery"] == log[0]["id"]
        r = await s.api.post(f"/v1/webhooks/{hook['id']}/deliveries/00000000-0000-4000-8000-000000000000/replay",
                             headers=portal)
        assert r.status_code == 404

        # The subscriber that always fails is disabled after 4 consecutive failures.
        async def disabled():
            got = (await s.api.get(f"/v1/webhooks/{broken_hook['id']}", headers=other_portal)).json()
            assert got["active"] is False, got
            return got

        got = await eventually(disabled)
        assert "4 consecutive failed deliveries" in got["disabled_reason"]
        assert len(broken.received) == 4
        deliveries = (await s.api.get(f"/v1/webhooks/{broken_hook['id']}/deliveries", headers=other_portal)).json()
        assert deliveries["items"][0]["attempts"] == 4
        # Replaying while disabled is refused clearly; enabling resumes the pending delivery.
        r = await s.api.post(f"/v1/webhooks/{broken_hook['id']}/deliveries/{deliveries['items'][0]['id']}/replay",
                             headers=other_portal)
        assert r.status_code == 409 and "disabled" in r.json()["detail"]
        broken.statuses.clear()
        r = await s.api.post(f"/v1/webhooks/{broken_hook['id']}/enable", headers=other_portal)
        assert r.status_code == 200 and r.json()["active"] is True

        async def resumed():
            got = (await s.api.get(f"/v1/webhooks/{broken_hook['id']}/deliveries", headers=other_portal)).json()
            assert got["items"][0]["status"] == "delivered"

        await eventually(resumed)
        assert len(broken.successes) == 1
        r = await s.api.post(f"/v1/webhooks/{broken_hook['id']}/deliveries/{deliveries['items'][0]['id']}/replay",
                             headers=other_portal)
        assert r.status_code == 200

        # A correction is announced as release.corrected.
        run2 = await s.run(wave_id, shift=0.5)
        r = await s.api.post(f"/v1/releases/{release_id}/corrections", json={"reason": "Đính chính số liệu", "run_id": run2},
                             headers=s.ministry)
        assert r.status_code == 201, r.text
        await s.approve_and_publish(release_id, version=2)

        async def corrected():
            assert any(json.loads(x["body"])["event"] == "release.corrected" for x in flaky.successes)

        await eventually(corrected)
        # Unsubscribing stops deliveries.
        assert (await s.api.delete(f"/v1/webhooks/{hook['id']}", headers=portal)).status_code == 204
        assert (await s.api.get(f"/v1/webhooks/{hook['id']}", headers=portal)).json()["active"] is False


async def _webhook_urls_are_checked(s, clients):
    portal = await clients.key("portal", "01")
    for url in ("ftp://example.org/hook", "javascript:alert(1)", "http:///nohost", "https://user:pw@example.org/h"):
        r = await s.api.post("/v1/webhooks", json={"url": url}, headers=portal)
        assert r.status_code == 400, (url, r.text)
        assert r.json()["type"] == "urn:sipas:problem:bad-request"
    # Observers and province keys cannot subscribe.
    observer = await clients.key("observer")
    assert (await s.api.post("/v1/webhooks", json={"url": "https://example.org/h"}, headers=observer)).status_code == 403
    assert (await s.api.post("/v1/webhooks", json={"url": "https://example.org/h"})).status_code == 401

    # Production refuses loopback and private targets; test and local modes allow them.
    platform = s.app.state.settings.platform
    platform.environment = "production"
    try:
        for url in ("http://127.0.0.1:8080/h", "http://localhost/h", "http://10.1.2.3/h", "http://192.168.1.5/h",
                    "http://[::1]/h", "http://169.254.169.254/latest"):
            r = await s.api.post("/v1/webhooks", json={"url": url}, headers=portal)
            assert r.status_code == 400, (url, r.text)
        created = [await s.api.post("/v1/webhooks", json={"url": "https://portal.example.invalid/hook"}, headers=portal)]
    finally:
        platform.environment = "test"
    created.append(await s.api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/h"}, headers=portal))
    for r in created:
        assert r.status_code == 201, r.text
        assert (await s.api.delete(f"/v1/webhooks/{r.json()['id']}", headers=portal)).status_code == 204


def test_url_policy_unit():
    assert check_url("https://example.org/x", production=True)
    for url in ("http://127.0.0.1/", "http://172.16.0.1/"):
        try:
            check_url(url, production=True)
        except BadRequest:
            continue
        raise AssertionError(url)


async def test_a_replay_while_the_delivery_is_being_retried_or_already_replayed_is_a_409(stack, clients):
    s = Scenario(stack, clients)
    await s.keys()
    settings = s.app.state.settings
    settings.scheduler_poll_seconds = 0.05
    settings.webhook_retry_base_seconds = 3600  # after a failure the next attempt is an hour away
    settings.webhook_max_attempts = 3
    portal = await clients.key("portal", "01")
    receiver = Receiver([500])
    async with serve(receiver.app) as url:
        hook = (await s.api.post("/v1/webhooks", json={"url": f"{url}/hook"}, headers=portal)).json()
        await s.published_release()
        deliveries = f"/v1/webhooks/{hook['id']}/deliveries"

        async def failed_once():
            items = (await s.api.get(deliveries, headers=portal)).json()["items"]
            assert items and items[0]["attempts"] == 1, items
            return items[0]

        item = await eventually(failed_once)
        assert item["status"] == "pending" and item["next_attempt_at"] is not None
        # Still being retried automatically: a replay would race the retry.
        r = await s.api.post(f"{deliveries}/{item['id']}/replay", headers=portal)
        assert r.status_code == 409 and r.json()["type"] == "urn:sipas:problem:conflict"
        assert "still being retried" in r.json()["detail"]
        assert len(receiver.received) == 1

        # Once it has succeeded it can be replayed; two replays sent at once make one POST.
        async with s.app.state.sessions() as session:  # bring the hour-away retry forward
            d = s.app.state.tables["webhook_delivery"]
            await session.execute(update(d).where(d.c.id == item["id"]).values(next_attempt_at=s.app.state.clock()))
            await session.commit()

        async def delivered():
            got = (await s.api.get(deliveries, headers=portal)).json()["items"]
            assert got[0]["status"] == "delivered", got

        await eventually(delivered)
        receiver.gate = asyncio.Event()
        first = asyncio.create_task(s.api.post(f"{deliveries}/{item['id']}/replay", headers=portal))
        await asyncio.wait_for(receiver.arrived.wait(), 30)
        second = await s.api.post(f"{deliveries}/{item['id']}/replay", headers=portal)
        assert second.status_code == 409 and "already being sent" in second.json()["detail"]
        receiver.gate.set()
        assert (await first).status_code == 200
        log = (await s.api.get(deliveries, headers=portal)).json()["items"][0]["log"]
        assert [(a["status_code"], a["replay"]) for a in log] == [(500, False), (200, False), (200, True)]
        # The lease ended with the recorded attempt: the next replay goes through.
        receiver.gate = None
        assert (await s.api.post(f"{deliveries}/{item['id']}/replay", headers=portal)).status_code == 200
