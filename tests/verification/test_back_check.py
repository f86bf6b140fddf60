"""Back-checks (phúc tra): the seeded draw, outcomes, escalation of a fraudulent enumerator,
voiding of denied forms, contacts read from sampling with the caller's key, bad input."""

from __future__ import annotations

import datetime as dt
import uuid
from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import eventually
from tests.verification.helpers import Wave, accepted_set, decisions, good_answers, methodology

# One stack per module (tests/verification/conftest.py): tests share its event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _collected_wave(stack, clients, ministry, per_enumerator: dict[str, int], province: str = "01"):
    wave = Wave(stack, clients)
    await wave.create()
    m = await methodology(stack)
    units = {e: [wave.new_unit(province) for _ in range(n)] for e, n in per_enumerator.items()}
    await wave.draw([u for us in units.values() for u in us])
    for e, us in units.items():
        for i, u in enumerate(us):
            await wave.status(u, "dispatched", enumerator=e)
            await wave.submit(u, good_answers(m, i), enumerator=e)
    total = sum(per_enumerator.values())

    async def all_accepted():
        r = await clients.verification.get(f"/v1/waves/{wave.wave_id}/forms?published=accepted", headers=ministry)
        assert r.json()["total"] == total

    await eventually(all_accepted)
    return wave, units


