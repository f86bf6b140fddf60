"""Administrative units as data: the 2025 map seeded from vietnam-provinces, older maps and the
old→new crosswalk imported through the API."""

from __future__ import annotations

import pytest

OLD_MAP = {
    "unit_set": "vn-2008",
    "valid_from": "2008-08-01",
    "valid_to": "2025-06-30",
    "units": [
        {"level": "province", "code": "01", "name": "Thành phố Hà Nội"},
        {"level": "province", "code": "28", "name": "Tỉnh Hà Tây"},
        {"level": "district", "code": "001", "name": "Quận Ba Đình", "parent_code": "01"},
        {"level": "commune", "code": "00001", "name": "Phường Phúc Xá", "parent_code": "001"},
        {"level": "commune", "code": "00004", "name": "Phường Trúc Bạch", "parent_code": "001"},
    ],
}

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one service per module: conftest.py


async def test_current_map_is_seeded_and_older_maps_import(clients):
    ministry = await clients.key("ministry")
    r = await clients.sampling.get("/v1/unit-sets", headers=ministry)
    sets = {s["unit_set"]: s["counts"] for s in r.json()}
    assert sets["vn-2025"] == {"province": 34, "commune": 3321}
    r = await clients.sampling.get("/v1/units", params={"level": "province", "limit": 100}, headers=ministry)
    names = {u["code"]: u["name"] for u in r.json()["items"]}
    assert names["01"] == "Thành phố Hà Nội" and r.json()["items"][0]["valid_from"] == "2025-07-01"

    r = await clients.sampling.post("/v1/units/import", json=OLD_MAP, headers=ministry)
    assert r.status_code == 200, r.text
    assert r.json() == {"unit_set": "vn-2008", "received": 5, "added": 5}
    assert (await clients.sampling.post("/v1/units/import", json=OLD_MAP, headers=ministry)).json()["added"] == 0
    r = await clients.sampling.get("/v1/units", params={"unit_set": "vn-2008", "level": "commune"}, headers=ministry)
    assert {u["province_code"] for u in r.json()["items"]} == {"01"}

    links = {"from_set": "vn-2008", "to_set": "vn-2025", "links": [
        {"from_level": "commune", "from_code": "00001", "to_level": "commune", "to_code": "00004"},
        {"from_level": "commune", "from_code": "00004", "to_level": "commune", "to_code": "00004"},
        {"from_level": "province", "from_code": "28", "to_level": "province", "to_code": "01"},
    ]}
    r = await clients.sampling.post("/v1/crosswalk", json=links, headers=ministry)
    assert r.status_code == 200 and r.json()["added"] == 3, r.text
    r = await clients.sampling.get("/v1/crosswalk", params={"from_set": "vn-2008", "from_code": "28"}, headers=ministry)
    assert [(x["to_level"], x["to_code"]) for x in r.json()["items"]] == [("province", "01")]

    # Bad input: a link to a unit that does not exist, a unit with no province, the package map.
    bad = {**links, "links": [{"from_level": "commune", "from_code": "77777", "to_level": "commune", "to_code": "00004"}]}
    r = await clients.sampling.post("/v1/crosswalk", json=bad, headers=ministry)
    assert r.status_code == 400 and r.json()["unknown"] == ["vn-2008 commune 77777"]
    orphan = {**OLD_MAP, "unit_set": "vn-x", "units": [{"level": "commune", "code": "00009", "name": "Xã A"}]}
    assert (await clients.sampling.post("/v1/units/import", json=orphan, headers=ministry)).status_code == 400
    assert (await clients.sampling.post("/v1/units/import", json={**OLD_MAP, "unit_set": "vn-2025"},
                                        headers=ministry)).status_code == 400
    province = await clients.key("province", "01")
    assert (await clients.sampling.post("/v1/units/import", json=OLD_MAP, headers=province)).status_code == 403

    await check_a_wave_on_an_older_map_checks_frames_against_it(clients, ministry)


async def check_a_wave_on_an_older_map_checks_frames_against_it(clients, ministry):
    body = {"code": "SIPAS-2024", "name": "SIPAS 2024", "scope": "national", "year": 2024,
            "methodology_version": "sipas-2023", "unit_set": "vn-2008"}
    wave = (await clients.sampling.post("/v1/waves", json=body, headers=ministry)).json()
    await clients.sampling.patch(f"/v1/waves/{wave['id']}", json={"status": "frame_open"}, headers=ministry)
    records = [{"person_id": "p1", "province_code": "28", "commune_code": "00001", "village_code": "T1"},
               {"person_id": "p2", "province_code": "01", "commune_code": "00001", "village_code": "T1"}]
    r = await clients.sampling.post(f"/v1/waves/{wave['id']}/frame/batches",
                                    json={"batch_id": "old", "kind": "resident", "records": records}, headers=ministry)
    report = r.json()
    assert report["accepted"] == 1 and report["errors"][0]["record_key"] == "p1"
    assert "belongs to province 01" in report["errors"][0]["problems"][0]
