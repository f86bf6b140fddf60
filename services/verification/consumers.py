"""Events the verification service consumes.

* waves (sampling): the wave replica (status ``closed`` makes verification final);
* sample (sampling): ``sample.drawn`` chunks and ``unit.replaced`` keep a copy of the sample
  (which units are in it, with their design fields: stratum, cluster ``psu``/``ssu``, inclusion
  probability ``pi``, base weight) to reject forms of units outside it and to put the design
  fields on accepted forms; ``sample.voided`` drops the units of a draw the ministry reset;
* forms (survey): ``form.status_changed`` feeds the quality counts (dispatched, enumerator);
* responses (survey): ``response.submitted`` is screened and decided at once;
* data entry (survey): ``data_entry.compared`` feeds entry verification.

Screening needs the wave's methodology, read from survey over HTTP (``fetch_methodology``), so
these effects need the app: ``make_consumers(get_app)`` binds them to one app (``create_app``
does it; nothing is a module global).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from services.verification import service
from services.verification.models import wave
from shared.service import Consumer
from shared.waves import WAVE_EVENTS, wave_replica_effect

SAMPLE_EVENTS = ["sipas.sampling.sample.drawn.v1", "sipas.sampling.unit.replaced.v1", "sipas.sampling.sample.voided.v1"]
FORM_EVENTS = ["sipas.survey.form.status_changed.v1"]
RESPONSE_EVENTS = ["sipas.survey.response.submitted.v1"]
ENTRY_EVENTS = ["sipas.survey.data_entry.compared.v1"]


def make_consumers(get_app: Callable[[], FastAPI | None]) -> list[Consumer]:
    def app() -> FastAPI:
        bound = get_app()
        if bound is None:  # only SPEC's template consumers are unbound; they never run
            raise RuntimeError("verification consumers are not bound to an app")
        return bound

    async def on_sample(session, payload, envelope) -> None:
        the_app = app()
        if envelope.type == "sipas.sampling.sample.voided.v1":
            await service.take_sample_voided(session, payload)
            return
        if envelope.type == "sipas.sampling.sample.drawn.v1":
            units = await service.take_sample_chunk(session, payload)
        else:
            units = await service.take_replacement(session, payload)
        # Responses of these units that arrived before the sample did were rejected as not in
        # the sample: screen them again now.
        await service.rescreen_units(the_app, session, the_app.state.tables, str(payload.wave_id), units)

    async def on_form(session, payload, envelope) -> None:
        await service.take_form_status(session, payload, envelope.time)

    async def on_response(session, payload, envelope) -> None:
        the_app = app()
        await service.take_response(the_app, session, the_app.state.tables, payload)

    async def on_entry(session, payload, envelope) -> None:
        await service.take_entry_comparison(session, payload, envelope.time)

    return [
        Consumer("waves", WAVE_EVENTS, wave_replica_effect(wave)),
        Consumer("sample", SAMPLE_EVENTS, on_sample),
        Consumer("forms", FORM_EVENTS, on_form),
        Consumer("responses", RESPONSE_EVENTS, on_response),
        Consumer("entries", ENTRY_EVENTS, on_entry),
    ]


# The queues and bindings (for ``migrate``'s topology); ``create_app`` binds its own copy.
CONSUMERS = make_consumers(lambda: None)
