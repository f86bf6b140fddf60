"""Event contracts: the envelope, the registry, and the committed AsyncAPI document."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.contracts import render_asyncapi
from shared.contracts.sampling import WaveCreated
from shared.events import CONTRACTS, Envelope, make_event, topic_matches

ROOT = Path(__file__).resolve().parents[2]


def test_committed_asyncapi_document_is_up_to_date():
    committed = (ROOT / "docs" / "events" / "asyncapi.json").read_text(encoding="utf-8")
    assert committed == render_asyncapi(), "run `make asyncapi` and commit docs/events/asyncapi.json"


def test_every_contract_is_versioned_and_named_after_its_producer():
    assert CONTRACTS
    for event_type, model in CONTRACTS.items():
        parts = event_type.split(".")
        assert parts[0] == "sipas" and parts[1] == model.producer
        assert parts[-1].startswith("v") and parts[-1][1:].isdigit()


def _wave(**extra):
    return dict(wave_id=uuid.uuid4(), code="SIPAS-2026", name="SIPAS 2026", scope="national", province_code=None,
                year=2026, methodology_version="sipas-2017", fieldwork_start=None, fieldwork_end=None,
                status="draft", **extra)


def test_envelope_round_trips_and_carries_subject_and_correlation():
    env = make_event(WaveCreated(**_wave()), correlation_id="abc")
    back = Envelope.model_validate_json(env.model_dump_json())
    assert back == env
    assert back.subject == str(back.payload().wave_id)
    assert back.correlation_id == "abc"
    assert back.source == "/sipas/sampling"
    assert back.time.tzinfo is not None


def test_contracts_refuse_fields_they_do_not_declare():
    """A payload cannot smuggle a field (say, a phone number) that its contract does not have."""
    with pytest.raises(ValidationError):
        WaveCreated(**_wave(phone="0912345678"))


@pytest.mark.parametrize(
    "pattern,key,expected",
    [
        ("sipas.sampling.wave.#", "sipas.sampling.wave.created.v1", True),
        ("sipas.sampling.wave.*", "sipas.sampling.wave.created.v1", False),
        ("sipas.*.wave.created.v1", "sipas.sampling.wave.created.v1", True),
        ("#", "anything.at.all", True),
        ("sipas.#.v1", "sipas.v1", True),
        ("sipas.sampling.#", "sipas.survey.form.collected.v1", False),
        ("a.*", "a", False),
    ],
)
def test_topic_matching_follows_amqp(pattern, key, expected):
    assert topic_matches(pattern, key) is expected


PERSONAL = {"name", "full_name", "phone", "email", "address", "ethnicity", "household", "person", "contact",
            "birth", "id_number", "cccd"}


def _field_names(model, seen=None):
    seen = seen or set()
    if model in seen:
        return set()
    seen.add(model)
    names = set()
    for fname, field in model.model_fields.items():
        names.add(fname)
        for arg in getattr(field.annotation, "__args__", ()) + (field.annotation,):
            if isinstance(arg, type) and hasattr(arg, "model_fields"):
                names |= _field_names(arg, seen)
    return names


def test_no_contract_has_a_personal_data_field():
    for event_type, model in CONTRACTS.items():
        names = _field_names(model)
        if ".wave." in event_type:
            names.discard("name")  # a wave's own name ("SIPAS 2026") is not personal data
        leaks = {n for n in names if any(p in n for p in PERSONAL)}
        assert not leaks, f"{event_type} has personal-data-like fields {leaks}"
