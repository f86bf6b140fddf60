"""The Vietnam Post integration: pull assignments, push statuses and answers in batches."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

from sqlalchemy import func, select

from services.survey.models import response
from services.survey.schemas import BatchResult
from shared.contracts.survey import ResponseSubmitted
from shared.contracts.verification import CorrectionRequested
from shared.events import make_event
import pytest

from tests.conftest import eventually
from tests.survey.helpers import full_answers, outbox_events, setup_wave, unit

PERSONAL = {"name", "phone", "address", "ethnicity", "full_name", "id_number"}

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _codes(clients, wave_id, key) -> list[str]:
    r = await clients.survey.get("/v1/vnpost/assignments", params={"wave_id": str(wave_id), "limit": 5000}, headers=key)
    assert r.status_code == 200, r.text
    return [i["form_code"] for i in r.json()["items"]]


async def _responses(stack, wave_id) -> int:
    async with stack.apps["survey"].state.sessions() as session:
        return await session.scalar(select(func.count()).select_from(response).where(response.c.wave_id == str(wave_id)))


async def test_pull_pages_by_change_cursor(stack, clients):
    wave_id = await setup_wave(stack, [unit() for _ in range(5)])
    vnpost = await clients.key("vnpost")
    ministry = await clients.key("ministry")

    seen, since = [], 0
    while True:
        r = await clients.survey.get("/v1/vnpost/assignments", params={"wave_id": str(wave_id), "since": since, "limit": 2},
                                     headers=vnpost)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += page["items"]
        since = page["next_cursor"]
        if not page["has_more"]:
            break
    assert len({i["form_code"] for i in seen}) == 5
    assert all(set(i) >= {"form_code", "unit_id", "status"} and not PERSONAL & set(i) for i in seen)

    # Nothing changed: an empty page, same cursor. Then a reassignment shows up after the cursor.
    r = (await clients.survey.get("/v1/vnpost/assignments", params={"wave_id": str(wave_id), "since": since},
                                  headers=vnpost)).json()
    assert r["items"] == [] and r["next_cursor"] == since
    code = seen[0]["form_code"]
    r = await clients.survey.post("/v1/forms/assign", headers=ministry, json={
        "wave_id": str(wave_id), "assignments": [{"form_code": code, "post_office": "BC-HN-01", "enumerator_id": "DTV-007"},
                                                 {"form_code": "S26-22222-2"}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"changed": 1, "not_assignable": ["S26-22222-2"]}
    r = (await clients.survey.get("/v1/vnpost/assignments", params={"wave_id": str(wave_id), "since": since},
                                  headers=vnpost)).json()
    assert [(i["form_code"], i["post_office"], i["enumerator_id"]) for i in r["items"]] == [(code, "BC-HN-01", "DTV-007")]

    # Only Vietnam Post (and services) pull; an unknown wave is 404.
    assert (await clients.survey.get("/v1/vnpost/assignments", params={"wave_id": str(wave_id)}, headers=ministry)).status_code == 403
    assert (await clients.survey.get("/v1/vnpost/assignments", params={"wave_id": str(uuid.uuid4())}, headers=vnpost)).status_code == 404


async def test_same_batch_twice_and_concurrently_gives_one_copy_of_each_form(stack, clients):
    wave_id = await setup_wave(stack, [unit() for _ in range(30)])
    vnpost = await clients.key("vnpost")
    codes = await _codes(clients, wave_id, vnpost)
    batch = {"batch_id": "VNP-2026-0001", "wave_id": str(wave_id),
             "records": [{"form_code": c, "answers": full_answers(4), "enumerator_id": "DTV-001"} for c in codes[:20]]}

    # Concurrently: both requests race for the batch id.
    first, second = await asyncio.gather(
        clients.survey.post("/v1/vnpost/answer-batches", json=batch, headers=vnpost),
        clients.survey.post("/v1/vnpost/answer-batches", json=batch, headers=vnpost),
    )
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert sorted([first.json()["replayed"], second.json()["replayed"]]) == [False, True]
    assert first.json()["counts"] == second.json()["counts"] == {"applied": 20, "unchanged": 0, "conflict": 0, "rejected": 0}
    # Sequentially again: a replay, same result, nothing applied twice.
    again = await clients.survey.post("/v1/vnpost/answer-batches", json=batch, headers=vnpost)
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["records"] == first.json()["records"]
    # The same forms under new batch ids, concurrently: unchanged, never duplicated.
    b2 = {**batch, "batch_id": "VNP-2026-0002"}
    b3 = {**batch, "batch_id": "VNP-2026-0003"}
    r2, r3 = await asyncio.gather(clients.survey.post("/v1/vnpost/answer-batches", json=b2, headers=vnpost),
                                  clients.survey.post("/v1/vnpost/answer-batches", json=b3, headers=vnpost))
    assert r2.status_code == r3.status_code == 200, (r2.text, r3.text)
    assert r2.json()["counts"]["unchanged"] == r3.json()["counts"]["unchanged"] == 20

    assert await _responses(stack, wave_id) == 20
    submitted = [e for e in await outbox_events(stack, "sipas.survey.response.submitted.v1", wave_id)]
    assert sorted(e["form_code"] for e in submitted) == sorted(codes[:20])
    for e in submitted:
        ResponseSubmitted.model_validate(e)  # built as a dict on the bulk path: still the contract
        assert e["channel"] == "paper" and e["enumerator_id"] == "DTV-001" and e["revision"] == 1
        assert "ethnicity" not in e["answers"] and not PERSONAL & set(e)
        assert e["stratum"] == "01-urban" and e["methodology_version"] == "sipas-2017"

    # The same batch id with another body is a 409; from another Vietnam Post key a 403.
    changed = {**batch, "records": batch["records"][:5]}
    r = await clients.survey.post("/v1/vnpost/answer-batches", json=changed, headers=vnpost)
    assert r.status_code == 409 and r.json()["type"] == "urn:sipas:problem:conflict"
    other = await clients.key("vnpost", label="another operator")
    r = await clients.survey.post("/v1/vnpost/answer-batches", json=batch, headers=other)
    assert r.status_code == 403
    assert (await clients.survey.get("/v1/vnpost/batches/VNP-2026-0001", headers=other)).status_code == 404
    stored = await clients.survey.get("/v1/vnpost/batches/VNP-2026-0001", headers=vnpost)
    assert stored.status_code == 200 and stored.json()["counts"]["applied"] == 20

    # The body's identity is canonical: the same answers in another key order are a replay.
    reordered = {**batch, "records": [{**r, "answers": dict(reversed(list(r["answers"].items())))} for r in batch["records"]]}
    r = await clients.survey.post("/v1/vnpost/answer-batches", json=reordered, headers=vnpost)
    assert r.status_code == 200 and r.json()["replayed"] is True
    r = await clients.survey.post("/v1/vnpost/answer-batches", json=changed, headers=vnpost)
    assert r.status_code == 409
    assert await _responses(stack, wave_id) == 20


async def test_records_are_judged_one_by_one(stack, clients):
    wave_id = await setup_wave(stack, [unit() for _ in range(6)])
    vnpost = await clients.key("vnpost")
    codes = await _codes(clients, wave_id, vnpost)
    ok = full_answers(5)
    r = await clients.survey.post("/v1/vnpost/answer-batches", headers=vnpost, json={
        "batch_id": "b1", "wave_id": str(wave_id), "records": [{"form_code": codes[0], "answers": ok}]})
    assert r.json()["counts"]["applied"] == 1

    bad_item = {**ok, "no.such.item": 3}
    out_of_range = {**ok, "access.seats": 7}
    too_many = {**ok, "expectation": ["a", "b", "c", "d", "e"]}
    body = {"batch_id": "b2", "wave_id": str(wave_id), "records": [
        {"form_code": codes[0], "answers": full_answers(2)},      # accepted before with other answers
        {"form_code": codes[1], "answers": bad_item},
        {"form_code": codes[2], "answers": out_of_range},
        {"form_code": codes[3], "answers": too_many},
        {"form_code": "S26-22222-2", "answers": ok},               # not a form of this wave
        {"form_code": codes[4], "answers": {**ok, "access.seats": "na", "access.equipment_complete": None}},
        {"form_code": codes[4], "answers": ok},                    # twice in one batch
    ]}
    r = await clients.survey.post("/v1/vnpost/answer-batches", json=body, headers=vnpost)
    assert r.status_code == 200, r.text
    # The result is encoded without FastAPI's response model: it must still be one.
    assert BatchResult.model_validate_json(r.content).model_dump(mode="json") == r.json()
    records = r.json()["records"]
    assert [x["outcome"] for x in records] == ["conflict", "rejected", "rejected", "rejected", "rejected", "applied", "rejected"]
    assert records[1]["errors"][0]["code"] == "unknown_item"
    assert records[2]["errors"][0] == {"code": "out_of_range", "item": "access.seats", "message": records[2]["errors"][0]["message"]}
    assert {e["code"] for e in records[3]["errors"]} >= {"too_many_choices"}
    assert records[4]["errors"][0]["code"] == "unknown_form"
    assert records[6]["errors"][0]["code"] == "duplicate_in_batch"
    assert await _responses(stack, wave_id) == 2

    # Status pushes: a refusal asks sampling for a replacement; a collected form cannot be refused.
    r = await clients.survey.post("/v1/vnpost/status-batches", headers=vnpost, json={
        "batch_id": "s1", "wave_id": str(wave_id), "records": [
            {"form_code": codes[5], "status": "dispatched", "enumerator_id": "DTV-002"},
            {"form_code": codes[0], "status": "refused"}]})
    assert r.status_code == 200, r.text
    assert [x["outcome"] for x in r.json()["records"]] == ["applied", "conflict"]
    r = await clients.survey.post("/v1/vnpost/status-batches", headers=vnpost, json={
        "batch_id": "s2", "wave_id": str(wave_id), "records": [
            {"form_code": codes[5], "status": "unreachable", "replacement_reason": "moved"}]})
    assert r.json()["counts"]["applied"] == 1
    asked = [e for e in await outbox_events(stack, "sipas.survey.replacement.requested.v1", wave_id)]
    assert [(a["form_code"], a["reason"]) for a in asked] == [(codes[5], "moved")]

    # Each batch move is in the form's history (PostgreSQL writes it in the forms' UPDATE).
    r = await clients.survey.post("/v1/vnpost/status-batches", headers=vnpost, json={
        "batch_id": "s3", "wave_id": str(wave_id), "records": [
            {"form_code": codes[3], "status": "refused", "reason": "không muốn trả lời"}]})
    assert r.json()["counts"]["applied"] == 1
    ministry = await clients.key("ministry")
    history = {}
    for code in (codes[0], codes[3], codes[5]):
        r = await clients.survey.get(f"/v1/forms/{code}", headers=ministry)
        history[code] = [(h["from_status"], h["to_status"], h["reason"]) for h in r.json()["history"]]
    assert history == {
        codes[0]: [(None, "assigned", None), ("assigned", "collected", None)],
        codes[3]: [(None, "assigned", None), ("assigned", "refused", "không muốn trả lời")],
        codes[5]: [(None, "assigned", None), ("assigned", "dispatched", None), ("dispatched", "unreachable", None)],
    }


async def test_bad_batches_are_clear_errors(stack, clients, monkeypatch):
    wave_id = await setup_wave(stack, [unit()])
    vnpost = await clients.key("vnpost")
    code = (await _codes(clients, wave_id, vnpost))[0]
    record = {"form_code": code, "answers": full_answers()}
    big = {"batch_id": "big", "wave_id": str(wave_id), "records": [record] * 5001}
    r = await clients.survey.post("/v1/vnpost/answer-batches", json=big, headers=vnpost)
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    from services.survey import vnpost as V

    monkeypatch.setattr(V, "MAX_BATCH_BYTES", 1000)
    r = await clients.survey.post("/v1/vnpost/answer-batches", json={**big, "records": [record] * 3}, headers=vnpost)
    assert r.status_code == 413 and r.json()["type"] == "urn:sipas:problem:payload-too-large"
    monkeypatch.undo()
    r = await clients.survey.post("/v1/vnpost/answer-batches", content=b'{"batch_id": "x", ', headers={
        **vnpost, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"][0] == "body"
    # NUL in any string of an answer (value, key, inside a list) is refused before it reaches
    # PostgreSQL, which cannot store it; the same text with the backslash escaped is no NUL.
    for answers in ({**full_answers(), "gender": "nam\u0000"}, {**full_answers(), "ge\u0000nder": "male"},
                    {**full_answers(), "expectation": ["information", "\u0000"]}):
        body = {"batch_id": "nul", "wave_id": str(wave_id), "records": [{"form_code": code, "answers": answers}]}
        r = await clients.survey.post("/v1/vnpost/answer-batches", content=json.dumps(body).encode(), headers={
            **vnpost, "content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["loc"][:4] == ["body", "records", 0, "answers"]
    escaped = {"batch_id": "nul", "wave_id": str(wave_id), "records": [{"form_code": code, "answers": {
        **full_answers(), "gender": "\\u0000"}}]}
    r = await clients.survey.post("/v1/vnpost/answer-batches", json=escaped, headers=vnpost)
    assert r.status_code == 200 and r.json()["records"][0]["outcome"] == "rejected", r.text
    r = await clients.survey.post("/v1/vnpost/answer-batches", json={"batch_id": "x", "wave_id": str(wave_id),
                                                                    "records": {"form_code": code}}, headers=vnpost)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "records"]
    naive = {**record, "started_at": "2026-08-06T09:00:00"}  # a time without its offset: whose clock?
    r = await clients.survey.post("/v1/vnpost/answer-batches", json={"batch_id": "x", "wave_id": str(wave_id),
                                                                    "records": [naive]}, headers=vnpost)
    assert r.status_code == 422
    r = await clients.survey.post("/v1/vnpost/answer-batches", json={"batch_id": "x", "wave_id": str(uuid.uuid4()),
                                                                    "records": [record]}, headers=vnpost)
    assert r.status_code == 404
    province = await clients.key("province", "01")
    r = await clients.survey.post("/v1/vnpost/answer-batches", json={"batch_id": "x", "wave_id": str(wave_id),
                                                                    "records": [record]}, headers=province)
    assert r.status_code == 403
    # None of it left a trace: the batch ids are still free.
    r = await clients.survey.post("/v1/vnpost/answer-batches", json={"batch_id": "big", "wave_id": str(wave_id),
                                                                    "records": [record]}, headers=vnpost)
    assert r.status_code == 200 and r.json()["replayed"] is False


async def test_correction_requested_by_verification_becomes_next_revision(stack, clients):
    wave_id = await setup_wave(stack, [unit() for _ in range(2)])
    vnpost = await clients.key("vnpost")
    ministry = await clients.key("ministry")
    codes = await _codes(clients, wave_id, vnpost)
    r = await clients.survey.post("/v1/vnpost/answer-batches", headers=vnpost, json={
        "batch_id": "a1", "wave_id": str(wave_id), "records": [{"form_code": c, "answers": full_answers(4)} for c in codes]})
    assert r.json()["counts"]["applied"] == 2
    first = {e["form_code"]: e for e in await outbox_events(stack, "sipas.survey.response.submitted.v1", wave_id)}
    cursor = (await clients.survey.get("/v1/vnpost/assignments", params={"wave_id": str(wave_id)}, headers=vnpost)).json()["next_cursor"]

    for code in codes:
        sent_back = CorrectionRequested(
            wave_id=wave_id, form_code=code, unit_id=first[code]["unit_id"], response_id=first[code]["response_id"],
            revision=1, channel="paper", reason_codes=["straight_lining"], items=["access.seats"],
            requested_at=dt.datetime.now(dt.UTC))
        event = make_event(sent_back)
        await stack.bus.publish(event)
        await stack.bus.publish(event)  # redelivered: one request

    async def shown():
        items = (await clients.survey.get("/v1/vnpost/assignments", params={"wave_id": str(wave_id), "since": cursor},
                                          headers=vnpost)).json()["items"]
        assert len(items) == 2 and all(i["correction"]["items"] == ["access.seats"] for i in items)

    await eventually(shown)
    # Vietnam Post re-collects the first form; the ministry keys the second one.
    r = await clients.survey.post("/v1/vnpost/answer-batches", headers=vnpost, json={
        "batch_id": "a2", "wave_id": str(wave_id), "records": [{"form_code": codes[0], "answers": full_answers(3)}]})
    assert r.json()["counts"]["applied"] == 1, r.text
    r = await clients.survey.post(f"/v1/data-entry/forms/{codes[1]}/correction", headers=ministry,
                                  json={"operator": "NV-01", "answers": full_answers(2)})
    assert r.status_code == 200, r.text
    assert r.json() == {"form_code": codes[1], "revision": 2}
    # Closed again: no further change without a new request.
    r = await clients.survey.post(f"/v1/data-entry/forms/{codes[1]}/correction", headers=ministry,
                                  json={"operator": "NV-01", "answers": full_answers(1)})
    assert r.status_code == 409
    r = await clients.survey.post("/v1/vnpost/answer-batches", headers=vnpost, json={
        "batch_id": "a3", "wave_id": str(wave_id), "records": [{"form_code": codes[0], "answers": full_answers(1)}]})
    assert r.json()["counts"]["conflict"] == 1

    revisions = [e for e in await outbox_events(stack, "sipas.survey.response.submitted.v1", wave_id) if e["revision"] == 2]
    assert sorted(e["form_code"] for e in revisions) == sorted(codes)
    assert {e["response_id"] for e in revisions} == {first[c]["response_id"] for c in codes}
    assert await _responses(stack, wave_id) == 2
