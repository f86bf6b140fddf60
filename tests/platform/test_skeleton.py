"""The walking skeleton: a wave created in sampling reaches the four other services."""

from __future__ import annotations

from services.sampling.models import Wave
from tests.conftest import eventually

WAVE = {
    "code": "SIPAS-2026",
    "name": "SIPAS 2026",
    "scope": "national",
    "year": 2026,
    "methodology_version": "sipas-2017",
    "fieldwork_start": "2026-08-01",
    "fieldwork_end": "2026-10-31",
}


async def test_wave_created_in_sampling_reaches_every_service(clients):
    ministry = await clients.key("ministry")
    r = await clients.sampling.post("/v1/waves", json=WAVE, headers=ministry)
    assert r.status_code == 201, r.text
    wave = r.json()
    correlation = r.headers["X-Correlation-ID"]

    for name in ("survey", "verification", "indexing", "publication"):
        client = getattr(clients, name)

        async def seen(client=client):
            got = await client.get(f"/v1/waves/{wave['id']}", headers=ministry)
            assert got.status_code == 200, got.text
            return got.json()

        replica = await eventually(seen)
        assert replica["code"] == "SIPAS-2026"
        assert replica["status"] == "draft"
        assert replica["fieldwork_end"] == "2026-10-31"

    # An update flows the same way and replaces the replica's state.
    r = await clients.sampling.patch(
        f"/v1/waves/{wave['id']}", json={"status": "frame_open", "reason": "frames expected"}, headers=ministry
    )
    assert r.status_code == 200, r.text

    async def updated():
        got = (await clients.publication.get(f"/v1/waves/{wave['id']}", headers=ministry)).json()
        assert got["status"] == "frame_open"

    await eventually(updated)

    # The audit log has both changes, with the correlation id of the creating request.
    audit = (await clients.sampling.get(f"/v1/waves/{wave['id']}/audit", headers=ministry)).json()["items"]
    assert [e["action"] for e in audit] == ["wave.create", "wave.update"]
    assert audit[0]["correlation_id"] == correlation
    assert audit[1]["reason"] == "frames expected"


async def test_the_seed_never_leaves_sampling(clients, stack):
    ministry = await clients.key("ministry")
    r = await clients.sampling.post("/v1/waves", json={**WAVE, "seed": 12345}, headers=ministry)
    assert r.status_code == 201
    assert "seed" not in r.json()
    async with stack.apps["sampling"].state.sessions() as session:
        stored = await session.get(Wave, r.json()["id"])
    assert stored.seed == 12345
