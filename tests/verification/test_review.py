"""Review states, send-back for correction, reversals, scope and bad input."""

from __future__ import annotations

import pytest

from tests.verification.helpers import Wave, accepted_set, decisions, good_answers, methodology, outbox_envelopes

# One stack per module (tests/verification/conftest.py): tests share its event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _flagged_form(stack, clients, ministry):
    wave = Wave(stack, clients)
    await wave.create()
    m = await methodology(stack)
    unit = wave.new_unit("01")
    await wave.draw([unit])
    await wave.submit(unit, {c: 4 for c in m.satisfaction_items()})  # straight-lined: flagged
    await wave.settled(unit, ministry, state="has_issues")
    return wave, unit, m


async def test_reviewer_accepts_a_flagged_form_then_a_reversal_needs_a_reason_and_reaches_the_accepted_set(stack, clients):
    ministry = await clients.key("ministry")
    province = await clients.key("province", "01")
    wave, unit, _ = await _flagged_form(stack, clients, ministry)
    url = f"/v1/waves/{wave.wave_id}/forms/{wave.form_code(unit)}/review"

    r = await clients.verification.post(url, json={"action": "accept", "comment": "checked by phone"}, headers=province)
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["published"], r.json()["decision_version"]) == ("accepted", "accepted", 1)

    # Reversing a published decision without a reason: a clear 400, nothing changes.
    r = await clients.verification.post(url, json={"action": "reject", "reason_codes": ["fabricated"]}, headers=ministry)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
    assert "reason" in r.json()["detail"]
    r = await clients.verification.post(
        url, json={"action": "reject", "reason_codes": ["fabricated"], "reason": "late back-check by phone"},
        headers=ministry,
    )
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["decision_version"]) == ("rejected", 2)
    r = await clients.verification.post(
        url, json={"action": "accept", "reason": "the respondent confirmed after all"}, headers=ministry
    )
    assert r.status_code == 200 and r.json()["decision_version"] == 3

    events = await decisions(stack, wave.wave_id)
    assert [(e["type"], e["decision_version"], e["reverses"]) for e in events] == [
        ("accepted", 1, False), ("rejected", 2, True), ("accepted", 3, True)
    ]
    assert events[1]["reason"] == "late back-check by phone" and events[1]["reasons"] == ["fabricated"]
    assert accepted_set(events) == {wave.form_code(unit)}
    assert accepted_set(events[:2]) == set()

    # The audit log has every decision with who and why; ministry and observers read it.
    observer = await clients.key("observer")
    r = await clients.verification.get(f"/v1/waves/{wave.wave_id}/audit", headers=observer)
    assert r.status_code == 200
    entries = [e for e in r.json()["items"] if e["action"].startswith("decision.")]
    assert [e["action"] for e in entries] == ["decision.accepted", "decision.rejected", "decision.accepted"]
    assert entries[0]["actor"].startswith("province:") and entries[1]["reason"] == "late back-check by phone"
    assert entries[0]["details"]["basis"]["comment"] == "checked by phone"
    r = await clients.verification.get(f"/v1/waves/{wave.wave_id}/audit", headers=province)
    assert r.status_code == 403


async def test_send_back_emits_correction_requested_and_the_corrected_revision_is_screened_again(stack, clients):
    ministry = await clients.key("ministry")
    wave = Wave(stack, clients)
    await wave.create()
    m = await methodology(stack)
    items = m.satisfaction_items()
    unit = wave.new_unit()
    await wave.draw([unit])
    await wave.submit(unit, {items[0]: 4, items[1]: 9})  # too few and out of range: rejected
    await wave.settled(unit, ministry, state="rejected")
    url = f"/v1/waves/{wave.wave_id}/forms/{wave.form_code(unit)}/review"
    r = await clients.verification.post(url, json={"action": "send_back", "reason_codes": ["entry_error"],
                                                   "items": [items[1]], "comment": "re-key page 2"}, headers=ministry)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "sent_back"
    [envelope] = [e for e in await outbox_envelopes(stack, "sipas.verification.correction.requested.v1")
                  if e["data"]["wave_id"] == wave.wave_id]
    assert envelope["data"]["items"] == [items[1]] and envelope["data"]["reason_codes"] == ["entry_error"]
    assert "comment" not in envelope["data"]  # free text stays in verification
    # While it is with survey, no decision can be taken on it.
    r = await clients.verification.post(url, json={"action": "reject", "reason_codes": ["x_y"]}, headers=ministry)
    assert r.status_code == 409 and r.json()["type"] == "urn:sipas:problem:invalid-state"

    await wave.submit(unit, good_answers(m), revision=2)
    f = await wave.settled(unit, ministry, state="accepted", published="accepted", version=2)
    assert f["decisions"][-1]["reverses"] is True and f["decisions"][-1]["revision"] == 2
    assert [h["action"] for h in f["history"]][:4] == ["received", "screened", "send_back", "received"]
    assert accepted_set(await decisions(stack, wave.wave_id)) == {wave.form_code(unit)}