async def _draw(clients, wave, headers, province="01", seed=20260901):
    r = await clients.verification.post(f"/v1/waves/{wave.wave_id}/back-check-draws",
                                        json={"province_code": province, "seed": seed}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def _list(clients, wave, headers, **params):
    r = await clients.verification.get(f"/v1/waves/{wave.wave_id}/back-checks", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def _outcome(clients, wave, code, headers, outcome, **extra):
    return await clients.verification.post(f"/v1/waves/{wave.wave_id}/back-checks/{code}/outcome",
                                           json={"outcome": outcome, **extra}, headers=headers)


async def test_fraudulent_enumerator_gets_full_back_check_and_denied_forms_are_voided(stack, clients):
    ministry = await clients.key("ministry")
    team = await clients.key("province", "01")
    observer = await clients.key("observer")
    wave, units = await _collected_wave(stack, clients, ministry, {"E1": 8, "E2": 8})
    draw = await _draw(clients, wave, team)
    assert (draw["population"], draw["selected"], draw["share"], draw["min_per_enumerator"]) == (16, 4, 0.1, 2)

    listed = (await _list(clients, wave, team, with_contacts=False))["items"]
    assert {i["enumerator_id"] for i in listed} == {"E1", "E2"} and len(listed) == 4
    honest = [i["form_code"] for i in listed if i["enumerator_id"] == "E1"]
    fraud = [i["form_code"] for i in listed if i["enumerator_id"] == "E2"]
    for code in honest:
        assert (await _outcome(clients, wave, code, team, "confirmed")).status_code == 200

    # The first denial of E2: 1 denied of 1 reached > 20% → every form of E2 is back-checked.
    r = await _outcome(clients, wave, fraud[0], observer, "denied", note="never received a form")
    assert r.status_code == 200, r.text
    assert r.json()["voided"] is True and r.json()["enumerator_escalated"] is True
    after = (await _list(clients, wave, team, with_contacts=False))["items"]
    e2_codes = {wave.form_code(u) for u in units["E2"]}
    assert {i["form_code"] for i in after if i["enumerator_id"] == "E2"} == e2_codes
    assert {i["selected_by"] for i in after if i["form_code"] in e2_codes - set(fraud)} == {"escalation"}
    assert len([i for i in after if i["enumerator_id"] == "E1"]) == 2  # the honest one is untouched

    # The team goes through E2's forms: five more denied, one not reached, one differs.
    rest = sorted(e2_codes - {fraud[0]})
    for code in rest[:5]:
        r = await _outcome(clients, wave, code, team, "denied")
        assert r.status_code == 200 and r.json()["voided"] is True and r.json()["enumerator_escalated"] is False
    assert (await _outcome(clients, wave, rest[5], team, "not_reached")).status_code == 200
    r = await _outcome(clients, wave, rest[6], team, "answers_differ", items=["q1"])
    assert r.status_code == 200 and r.json()["back_check"]["differing_items"] == ["q1"]

    denied = {fraud[0], *rest[:5]}
    events = await decisions(stack, wave.wave_id)
    accepted = accepted_set(events)
    assert not denied & accepted
    assert accepted == {wave.form_code(u) for us in units.values() for u in us} - denied
    voided = [e for e in events if e["type"] == "rejected"]
    assert {e["form_code"] for e in voided} == denied
    assert all(e["reverses"] and e["reasons"] == ["back_check_denied"] and e["decision_version"] == 2 for e in voided)
    f = await wave.form(fraud[0], ministry)
    assert f["form"]["voided"] is True and f["form"]["state"] == "rejected"
    # A voided form cannot be accepted again by a reviewer.
    r = await clients.verification.post(f"/v1/waves/{wave.wave_id}/forms/{fraud[0]}/review",
                                        json={"action": "accept", "reason": "try"}, headers=ministry)
    assert r.status_code == 409

    quality = (await clients.verification.get(f"/v1/waves/{wave.wave_id}/quality?by=enumerator",
                                              headers=ministry)).json()["rows"]
    by = {row["key"]: row for row in quality}
    assert (by["E2"]["back_checked"], by["E2"]["denied"], by["E2"]["valid"]) == (8, 6, 2)
    assert by["E2"]["rejected_by_reason"] == {"back_check_denied": 6}
    assert (by["E1"]["back_checked"], by["E1"]["denied"], by["E1"]["valid"], by["E1"]["dispatched"]) == (2, 0, 8, 8)
    csv = await clients.verification.get(f"/v1/waves/{wave.wave_id}/quality?by=enumerator&format=csv",
                                         headers=observer)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("key,dispatched,returned,valid,rejected")
    assert "E2,8,8,2,6,0,0,8,6,back_check_denied=6" in csv.text
    prom = await clients.verification.get(f"/v1/waves/{wave.wave_id}/quality/metrics", headers=ministry)
    assert f'sipas_verification_forms{{wave="{wave.wave_id}",province="01",measure="denied"}} 6' in prom.text

    audit = (await clients.verification.get(f"/v1/waves/{wave.wave_id}/audit?limit=1000", headers=observer)).json()
    actions = [e["action"] for e in audit["items"]]
    assert actions.count("back_check.escalate") == 1 and actions.count("back_check.draw") == 1


async def test_back_check_bad_input(stack, clients):
    ministry = await clients.key("ministry")
    team = await clients.key("province", "01")
    other = await clients.key("province", "79")
    wave, units = await _collected_wave(stack, clients, ministry, {"E1": 3})
    await _draw(clients, wave, team, seed=7)
    again = await clients.verification.post(f"/v1/waves/{wave.wave_id}/back-check-draws",
                                            json={"province_code": "01"}, headers=ministry)
    assert again.status_code == 409 and again.json()["seed"] == 7
    r = await clients.verification.post(f"/v1/waves/{wave.wave_id}/back-check-draws",
                                        json={"province_code": "79"}, headers=team)
    assert r.status_code == 404  # another province
    listed = (await _list(clients, wave, team, with_contacts=False))["items"]
    on_list = {i["form_code"] for i in listed}
    off_list = sorted({wave.form_code(u) for u in units["E1"]} - on_list)[0]

    r = await _outcome(clients, wave, off_list, team, "confirmed")
    assert r.status_code == 409 and r.json()["type"] == "urn:sipas:problem:invalid-state"
    code = sorted(on_list)[0]
    r = await _outcome(clients, wave, code, other, "denied")
    assert r.status_code == 404
    assert (await _list(clients, wave, other, with_contacts=False))["total"] == 0
    r = await clients.verification.get(f"/v1/waves/{wave.wave_id}/back-checks?province_code=01", headers=other)
    assert r.status_code == 404
    r = await _outcome(clients, wave, code, team, "answers_differ")
    assert r.status_code == 422  # which items differ?
    r = await _outcome(clients, wave, code, team, "maybe")
    assert r.status_code == 422
    r = await _outcome(clients, wave, "NOPE", team, "confirmed")
    assert r.status_code == 404
    assert (await _outcome(clients, wave, code, team, "confirmed")).status_code == 200
    dup = await _outcome(clients, wave, code, team, "denied")
    assert dup.status_code == 409 and dup.json()["outcome"] == "confirmed"  # the first outcome is kept
    second = sorted(on_list)[1]
    await wave.set_status("closed")
    r = await _outcome(clients, wave, second, team, "denied")
    assert r.status_code == 409 and "closed" in r.json()["detail"]
    f = await wave.form(second, ministry)
    assert f["form"]["voided"] is False and f["form"]["published"] == "accepted"


async def test_back_check_contacts_come_from_the_real_sampling_service_for_the_team_province_only(stack, clients):
    """The whole path with no stand-in: sampling draws a real frame with contacts, survey makes the
    forms, respondents answer online, verification accepts them; the provincial team's back-check
    list then carries the contacts sampling gives to that team's key (own province only), and
    nothing about units of another province."""
    from tests.sampling.helpers import drawn_wave
    from tests.survey.helpers import full_answers

    ministry = await clients.key("ministry")
    team = await clients.key("province", "01")
    drawn = await drawn_wave(clients, ministry, code=f"BC-{uuid.uuid4().hex[:6]}",
                             design={"strata_by": ["province_code"], "total": 8, "allocation": "equal",
                                     "reserve_share": 0.0})
    wave_id, wave_code = drawn["wave"]["id"], drawn["wave"]["code"]
    real = SimpleNamespace(wave_id=wave_id)
    r = await clients.sampling.patch(f"/v1/waves/{wave_id}", json={"status": "in_field"}, headers=ministry)
    assert r.status_code == 200, r.text

    forms: list[dict] = []

    async def forms_made():
        r = await clients.survey.get("/v1/forms", params={"wave_id": wave_id, "limit": 100}, headers=ministry)
        assert r.status_code == 200 and r.json()["total"] == 8, r.text
        forms[:] = r.json()["items"]

    await eventually(forms_made)
    started = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=12)).isoformat()
    for i, f in enumerate(forms):
        answers = full_answers()
        for j, code in enumerate(sorted(k for k, v in answers.items() if isinstance(v, int))):
            answers[code] = 2 + (i + j) % 4  # varied: not straight-lining
        r = await clients.survey.post(f"/v1/online/forms/{f['form_code']}/response", params={"wave": wave_code},
                                      json={"answers": answers, "started_at": started},
                                      headers={"X-Forwarded-For": f"10.9.0.{i + 1}"})
        assert r.status_code == 201, r.text

    async def accepted():
        r = await clients.verification.get(f"/v1/waves/{wave_id}/forms", params={"published": "accepted"},
                                           headers=ministry)
        assert r.json()["total"] == 8, r.text

    await eventually(accepted, timeout=20)
    await _draw(clients, real, team, province="01")
    page = await _list(clients, real, team)
    assert page["contacts_unavailable"] is None and page["items"], page
    own_units = {f["unit_id"] for f in forms if f["province_code"] == "01"}
    r = await clients.sampling.get(f"/v1/waves/{wave_id}/contacts", params=[("unit_id", u) for u in sorted(own_units)],
                                   headers=ministry)
    truth = {c["unit_id"]: c for c in r.json()["items"]}
    for item in page["items"]:
        assert item["unit_id"] in own_units
        expected = truth[item["unit_id"]]
        assert item["contact"] == {k: expected[k] for k in ("full_name", "phone", "address")}
        assert item["contact"]["full_name"].startswith("Nguyễn Văn")  # Vietnamese text round-trips
    # A form with an outcome no longer needs contacts: they are not read again for it.
    code = page["items"][0]["form_code"]
    assert (await _outcome(clients, real, code, team, "confirmed")).status_code == 200
    page = await _list(clients, real, team)
    assert [i["contact"] is None for i in page["items"] if i["form_code"] == code] == [True]
    assert all(i["contact"] for i in page["items"] if i["form_code"] != code)


