"""Screening rules on responses from survey, decisions announced to indexing, idempotency."""

from __future__ import annotations

import pytest

import uuid

from tests.conftest import eventually
from tests.verification.helpers import Wave, accepted_set, decisions, good_answers, methodology

# One stack per module (tests/verification/conftest.py): tests share its event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_clean_response_is_accepted_with_design_fields_and_redelivery_changes_nothing(stack, clients):
    ministry = await clients.key("ministry")
    wave = Wave(stack, clients)
    await wave.create()
    unit = wave.new_unit("01", stratum="01|commune|land", cluster="01007")
    await wave.draw([unit])
    m = await methodology(stack)
    envelope = await wave.submit(unit, good_answers(m))
    detail = await wave.settled(unit, ministry, state="accepted", published="accepted", version=1)
    assert detail["decisions"][0]["decided_by"] == "rule"
    assert detail["decisions"][0]["basis"]["parameters"]["min_answered_share"] == 0.5

    [event] = await decisions(stack, wave.wave_id)
    assert event["type"] == "accepted" and event["decision_version"] == 1 and event["reverses"] is False
    # What indexing needs: the design fields of the sampled unit and the answers.
    assert (event["stratum"], event["psu"], event["pi"], event["weight"]) == ("01|commune|land", "01007", 0.05, 20.0)
    assert event["province_code"] == "01" and event["methodology_version"] == "sipas-2017"
    assert event["answers"] == good_answers(m)

    # The same event delivered again, and the same response under a new event id: no change.
    await stack.bus.publish(envelope)
    await wave.submit(unit, good_answers(m))
    await wave.submit(wave.new_unit(), good_answers(m))  # a marker: once it is handled, the others were too

    async def marker_handled():
        assert len(await decisions(stack, wave.wave_id)) == 2

    await eventually(marker_handled)
    detail = await wave.form(unit, ministry)
    assert detail["form"]["decision_version"] == 1
    assert len(detail["responses"]) == 1
    assert [e["form_code"] for e in await decisions(stack, wave.wave_id)].count(wave.form_code(unit)) == 1