async def test_review_scope_roles_and_closed_wave(stack, clients):
    ministry = await clients.key("ministry")
    wave, unit, _ = await _flagged_form(stack, clients, ministry)
    url = f"/v1/waves/{wave.wave_id}/forms/{wave.form_code(unit)}/review"
    other = await clients.key("province", "79")
    r = await clients.verification.post(url, json={"action": "accept"}, headers=other)
    assert r.status_code == 404
    r = await clients.verification.get(f"/v1/waves/{wave.wave_id}/forms/{wave.form_code(unit)}", headers=other)
    assert r.status_code == 404
    listed = (await clients.verification.get(f"/v1/waves/{wave.wave_id}/forms", headers=other)).json()
    assert listed["total"] == 0
    observer = await clients.key("observer")
    r = await clients.verification.post(url, json={"action": "accept"}, headers=observer)
    assert r.status_code == 403
    r = await clients.verification.post(url, json={"action": "reject"}, headers=ministry)  # no reason code
    assert r.status_code == 422
    r = await clients.verification.post(f"/v1/waves/{wave.wave_id}/forms/NOPE/review", json={"action": "accept"},
                                        headers=ministry)
    assert r.status_code == 404
    await wave.set_status("closed")
    r = await clients.verification.post(url, json={"action": "accept"}, headers=ministry)
    assert r.status_code == 409 and r.json()["type"] == "urn:sipas:problem:invalid-state"
    corrections = [e for e in await outbox_envelopes(stack, "sipas.verification.correction.requested.v1")
                   if e["data"]["wave_id"] == wave.wave_id]
    assert corrections == []


async def test_changed_parameters_rerun_the_rules_before_the_wave_closes(stack, clients):
    ministry = await clients.key("ministry")
    wave = Wave(stack, clients)
    await wave.create()
    m = await methodology(stack)
    items = m.satisfaction_items()
    half, full = wave.new_unit(), wave.new_unit()
    await wave.draw([half, full])
    answers = {c: 3 + i % 2 for i, c in enumerate(items[: int(len(items) * 0.6)])}  # 60% answered
    await wave.submit(half, answers)
    await wave.submit(full, good_answers(m))
    await wave.settled(half, ministry, state="accepted")
    await wave.settled(full, ministry, state="accepted")

    url = f"/v1/waves/{wave.wave_id}/screening-parameters"
    r = await clients.verification.patch(url, json={"min_answered_share": 0.8, "reason": "stricter in 2026"},
                                         headers=ministry)
    assert r.status_code == 200, r.text
    assert r.json()["rerun"] == {"rescreened": 2, "changed": 1, "decisions": 1}
    assert r.json()["parameters"]["parameters"]["min_answered_share"] == 0.8
    f = await wave.form(half, ministry)
    assert f["form"]["state"] == "rejected" and f["decisions"][-1]["basis"]["parameters"]["min_answered_share"] == 0.8
    assert f["decisions"][-1]["reverses"] is True
    assert accepted_set(await decisions(stack, wave.wave_id)) == {wave.form_code(full)}

    province = await clients.key("province", "01")
    r = await clients.verification.patch(url, json={"min_answered_share": 0.4, "reason": "x"}, headers=province)
    assert r.status_code == 403
    r = await clients.verification.patch(url, json={"min_answered_share": 2, "reason": "x"}, headers=ministry)
    assert r.status_code == 422
    await wave.set_status("closed")
    r = await clients.verification.patch(url, json={"min_answered_share": 0.4, "reason": "too late"}, headers=ministry)
    assert r.status_code == 409
    r = await clients.verification.get(url, headers=province)
    assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["overrides"] == {"min_answered_share": 0.8}