async def test_back_check_list_without_contacts_says_why(stack, clients):
    ministry = await clients.key("ministry")
    observer = await clients.key("observer")
    wave, _ = await _collected_wave(stack, clients, ministry, {"E1": 2})
    await _draw(clients, wave, ministry)
    # Sampling gives no contacts to observers (or does not serve them yet): the list still comes.
    page = await _list(clients, wave, observer)
    assert len(page["items"]) == 2 and page["contacts_unavailable"]
    assert all(i["contact"] is None for i in page["items"])
    # Sampling unreachable: the same, with the reason.
    app = stack.apps["verification"]
    original = app.state.peers["sampling"]
    down = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: (_ for _ in ()).throw(
        httpx.ConnectError("down"))), base_url="http://sampling")
    app.state.peers["sampling"] = down
    try:
        page = await _list(clients, wave, ministry)
        assert "unavailable" in page["contacts_unavailable"] and len(page["items"]) == 2
    finally:
        await down.aclose()
        app.state.peers["sampling"] = original


async def test_two_concurrent_outcomes_for_one_form_one_wins_the_other_is_a_conflict(stack, clients):
    import asyncio

    ministry = await clients.key("ministry")
    team = await clients.key("province", "01")
    observer = await clients.key("observer")
    wave, _ = await _collected_wave(stack, clients, ministry, {"E1": 2})
    await _draw(clients, wave, team)
    code = (await _list(clients, wave, team, with_contacts=False))["items"][0]["form_code"]
    a, b = await asyncio.gather(_outcome(clients, wave, code, team, "confirmed"),
                                _outcome(clients, wave, code, observer, "denied"))
    assert sorted([a.status_code, b.status_code]) == [200, 409], (a.text, b.text)
    winner = a if a.status_code == 200 else b
    item = [i for i in (await _list(clients, wave, team, with_contacts=False))["items"] if i["form_code"] == code][0]
    assert item["outcome"] == winner.json()["back_check"]["outcome"]
    f = await wave.form(code, ministry)
    assert f["form"]["voided"] is (item["outcome"] == "denied")


