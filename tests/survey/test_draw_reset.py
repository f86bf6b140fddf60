"""A draw the ministry resets before fieldwork: survey withdraws its forms (out of the Vietnam Post
feed and the progress counts, kept with their history, codes never handed out again) and
verification drops its units; the re-draw's forms are the only ones left in the field.

The first test drives sampling's real API (frame, design, draw, reset, re-draw) on the whole
stack; the second publishes sampling's events itself to play the orders the bus may deliver them
in (a redelivered chunk of the voided draw, the voided event missing or arriving first)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from services.survey.models import form, form_history, wave_counter
from services.verification.models import SampleUnit
from shared.contracts.sampling import SampleDrawn, SampleVoided
from shared.events import make_event
from tests.conftest import eventually
from tests.sampling.helpers import all_units, drawn_wave, sampling_events
from tests.survey.helpers import full_answers, outbox_events, publish_sample, setup_wave, unit

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _forms(stack, wave_id) -> list[dict]:
    async with stack.apps["survey"].state.sessions() as session:
        rows = await session.execute(select(form).where(form.c.wave_id == str(wave_id)).order_by(form.c.form_code))
        return [dict(r) for r in rows.mappings()]


async def _pull(clients, key, wave_id, since: int = 0) -> dict:
    r = await clients.survey.get("/v1/vnpost/assignments", params={"wave_id": str(wave_id), "since": since, "limit": 5000},
                                 headers=key)
    assert r.status_code == 200, r.text
    return r.json()


async def _footprint(stack, wave_id) -> tuple:
    """Everything a withdrawal writes: form statuses and change numbers, history rows, the
    wave's change counter and the status events staged."""
    async with stack.apps["survey"].state.sessions() as session:
        forms = sorted((r.form_code, r.status, r.change_seq) for r in await session.execute(
            select(form.c.form_code, form.c.status, form.c.change_seq).where(form.c.wave_id == str(wave_id))))
        history = await session.scalar(select(func.count()).select_from(form_history).join(
            form, form.c.id == form_history.c.form_id).where(form.c.wave_id == str(wave_id)))
        counter = await session.scalar(select(wave_counter.c.change_seq).where(wave_counter.c.wave_id == str(wave_id)))
    events = len(await outbox_events(stack, "sipas.survey.form.status_changed.v1", wave_id))
    return forms, history, counter, events


async def _handled(stack, service: str, event_id: str) -> None:
    inbox = stack.apps[service].state.tables["inbox"]
    async with stack.apps[service].state.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(inbox).where(inbox.c.event_id == str(event_id)))


async def _verification_units(stack, wave_id) -> dict[str, str]:
    async with stack.apps["verification"].state.sessions() as session:
        rows = await session.execute(select(SampleUnit.unit_id, SampleUnit.draw_id).where(SampleUnit.wave_id == str(wave_id)))
        return dict(rows.all())


