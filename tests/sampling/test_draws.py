"""Designs and draws through the API: preview, reproducibility on both backends (a pinned hash),
verify, refusal to re-draw, the ministry's audited reset, multi-stage draws of resident frames,
supervision export."""

from __future__ import annotations

import pytest

from tests.sampling.helpers import (
    SEED,
    all_units,
    drawn_wave,
    open_wave,
    push,
    residents,
    sampling_events,
    transactions,
)

# The sample hash of helpers.drawn_wave's frame, design and seed. It is the same on SQLite and
# PostgreSQL and on any machine: if this changes, every published sample changes with it.
GOLDEN_HASH = "ecd87ddbe51d483989122501a62b5e43e28eed15833e5c7c11f0e7b918bd4e44"

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one service per module: conftest.py


async def test_draw_is_reproducible_verifiable_and_not_redrawn_without_an_audited_reset(clients, stack):
    ministry = await clients.key("ministry")
    observer = await clients.key("observer")
    got = await drawn_wave(clients, ministry)
    wave_id, drawn = got["wave"]["id"], got["draw"]
    assert drawn["sample_hash"] == GOLDEN_HASH

    # A second wave with the same frame and seed draws the same sample; another seed does not.
    same = await drawn_wave(clients, ministry, code="SIPAS-2026-B")
    assert same["draw"]["sample_hash"] == drawn["sample_hash"]
    assert same["draw"]["frame_fingerprint"] == drawn["frame_fingerprint"]
    other = await drawn_wave(clients, ministry, code="SIPAS-2026-C", seed=SEED + 1)
    assert other["draw"]["sample_hash"] != drawn["sample_hash"]
    a = {u["unit_id"] for u in await all_units(clients, ministry, wave_id)}
    assert not a & {u["unit_id"] for u in await all_units(clients, ministry, same["wave"]["id"])}  # ids are per draw

    # Observers verify with the seed they were given.
    r = await clients.sampling.post(f"/v1/waves/{wave_id}/draw/verify", json={"seed": SEED}, headers=observer)
    assert r.status_code == 200, r.text
    assert r.json()["matches"] is True and r.json()["sample_hash"] == GOLDEN_HASH
    r = await clients.sampling.post(f"/v1/waves/{wave_id}/draw/verify", json={"seed": SEED + 1}, headers=observer)
    assert r.json()["matches"] is False and r.json()["sample_hash"] == other["draw"]["sample_hash"]
    assert "seed" not in (await clients.sampling.get(f"/v1/waves/{wave_id}/draw", headers=observer)).json()

    # No second draw; only the ministry resets, with a reason, and that is audited.
    r = await clients.sampling.post(f"/v1/waves/{wave_id}/draw", headers=ministry)
    assert r.status_code == 409 and r.json()["type"] == "urn:sipas:problem:invalid-state"
    r = await clients.sampling.post(f"/v1/waves/{wave_id}/draw/reset", json={"reason": "frame error"}, headers=observer)
    assert r.status_code == 403
    r = await clients.sampling.post(f"/v1/waves/{wave_id}/draw/reset", json={"reason": "wrong strata"}, headers=ministry)
    assert r.status_code == 200 and r.json()["status"] == "frame_open", r.text
    assert (await clients.sampling.get(f"/v1/waves/{wave_id}/draw", headers=ministry)).status_code == 404
    r = await clients.sampling.post(f"/v1/waves/{wave_id}/draw", headers=ministry)
    assert r.status_code == 201 and r.json()["generation"] == 2 and r.json()["sample_hash"] == GOLDEN_HASH
    audit = (await clients.sampling.get(f"/v1/waves/{wave_id}/audit", params={"limit": 1000}, headers=observer)).json()
    resets = [e for e in audit["items"] if e["action"] == "sample.reset"]
    assert len(resets) == 1 and resets[0]["reason"] == "wrong strata" and resets[0]["role"] == "ministry"
    actions = [e["action"] for e in audit["items"]]
    for action in ("wave.create", "frame.batch", "frame.close", "design.set", "sample.draw"):
        assert action in actions
    drawn_events = await sampling_events(stack, "sipas.sampling.sample.drawn.v1", wave_id)
    assert len({e["data"]["draw_id"] for e in drawn_events}) == 2


