"""The online channel, double data entry and progress."""

from __future__ import annotations

import asyncio

import pytest

from services.survey.form_code import ALPHABET
from services.survey.online import RateLimiter
from tests.conftest import eventually
from tests.survey.helpers import close_wave, full_answers, outbox_events, setup_wave, unit, unknown_code

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _codes(clients, wave_id) -> list[str]:
    ministry = await clients.key("ministry")
    r = await clients.survey.get("/v1/forms", params={"wave_id": str(wave_id)}, headers=ministry)
    return [f["form_code"] for f in r.json()["items"]]


def _typo(code: str) -> str:
    """The code with its last serial character changed: the check character no longer fits."""
    i = len(code) - 3
    return code[:i] + ALPHABET[(ALPHABET.index(code[i]) + 1) % len(ALPHABET)] + code[i + 1:]


async def test_online_answer_once(stack, clients):
    stack.apps["survey"].state.online_limiter = RateLimiter()
    wave_id = await setup_wave(stack, [unit() for _ in range(3)], code="SIPAS-2026")
    other_wave = await setup_wave(stack, [unit()], code="SIPAS-2027", year=2027)
    codes = await _codes(clients, wave_id)
    other = (await _codes(clients, other_wave))[0]

    r = await clients.survey.get(f"/v1/online/forms/{codes[0].lower()}", params={"wave": "SIPAS-2026"})
    assert r.status_code == 200, r.text
    q = r.json()
    assert q["form_code"] == codes[0] and q["methodology_version"] == "sipas-2017" and q["language"] == "vi"
    assert q["questionnaire"]["id"] == "sipas-2017"

    r = await clients.survey.post(f"/v1/online/forms/{codes[0]}/response", params={"wave": "SIPAS-2026"},
                                  json={"answers": full_answers(5)})
    assert r.status_code == 201, r.text
    assert r.json()["duration_seconds"] is not None and r.json()["duration_seconds"] >= 0
    again = await clients.survey.post(f"/v1/online/forms/{codes[0]}/response", json={"answers": full_answers(5)})
    assert again.status_code == 409 and again.json()["reason"] == "already_answered"

    bad = [
        (f"/v1/online/forms/{_typo(codes[1])}", 400, "bad_check_digit"),
        (f"/v1/online/forms/{unknown_code()}", 404, "unknown_code"),
        ("/v1/online/forms/not a code", 400, "malformed_code"),
        (f"/v1/online/forms/{other}?wave=SIPAS-2026", 409, "other_wave"),
    ]
    for url, status, reason in bad:
        r = await clients.survey.get(url)
        assert (r.status_code, r.json().get("reason")) == (status, reason), (url, r.text)

    r = await clients.survey.post(f"/v1/online/forms/{codes[1]}/response", json={"answers": {**full_answers(), "access.seats": 9}})
    assert r.status_code == 422 and r.json()["errors"][0]["item"] == "access.seats"

    # The QR link carries the form's token: a token for another form is refused.
    ministry = await clients.key("ministry")
    qr = (await clients.survey.get(f"/v1/forms/{codes[1]}/qr", headers=ministry)).json()
    token = qr["url"].split("t=")[1]
    assert (await clients.survey.get(f"/v1/online/forms/{codes[1]}", params={"t": token})).status_code == 200
    assert (await clients.survey.get(f"/v1/online/forms/{codes[2]}", params={"t": token})).status_code == 403

    # Two submissions at once: one is accepted.
    first, second = await asyncio.gather(
        clients.survey.post(f"/v1/online/forms/{codes[1]}/response", json={"answers": full_answers(3)}),
        clients.survey.post(f"/v1/online/forms/{codes[1]}/response", json={"answers": full_answers(2)}))
    assert sorted([first.status_code, second.status_code]) == [201, 409]

    submitted = await outbox_events(stack, "sipas.survey.response.submitted.v1", wave_id)
    assert sorted(e["form_code"] for e in submitted) == sorted(codes[:2])
    assert {e["channel"] for e in submitted} == {"online"}

    await close_wave(stack, wave_id)

    async def closed():
        r = await clients.survey.get(f"/v1/online/forms/{codes[2]}")
        assert r.status_code == 409 and r.json()["reason"] == "wave_closed"

    await eventually(closed)


async def test_online_is_rate_limited(stack, clients):
    stack.apps["survey"].state.online_limiter = RateLimiter(burst=3, per_second=0.001)
    try:
        statuses = [(await clients.survey.get(f"/v1/online/forms/{unknown_code()}")).status_code for _ in range(5)]
        assert statuses[:3] == [404, 404, 404]
        assert statuses[3:] == [429, 429]
        r = await clients.survey.get(f"/v1/online/forms/{unknown_code()}")
        assert int(r.headers["Retry-After"]) >= 1 and r.json()["type"] == "urn:sipas:problem:rate-limited"
    finally:
        stack.apps["survey"].state.online_limiter = RateLimiter()