async def test_reset_withdraws_the_draws_forms_and_the_redraw_alone_is_fielded(stack, clients):
    ministry = await clients.key("ministry")
    vnpost = await clients.key("vnpost")
    got = await drawn_wave(clients, ministry, code="SIPAS-2026-RESET")
    wave_id, first_draw = got["wave"]["id"], got["draw"]["id"]
    first_units = {u["unit_id"] for u in await all_units(clients, ministry, wave_id, role="sample")}
    assert len(first_units) == 60

    async def forms_of_first_draw():
        forms = await _forms(stack, wave_id)
        assert len(forms) == 60 and {f["draw_id"] for f in forms} == {first_draw}
        return forms
    first_forms = await eventually(forms_of_first_draw, timeout=30)
    assert {f["unit_id"] for f in first_forms} == first_units
    await eventually(lambda: _verification_units_are(stack, wave_id, first_units), timeout=30)
    pulled = await _pull(clients, vnpost, wave_id)
    assert len(pulled["items"]) == 60 and {i["status"] for i in pulled["items"]} == {"assigned"}
    cursor = pulled["next_cursor"]

    # The ministry resets the draw: sampling announces it with the reason, in the reset's transaction.
    r = await clients.sampling.post(f"/v1/waves/{wave_id}/draw/reset", json={"reason": "wrong strata"}, headers=ministry)
    assert r.status_code == 200, r.text
    voided = await sampling_events(stack, "sipas.sampling.sample.voided.v1", wave_id)
    assert [e["data"]["draw_id"] for e in voided] == [first_draw] and voided[0]["data"]["reason"] == "wrong strata"

    async def withdrawn():
        assert {f["status"] for f in await _forms(stack, wave_id)} == {"withdrawn"}
    await eventually(withdrawn, timeout=30)
    await eventually(lambda: _handled(stack, "verification", voided[0]["id"]), timeout=30)
    assert await _verification_units(stack, wave_id) == {}  # a response for them is not in the sample

    # Out of the feed for a client starting now; a client that pulled them sees each withdrawal once.
    assert (await _pull(clients, vnpost, wave_id))["items"] == []
    later = await _pull(clients, vnpost, wave_id, cursor)
    assert sorted(i["form_code"] for i in later["items"]) == sorted(f["form_code"] for f in first_forms)
    assert {i["status"] for i in later["items"]} == {"withdrawn"}
    assert (await _pull(clients, vnpost, wave_id, later["next_cursor"]))["items"] == []
    # Out of the progress counts; the history keeps the move and the reason.
    r = await clients.survey.get(f"/v1/progress/{wave_id}", headers=ministry)
    assert r.status_code == 200, r.text
    assert r.json()["totals"]["assigned"] == 0 and r.json()["totals"]["total"] == 0 and r.json()["by_province"] == []
    code = first_forms[0]["form_code"]
    detail = (await clients.survey.get(f"/v1/forms/{code}", headers=ministry)).json()
    assert detail["status"] == "withdrawn"
    assert [(h["from_status"], h["to_status"]) for h in detail["history"]] == [(None, "assigned"), ("assigned", "withdrawn")]
    assert detail["history"][-1]["reason"] == "draw reset: wrong strata"
    events = [e for e in await outbox_events(stack, "sipas.survey.form.status_changed.v1", wave_id) if e["status"] == "withdrawn"]
    assert len(events) == 60

    await _withdrawn_form_takes_nothing(stack, clients, ministry, vnpost, wave_id, code)

    # The voided event again (a redelivery under a new id): nothing changes.
    before = await _footprint(stack, wave_id)
    again = make_event(SampleVoided.model_validate(voided[0]["data"]))
    await stack.bus.publish(again)
    await eventually(lambda: _handled(stack, "survey", again.id), timeout=30)
    assert await _footprint(stack, wave_id) == before

    # The re-draw: only its forms are pulled and counted, under new codes.
    r = await clients.sampling.post(f"/v1/waves/{wave_id}/draw", headers=ministry)
    assert r.status_code == 201, r.text
    second_draw = r.json()["id"]
    second_units = {u["unit_id"] for u in await all_units(clients, ministry, wave_id, role="sample")}
    assert len(second_units) == 60 and not second_units & first_units

    async def second_forms():
        forms = [f for f in await _forms(stack, wave_id) if f["draw_id"] == second_draw]
        assert len(forms) == 60
        return forms
    new_forms = await eventually(second_forms, timeout=30)
    assert {f["unit_id"] for f in new_forms} == second_units and {f["status"] for f in new_forms} == {"assigned"}
    assert not {f["form_code"] for f in new_forms} & {f["form_code"] for f in first_forms}
    pulled = await _pull(clients, vnpost, wave_id)
    assert sorted(i["unit_id"] for i in pulled["items"]) == sorted(second_units)
    progress = (await clients.survey.get(f"/v1/progress/{wave_id}", headers=ministry)).json()["totals"]
    assert progress["assigned"] == 60 and progress["total"] == 60
    await eventually(lambda: _verification_units_are(stack, wave_id, second_units), timeout=30)

    # A chunk of the voided draw delivered late (after the re-draw) makes no form and withdraws nothing.
    chunk = (await sampling_events(stack, "sipas.sampling.sample.drawn.v1", wave_id))[0]
    assert chunk["data"]["draw_id"] == first_draw
    before = await _footprint(stack, wave_id)
    late = make_event(SampleDrawn.model_validate(chunk["data"]))
    await stack.bus.publish(late)
    await eventually(lambda: _handled(stack, "survey", late.id), timeout=30)
    assert await _footprint(stack, wave_id) == before
    # Nor does it swap verification's sample back to the voided draw's units.
    await eventually(lambda: _handled(stack, "verification", late.id), timeout=30)
    await _verification_units_are(stack, wave_id, second_units)


async def _verification_units_are(stack, wave_id, units: set[str]) -> None:
    assert set(await _verification_units(stack, wave_id)) == units


async def _withdrawn_form_takes_nothing(stack, clients, ministry, vnpost, wave_id, code) -> None:
    """Answers or statuses for a withdrawn form: a per-record conflict in a Vietnam Post batch, a
    409 problem everywhere else; nothing is stored."""
    r = await clients.survey.post("/v1/vnpost/answer-batches", headers=vnpost, json={
        "batch_id": f"VNP-RESET-A-{uuid.uuid4().hex[:8]}", "wave_id": wave_id,
        "records": [{"form_code": code, "answers": full_answers(4), "enumerator_id": "DTV-001"}]})
    assert r.status_code == 200, r.text
    assert r.json()["counts"]["conflict"] == 1
    record = r.json()["records"][0]
    assert record["outcome"] == "conflict" and record["status"] == "withdrawn"
    assert record["errors"] == [{"code": "form_withdrawn", "item": None, "message": "form withdrawn: its draw was reset"}]
    r = await clients.survey.post("/v1/vnpost/status-batches", headers=vnpost, json={
        "batch_id": f"VNP-RESET-S-{uuid.uuid4().hex[:8]}", "wave_id": wave_id,
        "records": [{"form_code": code, "status": "dispatched"}]})
    assert r.status_code == 200, r.text
    assert r.json()["records"][0]["errors"][0]["code"] == "form_withdrawn"

    for r in (
        await clients.survey.post(f"/v1/online/forms/{code}/response", json={"answers": full_answers(4)}),
        await clients.survey.get(f"/v1/online/forms/{code}"),
        await clients.survey.post(f"/v1/forms/{code}/status", json={"status": "refused"}, headers=ministry),
        await clients.survey.post(f"/v1/data-entry/forms/{code}/entries", json={"operator": "NV-01", "answers": full_answers(4)},
                                  headers=ministry),
    ):
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["detail"] == "form withdrawn: its draw was reset" and r.json()["reason"] == "form_withdrawn"
    r = await clients.survey.post("/v1/forms/assign", headers=ministry, json={
        "wave_id": wave_id, "assignments": [{"form_code": code, "post_office": "BC-HN-01"}]})
    assert r.json() == {"changed": 0, "not_assignable": [code]}
    forms = {f["form_code"]: f for f in await _forms(stack, wave_id)}
    assert forms[code]["status"] == "withdrawn" and forms[code]["post_office"] is None