async def test_concurrent_denials_of_one_enumerators_forms_escalate_once_and_void_each(stack, clients):
    """Teams record outcomes in parallel. Denials of one enumerator's forms arriving at once each
    may escalate that enumerator; on PostgreSQL they once deadlocked (a 500). They must all be
    recorded, the enumerator escalated exactly once, and every denied form voided."""
    import asyncio

    ministry = await clients.key("ministry")
    team = await clients.key("province", "01")
    wave, units = await _collected_wave(stack, clients, ministry, {"E7": 10})
    await _draw(clients, wave, team)
    first = [i["form_code"] for i in (await _list(clients, wave, team, with_contacts=False))["items"]]
    assert len(first) >= 2
    results = await asyncio.gather(*(_outcome(clients, wave, code, team, "denied") for code in first))
    assert [r.status_code for r in results] == [200] * len(first), [r.text for r in results]
    assert sum(r.json()["enumerator_escalated"] for r in results) == 1
    # Then the whole escalated list, all at once again.
    rest = [i["form_code"] for i in (await _list(clients, wave, team, with_contacts=False))["items"]
            if i["outcome"] is None]
    assert len(rest) == 10 - len(first)
    results = await asyncio.gather(*(_outcome(clients, wave, code, team, "denied") for code in rest))
    assert [r.status_code for r in results] == [200] * len(rest), [r.text for r in results]
    accepted = accepted_set(await decisions(stack, wave.wave_id))
    assert not accepted & {wave.form_code(u) for u in units["E7"]}
    audit = (await clients.verification.get(f"/v1/waves/{wave.wave_id}/audit?limit=1000", headers=ministry)).json()
    assert [e["action"] for e in audit["items"]].count("back_check.escalate") == 1