async def test_design_preview_and_bad_designs(clients):
    ministry = await clients.key("ministry")
    wave = await open_wave(clients, ministry, code="SIPAS-2026-PREVIEW")
    records = transactions("01", 120) + transactions("79", 80)
    assert (await push(clients, ministry, wave["id"], "b", records)).status_code == 200
    url = f"/v1/waves/{wave['id']}/design/preview"
    r = await clients.sampling.post(url, json={"strata_by": ["province_code"], "total": 50}, headers=ministry)
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["frame_status"] == "open" and p["population"] == 200 and p["n"] == 50
    assert [(s["stratum"], s["n"], s["n_reserve"]) for s in p["strata"]] == [("01", 30, 15), ("79", 20, 10)]
    # From a margin: ±10 points at 95 % on 200 records, with the finite-population correction.
    r = await clients.sampling.post(url, json={"margin": 0.1, "allocation": "equal"}, headers=ministry)
    assert r.json()["n"] == 66 and [s["n"] for s in r.json()["strata"]] == [33, 33]
    r = await clients.sampling.post(url, json={"sizing": "per_stratum", "margin": 0.1}, headers=ministry)
    assert [s["n"] for s in r.json()["strata"]] == [54, 44]  # 96.04 / (1 + 95.04/N)
    r = await clients.sampling.post(url, json={"sizing": "fixed", "sizes": {"01": 10}, "minimum_per_stratum": 2},
                                    headers=ministry)
    assert [s["n"] for s in r.json()["strata"]] == [10, 2]
    # Sizes larger than the stratum or the frame, unknown strata: a clear 400, nothing stored.
    for bad in ({"sizing": "fixed", "sizes": {"79": 81}}, {"sizing": "fixed", "sizes": {"99": 1}}, {"total": 201},
                {"total": 10, "minimum_per_stratum": 6}):
        r = await clients.sampling.post(url, json=bad, headers=ministry)
        assert r.status_code == 400, (bad, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert (await clients.sampling.post(url, json={"method": "multi_stage"}, headers=ministry)).status_code == 422
    # A draw needs a closed frame and a design.
    r = await clients.sampling.post(f"/v1/waves/{wave['id']}/draw", headers=ministry)
    assert r.status_code == 409 and "Close the frame" in r.json()["detail"]


async def test_multi_stage_draw_of_a_resident_frame(clients, stack):
    ministry = await clients.key("ministry")
    wave = await open_wave(clients, ministry, code="SIPAS-2026-R", scope="provincial", province="01")
    frame = residents("01", villages_per_commune=5, people=20)
    r = await push(clients, ministry, wave["id"], "res", frame, kind="resident")
    assert r.json()["accepted"] == len(frame), r.text
    await clients.sampling.post(f"/v1/waves/{wave['id']}/frame/close", headers=ministry)
    design = {"method": "multi_stage", "strata_by": ["province_code"], "reserve_share": 0.5,
              "multi_stage": {"communes_per_stratum": 2, "villages_per_commune": 2, "people_per_village": 5}}
    province = await clients.key("province", "01")  # the province runs its own wave
    r = await clients.sampling.put(f"/v1/waves/{wave['id']}/design", json=design, headers=province)
    assert r.status_code == 200, r.text
    r = await clients.sampling.post(f"/v1/waves/{wave['id']}/draw", headers=province)
    assert r.status_code == 201, r.text
    drawn = r.json()
    assert drawn["n_sample"] == 2 * 2 * 5 and drawn["n_reserve"] == 2 * 2 * 3
    units = await all_units(clients, ministry, wave["id"])
    sample = [u for u in units if u["role"] == "sample"]
    assert len({u["psu"] for u in sample}) == 2 and len({u["ssu"] for u in sample}) == 4
    for u in sample:
        assert u["commune_code"] == u["psu"] and u["ssu"].startswith(u["psu"] + ":")
        assert abs(u["pi"] * u["weight"] - 1) < 1e-9
    # Self-weighting design: PPS at both stages and a fixed take give everyone about n/N.
    assert max(u["pi"] for u in sample) / min(u["pi"] for u in sample) < 1.5
    r = await clients.sampling.post(f"/v1/waves/{wave['id']}/draw/verify", json={"seed": SEED}, headers=province)
    assert r.json()["matches"] is True

    # A reserve replaces a unit of the same village.
    lost = sample[0]
    r = await clients.sampling.post(f"/v1/waves/{wave['id']}/replacements",
                                    json={"unit_id": lost["unit_id"], "reason": "moved"}, headers=province)
    assert r.status_code == 200, r.text
    rep = r.json()["replacement"]
    assert rep["ssu"] == lost["ssu"] and rep["order"] == 1 and rep["status"] == "released"
    event = (await sampling_events(stack, "sipas.sampling.unit.replaced.v1", wave["id"]))[-1]["data"]
    assert event["replacement"]["unit_id"] == rep["unit_id"] and event["reason"] == "moved"