async def test_a_new_draw_withdraws_older_forms_whatever_order_the_events_come_in(stack, clients):
    vnpost = await clients.key("vnpost")
    old_units = [unit() for _ in range(4)]
    wave_id = await setup_wave(stack, old_units, code="SIPAS-2026-SUPERSEDE")
    old_forms = await _forms(stack, wave_id)
    old_draw = old_forms[0]["draw_id"]

    # No sample.voided (an older sampling): the new draw's first chunk withdraws the old forms.
    new_units = [unit() for _ in range(6)]
    await publish_sample(stack, wave_id, new_units, chunks=2)

    async def superseded():
        forms = await _forms(stack, wave_id)
        by_status = {s: {f["unit_id"] for f in forms if f["status"] == s} for s in ("assigned", "withdrawn")}
        assert by_status == {"assigned": {str(u.unit_id) for u in new_units},
                             "withdrawn": {str(u.unit_id) for u in old_units}}
    await eventually(superseded, timeout=30)
    pulled = await _pull(clients, vnpost, wave_id)
    assert sorted(i["unit_id"] for i in pulled["items"]) == sorted(str(u.unit_id) for u in new_units)
    new_draw = next(f["draw_id"] for f in await _forms(stack, wave_id) if f["status"] == "assigned")

    # The old draw's sample.voided arriving after that changes nothing, nor does the old draw's
    # chunk delivered again.
    before = await _footprint(stack, wave_id)
    voided = make_event(SampleVoided(wave_id=wave_id, draw_id=old_draw, reason="wrong strata",
                                     voided_at="2026-07-01T00:00:00Z"))
    stale = make_event(SampleDrawn(wave_id=wave_id, draw_id=old_draw, methodology_version="sipas-2017",
                                   sample_hash="h", chunk=0, chunks=1, strata=[], units=[unit() for _ in range(2)]))
    for event in (voided, stale):
        await stack.bus.publish(event)
        await eventually(lambda: _handled(stack, "survey", event.id), timeout=30)
    assert await _footprint(stack, wave_id) == before

    # sample.voided of the new draw before any more of its chunks: the late chunk makes no form.
    await stack.bus.publish(make_event(SampleVoided(wave_id=wave_id, draw_id=new_draw, reason="frame error",
                                                    voided_at="2026-07-02T00:00:00Z")))

    async def all_withdrawn():
        assert {f["status"] for f in await _forms(stack, wave_id)} == {"withdrawn"}
    await eventually(all_withdrawn, timeout=30)
    late = make_event(SampleDrawn(wave_id=wave_id, draw_id=new_draw, methodology_version="sipas-2017",
                                  sample_hash="h", chunk=1, chunks=2, strata=[], units=[unit() for _ in range(3)]))
    await stack.bus.publish(late)
    await eventually(lambda: _handled(stack, "survey", late.id), timeout=30)
    assert len(await _forms(stack, wave_id)) == 10
    assert (await _pull(clients, vnpost, wave_id))["items"] == []


async def test_forms_made_before_forms_knew_their_draw_are_never_withdrawn(stack, clients):
    """Rows from before survey_0003 have no draw: the draw in use may be theirs (a replacement of
    one of their units carries its draw id), so a draw survey has not seen yet leaves them be."""
    legacy_units = [unit() for _ in range(3)]
    wave_id = await setup_wave(stack, legacy_units, code="SIPAS-2026-LEGACY")
    async with stack.apps["survey"].state.sessions() as session, session.begin():
        await session.execute(form.update().where(form.c.wave_id == str(wave_id)).values(draw_id=None))
    new_units = [unit() for _ in range(2)]
    await publish_sample(stack, wave_id, new_units)

    async def both():
        forms = await _forms(stack, wave_id)
        assert len(forms) == 5
        return forms
    forms = await eventually(both, timeout=30)
    assert {f["status"] for f in forms} == {"assigned"}