async def test_double_entry_and_operator_mismatch(stack, clients):
    wave_id = await setup_wave(stack, [unit() for _ in range(2)])
    codes = await _codes(clients, wave_id)
    ministry = await clients.key("ministry")

    async def key(code, operator, answers):
        return await clients.survey.post(f"/v1/data-entry/forms/{code}/entries", headers=ministry,
                                         json={"operator": operator, "answers": answers})

    # Form 1: both agree.
    assert (await key(codes[0], "NV-A", full_answers(4))).json()["state"] == "awaiting_second_entry"
    r = await key(codes[0], "NV-A", full_answers(4))
    assert r.status_code == 409  # the same operator cannot key it twice
    r = await key(codes[0], "NV-B", full_answers(4))
    assert r.status_code == 201 and r.json()["state"] == "complete"
    assert (await key(codes[0], "NV-C", full_answers(4))).status_code == 409

    # Form 2: B mistypes one item; C resolves with A's reading.
    assert (await key(codes[1], "NV-A", full_answers(4))).status_code == 201
    typo = {**full_answers(4), "access.seats": 2}
    r = await key(codes[1], "NV-B", typo)
    assert r.json() == {"form_code": codes[1], "entry": 2, "state": "awaiting_third_entry", "disagreements": ["access.seats"]}
    r = await key(codes[1], "NV-C", full_answers(4))
    assert r.json()["state"] == "complete"

    stats = {s["operator"]: s for s in (await clients.survey.get(
        "/v1/data-entry/operators", params={"wave_id": str(wave_id)}, headers=ministry)).json()}
    assert stats["NV-A"]["mismatches"] == 0 and stats["NV-A"]["entries"] == 2
    assert stats["NV-B"]["mismatches"] == 1
    assert stats["NV-B"]["mismatch_rate"] == pytest.approx(1 / stats["NV-B"]["compared_items"])
    assert stats["NV-C"]["mismatches"] == 0

    compared = await outbox_events(stack, "sipas.survey.data_entry.compared.v1", wave_id)
    assert [(c["form_code"], c["disagreements"], c["resolved_by_third_entry"]) for c in compared] == [
        (codes[0], [], False), (codes[1], ["access.seats"], True)]
    submitted = await outbox_events(stack, "sipas.survey.response.submitted.v1", wave_id)
    assert [(s["form_code"], s["answers"]["access.seats"]) for s in submitted] == [(codes[0], 4), (codes[1], 4)]

    # Bad input: unknown form, invalid answers; nothing stored.
    assert (await key(unknown_code(), "NV-A", full_answers())).status_code == 404
    observer = await clients.key("observer")
    r = await clients.survey.post(f"/v1/data-entry/forms/{codes[0]}/entries", headers=observer,
                                  json={"operator": "NV-A", "answers": full_answers()})
    assert r.status_code == 403


async def test_progress_json_and_metrics(stack, clients):
    wave_id = await setup_wave(stack, [unit("01") for _ in range(3)] + [unit("79", stratum="79-urban")], code="PROG-2026")
    ministry = await clients.key("ministry")
    vnpost = await clients.key("vnpost")
    items = (await clients.survey.get("/v1/forms", params={"wave_id": str(wave_id), "province_code": "01"}, headers=ministry)).json()["items"]
    codes = [i["form_code"] for i in items]
    await clients.survey.post("/v1/forms/assign", headers=ministry, json={"wave_id": str(wave_id), "assignments": [
        {"form_code": c, "post_office": "BC-01", "enumerator_id": "DTV-9"} for c in codes]})
    r = await clients.survey.post("/v1/vnpost/status-batches", headers=vnpost, json={
        "batch_id": f"prog-{wave_id}", "wave_id": str(wave_id), "records": [
            {"form_code": codes[0], "status": "dispatched"}, {"form_code": codes[1], "status": "refused"}]})
    assert r.json()["counts"]["applied"] == 2
    r = await clients.survey.post("/v1/vnpost/answer-batches", headers=vnpost, json={
        "batch_id": f"prog-a-{wave_id}", "wave_id": str(wave_id), "records": [{"form_code": codes[2], "answers": full_answers()}]})
    assert r.json()["counts"]["applied"] == 1

    p = (await clients.survey.get(f"/v1/progress/{wave_id}", headers=ministry)).json()
    assert {k: p["totals"][k] for k in ("assigned", "dispatched", "collected", "refused", "total")} == {
        "assigned": 1, "dispatched": 1, "collected": 1, "refused": 1, "total": 4}
    by_province = {x["province_code"]: x for x in p["by_province"]}
    assert by_province["01"]["total"] == 3 and by_province["79"]["assigned"] == 1
    assert [(e["enumerator_id"], e["total"]) for e in p["by_enumerator"]] == [("DTV-9", 3)]
    hanoi = await clients.key("province", "01")
    mine = (await clients.survey.get(f"/v1/progress/{wave_id}", headers=hanoi)).json()
    assert [x["province_code"] for x in mine["by_province"]] == ["01"]

    text = (await clients.survey.get("/metrics")).text
    assert 'sipas_survey_forms{province="01",status="refused",wave="PROG-2026"} 1.0' in text
    assert 'sipas_survey_enumerator_forms{enumerator="DTV-9",status="collected",wave="PROG-2026"} 1.0' in text
