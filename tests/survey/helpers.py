"""Upstream events for survey tests: a wave and its sample, published on the stack's real bus as
the sampling service would."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from services.survey.models import form
from shared.contracts.sampling import SampledUnit, SampleDrawn, StratumSummary, UnitReplaced, WaveCreated, WaveUpdated
from shared.events import make_event
from shared.outbox import row_envelopes
from tests.conftest import eventually


def unit(province: str = "01", stratum: str = "01-urban", role: str = "sample", order: int = 0) -> SampledUnit:
    return SampledUnit(
        unit_id=uuid.uuid4(), stratum=stratum, role=role, order=order, province_code=province,
        commune_code=f"{province}001", psu=f"{province}-psu", ssu=None, pi=0.1, weight=10.0,
    )


def wave_event(wave_id: uuid.UUID, cls=WaveCreated, *, code: str = "SIPAS-2026", status: str = "sampled",
               methodology: str = "sipas-2017", year: int = 2026):
    return cls(
        wave_id=wave_id, code=code, name=f"Đợt {code}", scope="national", province_code=None, year=year,
        methodology_version=methodology, fieldwork_start=None, fieldwork_end=None, status=status,
    )


async def count_forms(stack, wave_id) -> int:
    async with stack.apps["survey"].state.sessions() as session:
        return await session.scalar(select(func.count()).select_from(form).where(form.c.wave_id == str(wave_id))) or 0


async def setup_wave(stack, units: list[SampledUnit], *, code: str = "SIPAS-2026", methodology: str = "sipas-2017",
                     chunks: int = 1, year: int = 2026) -> uuid.UUID:
    """A wave known to survey, with its sample drawn (in ``chunks`` events) and forms created."""
    wave_id = uuid.uuid4()
    await stack.bus.publish(make_event(wave_event(wave_id, code=code, methodology=methodology, year=year)))

    async def known():
        got = await stack.apps["survey"].state.peers["survey"].get(
            f"/v1/waves/{wave_id}", headers={"X-Internal-Token": stack.apps["survey"].state.settings.platform.internal_token})
        assert got.status_code == 200

    await eventually(known)
    await publish_sample(stack, wave_id, units, chunks=chunks, methodology=methodology)
    await eventually(lambda: _expect(stack, wave_id, len([u for u in units if u.role == "sample"])))
    return wave_id


async def publish_sample(stack, wave_id, units, *, chunks: int = 1, methodology: str = "sipas-2017",
                         draw_id: uuid.UUID | str | None = None) -> None:
    """The sample as ``sample.drawn`` chunks of one draw: a new draw unless ``draw_id`` names one
    (a redelivery; a new draw of the wave withdraws the assigned forms of the older ones)."""
    draw_id = draw_id or uuid.uuid4()
    size = -(-len(units) // chunks)
    for i in range(chunks):
        await stack.bus.publish(make_event(SampleDrawn(
            wave_id=wave_id, draw_id=draw_id, methodology_version=methodology, sample_hash="h", chunk=i, chunks=chunks,
            strata=[StratumSummary(stratum="01-urban", population=1000, n=len(units), n_reserve=5)] if i == 0 else [],
            units=units[i * size:(i + 1) * size],
        )))


async def _expect(stack, wave_id, n):
    got = await count_forms(stack, wave_id)
    assert got == n, f"{got} forms, want {n}"


async def close_wave(stack, wave_id, code="SIPAS-2026"):
    await stack.bus.publish(make_event(wave_event(wave_id, WaveUpdated, code=code, status="closed")))


def replaced(wave_id, old_unit, new_unit=None, *, exhausted=False, reason="refused") -> UnitReplaced:
    return UnitReplaced(wave_id=wave_id, replaced_unit_id=old_unit, reason=reason, replacement=new_unit,
                        reserve_exhausted=exhausted)


def full_answers(code: int = 4) -> dict:
    from services.survey.documents import load_builtin

    m = load_builtin("sipas-2017")
    answers: dict = {item.code: code for item in m.items() if item.type == "likert5"}
    for item in m.items():
        if item.type != "likert5":
            answers[item.code] = None
    answers[m.expectation.code] = [o.code for o in m.expectation.options][:2]
    for q in m.profile:
        answers[q.code] = q.options[0].code
    return answers


async def outbox_events(stack, event_type: str, wave_id) -> list[dict]:
    """Payloads of one wave's events survey staged in its outbox, oldest first."""
    outbox = stack.apps["survey"].state.tables["outbox"]
    async with stack.apps["survey"].state.sessions() as session:
        rows = await session.scalars(select(outbox.c.envelope).order_by(outbox.c.seq))
        return [e["data"] for body in rows for e in row_envelopes(body)
                if e["type"] == event_type and e["data"]["wave_id"] == str(wave_id)]


def unknown_code() -> str:
    """A well-formed code (right check character) that no wave hands out (prefix ZZZ)."""
    from services.survey.form_code import make_form_code

    return make_form_code("ZZZ", 12345)
