"""API keys, roles and province scope, on every service."""

from __future__ import annotations

import pytest

from shared.settings import SERVICES

PROBLEM = "application/problem+json"


def provincial_wave(province: str, code: str) -> dict:
    return {"code": code, "name": f"Đợt {code}", "scope": "provincial", "province_code": province,
            "year": 2026, "methodology_version": "sipas-2023"}


@pytest.mark.parametrize("service", SERVICES)
async def test_missing_or_invalid_key_is_401_problem(clients, service):
    client = getattr(clients, service)
    for headers in ({}, {"X-API-Key": "sipas_000000000000_nope"}, {"X-API-Key": "garbage"}):
        r = await client.get("/v1/waves", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["type"] == "urn:sipas:problem:unauthorized"
        assert r.headers["WWW-Authenticate"] == "ApiKey"


async def test_revoked_key_is_refused(clients, stack):
    from shared.auth import revoke_key

    headers = await clients.key("ministry")
    assert (await clients.sampling.get("/v1/waves", headers=headers)).status_code == 200
    prefix = headers["X-API-Key"].split("_")[1]
    app = stack.apps["sampling"]
    async with app.state.sessions() as session, session.begin():
        assert await revoke_key(session, app.state.tables["api_key"], prefix)
    assert (await clients.sampling.get("/v1/waves", headers=headers)).status_code == 401


async def test_wrong_role_is_403(clients):
    for role in ("observer", "vnpost", "portal"):
        headers = await clients.key(role, province="01" if role == "portal" else None)
        r = await clients.sampling.post("/v1/waves", json=provincial_wave("01", f"W-{role}"), headers=headers)
        assert r.status_code == 403, (role, r.text)
        assert r.json()["type"] == "urn:sipas:problem:forbidden"


async def test_only_the_ministry_creates_national_waves(clients):
    province = await clients.key("province", province="01")
    national = {"code": "SIPAS-2026", "name": "SIPAS 2026", "scope": "national", "year": 2026,
                "methodology_version": "sipas-2017"}
    r = await clients.sampling.post("/v1/waves", json=national, headers=province)
    assert r.status_code == 403


async def test_a_province_key_never_sees_another_province(clients):
    ministry = await clients.key("ministry")
    hanoi = await clients.key("province", province="01")
    hue = await clients.key("province", province="46")

    # A province creates its own wave, not another's (404: it may not even learn it exists).
    assert (await clients.sampling.post("/v1/waves", json=provincial_wave("46", "HUE-X"), headers=hanoi)).status_code == 404
    r = await clients.sampling.post("/v1/waves", json=provincial_wave("46", "HUE-2026"), headers=hue)
    assert r.status_code == 201, r.text
    hue_wave = r.json()["id"]
    r = await clients.sampling.post("/v1/waves", json=provincial_wave("01", "HN-2026"), headers=hanoi)
    hanoi_wave = r.json()["id"]

    assert (await clients.sampling.get(f"/v1/waves/{hue_wave}", headers=hanoi)).status_code == 404
    assert (await clients.sampling.patch(f"/v1/waves/{hue_wave}", json={"name": "x"}, headers=hanoi)).status_code == 404
    assert (await clients.sampling.get(f"/v1/waves/{hue_wave}/audit", headers=hanoi)).status_code == 404
    listed = (await clients.sampling.get("/v1/waves", headers=hanoi)).json()
    assert [w["id"] for w in listed["items"]] == [hanoi_wave]
    # The ministry sees both; so does each downstream replica, with the same scoping.
    assert (await clients.sampling.get("/v1/waves", headers=ministry)).json()["total"] == 2

    from tests.conftest import eventually

    async def replicated():
        assert (await clients.survey.get(f"/v1/waves/{hue_wave}", headers=hue)).status_code == 200

    await eventually(replicated)
    assert (await clients.survey.get(f"/v1/waves/{hue_wave}", headers=hanoi)).status_code == 404
    survey_list = (await clients.survey.get("/v1/waves", headers=hanoi)).json()
    assert hue_wave not in [w["id"] for w in survey_list["items"]]
