"""The core flow other services depend on: frame → design → draw → sample.drawn, replacements
from survey's events → unit.replaced, contacts for Vietnam Post and the provinces."""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict

import pytest

from shared.contracts.survey import ReplacementRequested
from shared.events import make_event
from tests.conftest import eventually
from tests.sampling.helpers import all_units, drawn_wave, sampling_events

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one service per module: conftest.py


async def test_draw_stores_sample_and_reserves_and_announces_them(clients, stack):
    ministry = await clients.key("ministry")
    got = await drawn_wave(clients, ministry)
    wave, drawn = got["wave"], got["draw"]
    assert drawn["n_sample"] == 60
    # Reserve lists: ceil(50 % of each stratum's sample), drawn with it.
    assert drawn["n_reserve"] == sum(-(-s["n"] // 2) for s in drawn["strata"]) >= 30
    assert len(drawn["sample_hash"]) == 64 and len(drawn["frame_fingerprint"]) == 64

    r = await clients.sampling.get(f"/v1/waves/{wave['id']}", headers=ministry)
    assert r.json()["status"] == "sampled"

    units = await all_units(clients, ministry, wave["id"])
    sample = [u for u in units if u["role"] == "sample"]
    assert len(sample) == 60
    # Inclusion probabilities sum (over the frame) to each stratum's sample size; weights are 1/π.
    by_stratum = defaultdict(list)
    for u in sample:
        by_stratum[u["stratum"]].append(u)
    populations = {s["stratum"]: s for s in drawn["strata"]}
    for key, members in by_stratum.items():
        s = populations[key]
        assert len(members) == s["n"]
        # Every frame unit of the stratum has the same π = n/N, so Σπ over the frame is n.
        assert {u["pi"] for u in members} == {s["n"] / s["population"]}
        assert abs(members[0]["pi"] * s["population"] - s["n"]) < 1e-9
        for u in members:
            assert abs(u["weight"] * u["pi"] - 1) < 1e-12
    assert sum(s["population"] for s in drawn["strata"]) == 500

    # sample.drawn: the sampled units only, no contacts, every chunk of the draw.
    events = await sampling_events(stack, "sipas.sampling.sample.drawn.v1", wave["id"])
    assert {e["data"]["chunks"] for e in events} == {len(events)}
    announced = [u for e in events for u in e["data"]["units"]]
    assert sorted(u["unit_id"] for u in announced) == sorted(u["unit_id"] for u in sample)
    assert all(u["role"] == "sample" for u in announced)
    text = str(events)
    assert "Nguyễn" not in text and "full_name" not in text and "phone" not in text

    await check_contacts_for_vnpost_and_own_province_only(clients, ministry, wave["id"])
    await check_observers_download_the_lists_without_contacts(clients, ministry, got)


async def test_replacement_requested_releases_reserves_in_order_then_reports_exhaustion(clients, stack):
    ministry = await clients.key("ministry")
    got = await drawn_wave(clients, ministry, code="SIPAS-2026-REPL")
    wave_id = got["wave"]["id"]
    units = await all_units(clients, ministry, wave_id)
    # The smallest stratum: its reserve list runs out first.
    sizes = {s["stratum"]: s for s in got["draw"]["strata"]}
    stratum = min((s for s in sizes.values() if s["n"]), key=lambda s: (s["n_reserve"], s["stratum"]))["stratum"]
    sample = [u for u in units if u["stratum"] == stratum and u["role"] == "sample"]
    reserve = sorted((u for u in units if u["stratum"] == stratum and u["role"] == "reserve"), key=lambda u: u["order"])
    assert [u["order"] for u in reserve] == list(range(1, len(reserve) + 1))
    lost = sample[: len(reserve) + 1]

    for i, unit in enumerate(lost):
        event = make_event(ReplacementRequested(wave_id=wave_id, form_code=f"F{i}", unit_id=unit["unit_id"],
                                                reason="refused"))
        await stack.bus.publish(event)
        await stack.bus.publish(event)  # redelivered: one effect

    async def all_handled():
        events = await sampling_events(stack, "sipas.sampling.unit.replaced.v1", wave_id)
        assert len(events) == len(lost)
        return events
    events = await eventually(all_handled, timeout=20)
    by_unit = {e["data"]["replaced_unit_id"]: e["data"] for e in events}
    released = [by_unit[u["unit_id"]]["replacement"] for u in lost]
    # Reserves are released in their list order (whatever order the requests were handled in).
    assert sorted(r["order"] for r in released if r) == [u["order"] for u in reserve]
    assert sorted(r["unit_id"] for r in released if r) == sorted(u["unit_id"] for u in reserve)
    assert sum(1 for d in by_unit.values() if d["reserve_exhausted"]) == 1
    assert all(r is None or (r["role"] == "reserve" and r["stratum"] == stratum) for r in released)

    r = await clients.sampling.get(f"/v1/waves/{wave_id}/reserves", params={"exhausted": True}, headers=ministry)
    assert r.status_code == 200
    assert [g["stratum"] for g in r.json()["groups"]] == [stratum]
    assert r.json()["groups"][0]["unreplaced"] == 1
    metrics = (await clients.sampling.get("/metrics")).text
    assert f'sipas_sampling_reserve_exhausted_groups{{service="sampling",wave="{wave_id}"}} 1.0' in metrics

    # A replaced unit asked again: nothing changes, the answer says what happened.
    r = await clients.sampling.post(f"/v1/waves/{wave_id}/replacements",
                                    json={"unit_id": lost[0]["unit_id"], "reason": "moved"}, headers=ministry)
    assert r.status_code == 200, r.text
    assert r.json()["already_handled"] is True and r.json()["reason"] == "refused"
    assert len(await sampling_events(stack, "sipas.sampling.unit.replaced.v1", wave_id)) == len(lost)


async def check_contacts_for_vnpost_and_own_province_only(clients, ministry, wave_id):
    units = await all_units(clients, ministry, wave_id, role="sample")
    vnpost = await clients.key("vnpost")
    r = await clients.sampling.get(f"/v1/waves/{wave_id}/contacts", headers=vnpost)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 60 and len(page["items"]) == 60
    assert all(c["full_name"].startswith("Nguyễn Văn") and c["phone"] for c in page["items"])

    hanoi = await clients.key("province", "01")
    r = await clients.sampling.get(f"/v1/waves/{wave_id}/contacts", headers=hanoi)
    assert r.status_code == 200
    assert {c["province_code"] for c in r.json()["items"]} == {"01"}
    other = [u["unit_id"] for u in units if u["province_code"] == "79"][:2]
    mine = [u["unit_id"] for u in units if u["province_code"] == "01"][:2]
    r = await clients.sampling.get(f"/v1/waves/{wave_id}/contacts", params={"unit_id": other + mine}, headers=hanoi)
    assert sorted(c["unit_id"] for c in r.json()["items"]) == sorted(mine)
    assert sorted(r.json()["not_available"]) == sorted(other)
    # Waiting reserves have no contact to give yet.
    reserve = [u["unit_id"] for u in await all_units(clients, ministry, wave_id, role="reserve")][:1]
    r = await clients.sampling.get(f"/v1/waves/{wave_id}/contacts", params={"unit_id": reserve}, headers=vnpost)
    assert r.json()["items"] == [] and r.json()["not_available"] == reserve

    for role, province in (("observer", None), ("portal", "01")):
        key = await clients.key(role, province)
        r = await clients.sampling.get(f"/v1/waves/{wave_id}/contacts", headers=key)
        assert r.status_code == 403
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await clients.sampling.get(f"/v1/waves/{uuid.uuid4()}/contacts", headers=vnpost)
    assert r.status_code == 404

    audit = (await clients.sampling.get(f"/v1/waves/{wave_id}/audit", params={"limit": 1000}, headers=ministry)).json()
    reads = [e for e in audit["items"] if e["action"] == "contacts.read"]
    assert len(reads) >= 4 and all("Nguyễn" not in str(e) for e in reads)


async def check_observers_download_the_lists_without_contacts(clients, ministry, got):
    wave_id = got["wave"]["id"]
    observer = await clients.key("observer")
    r = await clients.sampling.get(f"/v1/waves/{wave_id}/sample.csv", headers=observer)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    text = r.content.decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == got["draw"]["n_sample"] + got["draw"]["n_reserve"]
    assert "full_name" not in rows[0] and "Nguyễn" not in text
    assert (await clients.sampling.get(f"/v1/waves/{wave_id}/sample.csv", params={"contacts": True},
                                       headers=observer)).status_code == 403
    r = await clients.sampling.get(f"/v1/waves/{wave_id}/sample.csv", params={"contacts": True, "role": "sample"},
                                   headers=ministry)
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert len(rows) == 60 and all(row["full_name"].startswith("Nguyễn Văn") for row in rows)
    # A province sees its own province's units only.
    hcm = await clients.key("province", "79")
    units = await all_units(clients, hcm, wave_id)
    assert units and {u["province_code"] for u in units} == {"79"}