async def test_reject_rules_and_flags(stack, clients):
    ministry = await clients.key("ministry")
    wave = Wave(stack, clients)
    await wave.create()
    m = await methodology(stack)
    items = m.satisfaction_items()
    sparse, bad_code, straight, fast, outsider = (wave.new_unit() for _ in range(5))
    await wave.draw([sparse, bad_code, straight, fast])  # ``outsider`` is not in the sample

    await wave.submit(sparse, {c: 4 for c in items[: len(items) // 3]} | {items[-1]: 2})
    await wave.submit(bad_code, {**good_answers(m), items[0]: 7})
    await wave.submit(straight, {c: 5 for c in items})
    await wave.submit(fast, good_answers(m), channel="online", duration=30.0, enumerator=None)
    await wave.submit(outsider, good_answers(m))

    f = await wave.settled(sparse, ministry, state="rejected")
    assert f["form"]["reasons"] == ["min_answered_share"]
    [finding] = f["responses"][0]["findings"]
    assert finding["parameters"] == {"min_answered_share": 0.5} and finding["detail"]["answered_share"] < 0.5
    f = await wave.settled(bad_code, ministry, state="rejected")
    assert f["form"]["reasons"] == ["out_of_range"]
    f = await wave.settled(outsider, ministry, state="rejected")
    assert f["form"]["reasons"] == ["not_in_sample"]
    # Flags do not reject: the form waits for a reviewer, nothing is announced yet.
    f = await wave.settled(straight, ministry, state="has_issues")
    assert f["form"]["reasons"] == ["straight_lining"] and f["form"]["published"] is None
    f = await wave.settled(fast, ministry, state="has_issues")
    assert f["form"]["reasons"] == ["too_fast_online"]
    assert f["responses"][0]["findings"][0]["parameters"] == {"min_online_seconds": 120}

    events = await decisions(stack, wave.wave_id)
    assert sorted((e["form_code"], e["type"]) for e in events) == sorted(
        (wave.form_code(u), "rejected") for u in (sparse, bad_code, outsider)
    )
    assert {tuple(e["reasons"]) for e in events} == {("min_answered_share",), ("out_of_range",), ("not_in_sample",)}
    assert accepted_set(events) == set()


async def test_a_second_response_for_an_accepted_form_is_a_duplicate(stack, clients):
    ministry = await clients.key("ministry")
    wave = Wave(stack, clients)
    await wave.create()
    unit = wave.new_unit()
    await wave.draw([unit])
    m = await methodology(stack)
    await wave.submit(unit, good_answers(m))
    await wave.settled(unit, ministry, published="accepted")
    other = uuid.uuid4()
    await wave.submit(unit, good_answers(m, offset=1), response_id=other)

    async def kept():
        detail = await wave.form(unit, ministry)
        assert len(detail["responses"]) == 2
        return detail

    detail = await eventually(kept)
    dup = [r for r in detail["responses"] if r["response_id"] == str(other)][0]
    assert dup["outcome"] == "rejected" and dup["findings"][0]["rule"] == "duplicate"
    assert detail["form"]["state"] == "accepted" and detail["form"]["decision_version"] == 1
    quality = (await clients.verification.get(f"/v1/waves/{wave.wave_id}/quality?by=wave", headers=ministry)).json()
    assert quality["rows"][0]["duplicates"] == 1 and quality["rows"][0]["valid"] == 1


async def test_a_response_that_arrives_before_its_sample_is_accepted_once_the_sample_comes(stack, clients):
    ministry = await clients.key("ministry")
    wave = Wave(stack, clients)
    await wave.create()
    unit = wave.new_unit()
    m = await methodology(stack)
    await wave.submit(unit, good_answers(m))
    await wave.settled(unit, ministry, state="rejected", published="rejected")
    await wave.draw([unit])
    f = await wave.settled(unit, ministry, state="accepted", published="accepted", version=2)
    latest = f["decisions"][-1]
    assert latest["reverses"] is True and "sample" in latest["reason"]
    events = await decisions(stack, wave.wave_id)
    assert [e["type"] for e in events] == ["rejected", "accepted"]
    assert accepted_set(events) == {wave.form_code(unit)}


async def test_replaced_unit_leaves_the_sample_and_its_replacement_joins(stack, clients):
    ministry = await clients.key("ministry")
    wave = Wave(stack, clients)
    await wave.create()
    m = await methodology(stack)
    gone = wave.new_unit()
    await wave.draw([gone])
    reserve = wave.new_unit(stratum=gone.stratum)
    reserve = reserve.model_copy(update={"pi": 0.04, "weight": 25.0})
    await wave.replace(gone, reserve)
    await wave.submit(reserve, good_answers(m))
    f = await wave.settled(reserve, ministry, published="accepted")
    assert f["form"]["unit_id"] == str(reserve.unit_id)
    await wave.submit(gone, good_answers(m))
    f = await wave.settled(gone, ministry, state="rejected")
    assert f["responses"][0]["findings"][0] == {
        "rule": "not_in_sample", "outcome": "reject", "parameters": {}, "detail": {"unit_replaced": True}
    }
    [accepted] = [e for e in await decisions(stack, wave.wave_id) if e["type"] == "accepted"]
    assert (accepted["weight"], accepted["pi"]) == (25.0, 0.04)


async def test_entry_verification_reports_disagreements_and_operator_mismatch_rates(stack, clients):
    ministry = await clients.key("ministry")
    wave = Wave(stack, clients)
    await wave.create()
    a, b, c = wave.new_unit("01"), wave.new_unit("01"), wave.new_unit("79")
    await wave.draw([a, b, c])
    await wave.compared(a, ["op1", "op2"], [])
    await wave.compared(b, ["op1", "op3"], ["q1", "q7"])
    await wave.compared(c, ["op2", "op3", "op4"], ["q3"], resolved=True)
    url = f"/v1/waves/{wave.wave_id}/entry-verification"

    async def all_in():
        r = await clients.verification.get(url, headers=ministry)
        assert r.status_code == 200 and r.json()["forms_compared"] == 3, r.text
        return r.json()

    report = await eventually(all_in)
    assert report["forms_with_disagreements"] == 2
    assert [d["form_code"] for d in report["unresolved"]] == [wave.form_code(b)]
    rates = {o["operator"]: o for o in report["operators"]}
    assert (rates["op1"]["forms"], rates["op1"]["forms_with_disagreements"], rates["op1"]["mismatch_rate"]) == (2, 1, 0.5)
    assert rates["op3"]["mismatch_rate"] == 1.0 and rates["op3"]["items_disagreed"] == 3
    assert rates["op2"]["mismatch_rate"] == 0.5
    # A province team sees its own province only.
    hanoi = await clients.key("province", "01")
    own = (await clients.verification.get(url, headers=hanoi)).json()
    assert own["forms_compared"] == 2 and "op4" not in {o["operator"] for o in own["operators"]}
    assert (await clients.verification.get(url + "?province_code=79", headers=hanoi)).status_code == 404
    # A later report of the same form replaces the earlier one (a third entry resolved it).
    await wave.compared(b, ["op1", "op3", "op5"], ["q1", "q7"], resolved=True)

    async def resolved():
        r = (await clients.verification.get(url, headers=ministry)).json()
        assert r["unresolved"] == [] and r["forms_compared"] == 3

    await eventually(resolved)
