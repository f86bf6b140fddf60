"""Builders for verification tests: upstream events published on the test bus as sampling and
survey would, and readers of what verification announced (its outbox)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select

from shared.contracts.sampling import SampleDrawn, SampledUnit, StratumSummary, UnitReplaced, WaveCreated, WaveUpdated
from shared.contracts.survey import DataEntryCompared, FormStatusChanged, ResponseSubmitted
from shared.events import Envelope, make_event
from shared.methodology import fetch_methodology
from shared.outbox import row_envelopes
from tests.conftest import eventually

METHODOLOGY = "sipas-2017"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Wave:
    """A wave with a sample, driven through the bus like the upstream services would."""

    def __init__(self, stack, clients, *, province_code: str | None = None, units: int = 0,
                 provinces: tuple[str, ...] = ("01",)) -> None:
        self.stack = stack
        self.clients = clients
        self.id = uuid.uuid4()
        self.province_code = province_code
        self.draw_id = uuid.uuid4()
        self.units: list[SampledUnit] = []
        self.form_of: dict[str, str] = {}
        self._n = 0
        self.provinces = provinces

    @property
    def wave_id(self) -> str:
        return str(self.id)

    async def publish(self, data) -> Envelope:
        envelope = make_event(data)
        await self.stack.bus.publish(envelope)
        return envelope

    def wave_data(self, status: str = "in_field", cls=WaveCreated):
        return cls(
            wave_id=self.id, code=f"W-{self.id.hex[:8]}", name="Test wave",
            scope="provincial" if self.province_code else "national", province_code=self.province_code,
            year=2026, methodology_version=METHODOLOGY, fieldwork_start=None, fieldwork_end=None, status=status,
        )

    async def create(self, status: str = "in_field") -> None:
        await self.publish(self.wave_data(status))
        ministry = await self.clients.key("ministry")

        async def seen():
            r = await self.clients.verification.get(f"/v1/waves/{self.wave_id}", headers=ministry)
            assert r.status_code == 200 and r.json()["status"] == status, r.text

        await eventually(seen)

    async def set_status(self, status: str) -> None:
        await self.publish(self.wave_data(status, WaveUpdated))
        ministry = await self.clients.key("ministry")

        async def seen():
            r = await self.clients.verification.get(f"/v1/waves/{self.wave_id}", headers=ministry)
            assert r.json()["status"] == status

        await eventually(seen)

    def new_unit(self, province: str = "01", stratum: str | None = None, cluster: str | None = None) -> SampledUnit:
        self._n += 1
        unit = SampledUnit(
            unit_id=uuid.uuid4(), stratum=stratum or f"{province}|commune", role="sample", order=self._n,
            province_code=province, commune_code=f"{province}001", psu=cluster or f"{province}001", ssu=None,
            pi=0.05, weight=20.0, level="commune", field="land",
        )
        self.units.append(unit)
        self.form_of[str(unit.unit_id)] = f"F{self._n:06d}"
        return unit

    async def draw(self, units: list[SampledUnit], *, chunk_size: int = 500, wait: bool = True) -> None:
        chunks = [units[i:i + chunk_size] for i in range(0, len(units), chunk_size)] or [[]]
        strata = sorted({u.stratum for u in units})
        for index, part in enumerate(chunks):
            await self.publish(SampleDrawn(
                wave_id=self.id, draw_id=self.draw_id, methodology_version=METHODOLOGY, sample_hash="h" * 64,
                chunk=index, chunks=len(chunks),
                strata=[StratumSummary(stratum=s, population=1000, n=len(units), n_reserve=0) for s in strata]
                if index == 0 else [],
                units=part,
            ))
        if wait:
            app = self.stack.apps["verification"]
            from services.verification.models import SampleUnit

            async def stored():
                async with app.state.sessions() as session:
                    got = (await session.scalars(select(SampleUnit.unit_id).where(
                        SampleUnit.wave_id == self.wave_id))).all()
                assert {str(u.unit_id) for u in units} <= set(got)

            await eventually(stored)

    async def replace(self, old: SampledUnit, new: SampledUnit | None, reason: str = "refused") -> Envelope:
        return await self.publish(UnitReplaced(wave_id=self.id, replaced_unit_id=old.unit_id, reason=reason,
                                               replacement=new, reserve_exhausted=new is None))

    def form_code(self, unit: SampledUnit) -> str:
        return self.form_of[str(unit.unit_id)]

    def response(self, unit: SampledUnit, answers: dict[str, Any], *, enumerator: str | None = "E1",
                 channel: str = "paper", duration: float | None = None, revision: int = 1,
                 response_id: uuid.UUID | None = None, form_code: str | None = None) -> ResponseSubmitted:
        return ResponseSubmitted(
            wave_id=self.id, form_code=form_code or self.form_code(unit), unit_id=unit.unit_id,
            response_id=response_id or uuid.uuid5(self.id, f"{unit.unit_id}"), revision=revision,
            stratum=unit.stratum, province_code=unit.province_code, commune_code=unit.commune_code,
            channel=channel, enumerator_id=enumerator, methodology_version=METHODOLOGY, answers=answers,
            duration_seconds=duration, submitted_at=now(),
        )

    async def submit(self, unit: SampledUnit, answers: dict[str, Any], **kw) -> Envelope:
        return await self.publish(self.response(unit, answers, **kw))

    async def status(self, unit: SampledUnit, status: str, enumerator: str | None = "E1") -> Envelope:
        return await self.publish(FormStatusChanged(
            wave_id=self.id, form_code=self.form_code(unit), unit_id=unit.unit_id, province_code=unit.province_code,
            commune_code=unit.commune_code, enumerator_id=enumerator, status=status,
        ))

    async def compared(self, unit: SampledUnit, operators: list[str], disagreements: list[str],
                       resolved: bool = False) -> Envelope:
        return await self.publish(DataEntryCompared(
            wave_id=self.id, form_code=self.form_code(unit), unit_id=unit.unit_id, operators=operators,
            disagreements=disagreements, resolved_by_third_entry=resolved,
        ))

    async def form(self, unit_or_code, headers: dict[str, str]) -> dict:
        code = unit_or_code if isinstance(unit_or_code, str) else self.form_code(unit_or_code)
        r = await self.clients.verification.get(f"/v1/waves/{self.wave_id}/forms/{code}", headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    async def settled(self, unit, headers, state: str | None = None, published: str | None = None,
                      version: int | None = None) -> dict:
        """Wait until the form shows the given state / published decision / decision version."""

        async def check():
            code = unit if isinstance(unit, str) else self.form_code(unit)
            r = await self.clients.verification.get(f"/v1/waves/{self.wave_id}/forms/{code}", headers=headers)
            assert r.status_code == 200, r.text
            form = r.json()["form"]
            if state is not None:
                assert form["state"] == state, form
            if published is not None:
                assert form["published"] == published, form
            if version is not None:
                assert form["decision_version"] == version, form
            return r.json()

        return await eventually(check)


async def methodology(stack):
    return await fetch_methodology(stack.apps["verification"], METHODOLOGY)


def good_answers(m, offset: int = 0) -> dict[str, Any]:
    """Every satisfaction item answered, codes varying (not straight-lined)."""
    return {code: 3 + (i + offset) % 3 for i, code in enumerate(m.satisfaction_items())}


async def decisions(stack, wave_id: str | None = None, form_code: str | None = None) -> list[dict]:
    """response.accepted / response.rejected verification announced (its outbox), in order."""
    app = stack.apps["verification"]
    outbox = app.state.tables["outbox"]
    async with app.state.sessions() as session:
        rows = (await session.execute(select(outbox.c.type, outbox.c.envelope).order_by(outbox.c.seq))).all()
    out = []
    for type_, body in rows:
        if ".response." not in type_:
            continue
        [envelope] = row_envelopes(body)
        data = envelope["data"]
        if wave_id and data["wave_id"] != wave_id:
            continue
        if form_code and data["form_code"] != form_code:
            continue
        out.append({"type": type_.split(".")[-2], **data})
    return out


async def outbox_envelopes(stack, event_type: str) -> list[dict]:
    app = stack.apps["verification"]
    outbox = app.state.tables["outbox"]
    async with app.state.sessions() as session:
        bodies = (await session.scalars(
            select(outbox.c.envelope).where(outbox.c.type == event_type).order_by(outbox.c.seq)
        )).all()
    return [envelope for body in bodies for envelope in row_envelopes(body)]


def accepted_set(events: list[dict]) -> set[str]:
    """What a consumer (indexing) holds: per form the highest decision_version, if accepted."""
    latest: dict[str, dict] = {}
    for e in events:
        if e["form_code"] not in latest or e["decision_version"] > latest[e["form_code"]]["decision_version"]:
            latest[e["form_code"]] = e
    return {code for code, e in latest.items() if e["type"] == "accepted"}
