"""Forms from the sample, their status life cycle, replacements and the events survey emits."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from services.survey.form_code import validate_form_code
from services.survey.models import form
from shared.events import make_event
import pytest

from tests.conftest import eventually
from tests.survey.helpers import count_forms, outbox_events, publish_sample, replaced, setup_wave, unit

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_sample_drawn_creates_one_form_per_sampled_unit_idempotently(stack, clients):
    units = [unit() for _ in range(7)] + [unit(role="reserve", order=i) for i in range(3)]
    wave_id = await setup_wave(stack, units, chunks=3)
    assert await count_forms(stack, wave_id) == 7

    # A redelivered chunk and a re-published sample of the same draw change nothing (unit_id is unique).
    async with stack.apps["survey"].state.sessions() as session:
        draw_id = await session.scalar(select(form.c.draw_id).where(form.c.wave_id == str(wave_id)).limit(1))
    await publish_sample(stack, wave_id, units, chunks=2, draw_id=draw_id)
    ministry = await clients.key("ministry")
    r = await clients.survey.get("/v1/forms", params={"wave_id": str(wave_id)}, headers=ministry)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == 7
    codes = [f["form_code"] for f in page["items"]]
    assert len(set(codes)) == 7
    assert all(validate_form_code(c).status == "ok" for c in codes)
    assert all(f["status"] == "assigned" and f["role"] == "sample" for f in page["items"])
    assert await count_forms(stack, wave_id) == 7

    created = [e for e in await outbox_events(stack, "sipas.survey.form.status_changed.v1", wave_id)]
    assert len(created) == 7 and {e["status"] for e in created} == {"assigned"}


async def test_status_moves_are_validated_and_kept_in_history(stack, clients):
    units = [unit() for _ in range(2)]
    wave_id = await setup_wave(stack, units)
    ministry = await clients.key("ministry")
    code = (await clients.survey.get("/v1/forms", params={"wave_id": str(wave_id)}, headers=ministry)).json()["items"][0]["form_code"]

    r = await clients.survey.post(f"/v1/forms/{code}/status", json={"status": "dispatched"}, headers=ministry)
    assert r.status_code == 200, r.text
    r = await clients.survey.post(f"/v1/forms/{code}/status", json={"status": "refused", "reason": "từ chối"}, headers=ministry)
    assert r.status_code == 200, r.text
    # refused → dispatched does not exist
    r = await clients.survey.post(f"/v1/forms/{code}/status", json={"status": "dispatched"}, headers=ministry)
    assert r.status_code == 409
    assert r.json()["type"] == "urn:sipas:problem:invalid-state"
    r = await clients.survey.post(f"/v1/forms/{code}/status", json={"status": "collected"}, headers=ministry)
    assert r.status_code == 422

    detail = (await clients.survey.get(f"/v1/forms/{code}", headers=ministry)).json()
    assert [(h["from_status"], h["to_status"]) for h in detail["history"]] == [
        (None, "assigned"), ("assigned", "dispatched"), ("dispatched", "refused")]

    asked = [e for e in await outbox_events(stack, "sipas.survey.replacement.requested.v1", wave_id)]
    assert [(a["form_code"], a["reason"]) for a in asked] == [(code, "refused")]

    # Sampling releases the next reserve unit: a new form for it, the old one is replaced.
    old_unit = detail["unit_id"]
    new = unit(role="reserve", order=0)
    await stack.bus.publish(make_event(replaced(wave_id, uuid.UUID(old_unit), new)))

    async def done():
        assert (await clients.survey.get(f"/v1/forms/{code}", headers=ministry)).json()["status"] == "replaced"
        assert await count_forms(stack, wave_id) == 3

    await eventually(done)
    async with stack.apps["survey"].state.sessions() as session:
        row = (await session.execute(select(form).where(form.c.unit_id == str(new.unit_id)))).mappings().one()
    assert row["role"] == "reserve" and row["status"] == "assigned" and row["replaces_form_id"] is not None


async def test_unknown_form_and_other_province(stack, clients):
    wave_id = await setup_wave(stack, [unit(province="01"), unit(province="79")])
    ministry = await clients.key("ministry")
    hanoi = await clients.key("province", "01")
    r = await clients.survey.get("/v1/forms/S26-22222-2", headers=ministry)
    assert r.status_code == 404
    items = (await clients.survey.get("/v1/forms", params={"wave_id": str(wave_id)}, headers=hanoi)).json()["items"]
    assert [f["province_code"] for f in items] == ["01"]
    hcm = [f for f in (await clients.survey.get("/v1/forms", params={"wave_id": str(wave_id)}, headers=ministry)).json()["items"]
           if f["province_code"] == "79"][0]["form_code"]
    assert (await clients.survey.get(f"/v1/forms/{hcm}", headers=hanoi)).status_code == 404
    r = await clients.survey.post(f"/v1/forms/{hcm}/status", json={"status": "dispatched"}, headers=hanoi)
    assert r.status_code == 404
