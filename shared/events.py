"""The event envelope and the registry of event contracts.

Every event is a CloudEvents-style envelope around a versioned, typed payload. The ``type`` is
``sipas.<service>.<name>.v<N>`` and doubles as the RabbitMQ routing key, so consumers bind with
topic patterns such as ``sipas.sampling.wave.#``. Payloads never carry personal data: the
contracts are pydantic models with ``extra="forbid"``, so a field that is not in the contract
cannot slip into an event.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from shared.observability import current_correlation_id

SPEC_VERSION = "1.0"


class EventData(BaseModel):
    """Base of every event payload. Subclasses set ``event_type`` and are registered."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event_type: ClassVar[str]
    # Whose event it is: the service that publishes it.
    producer: ClassVar[str]

    def subject(self) -> str | None:
        """The entity the event is about (CloudEvents ``subject``), e.g. the wave id."""
        return None


class EventPart(BaseModel):
    """A structured value inside a payload (same rules: no undeclared fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Envelope(BaseModel):
    """CloudEvents 1.0 attributes we use, plus ``correlation_id`` to follow one request across
    services. ``data`` stays a plain dict on the wire; ``payload()`` gives back the typed model."""

    model_config = ConfigDict(extra="forbid")

    specversion: str = SPEC_VERSION
    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    source: str
    time: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    subject: str | None = None
    correlation_id: str | None = None
    datacontenttype: str = "application/json"
    data: dict[str, Any]

    def payload(self) -> EventData:
        return CONTRACTS[self.type].model_validate(self.data)


CONTRACTS: dict[str, type[EventData]] = {}


def contract(cls: type[EventData]) -> type[EventData]:
    """Register an event payload model under its type (class decorator)."""
    if cls.event_type in CONTRACTS:
        raise ValueError(f"event type {cls.event_type} registered twice")
    if not cls.event_type.startswith(f"sipas.{cls.producer}."):
        raise ValueError(f"{cls.event_type} must start with sipas.{cls.producer}.")
    CONTRACTS[cls.event_type] = cls
    return cls


def make_event(data: EventData, *, correlation_id: str | None = None) -> Envelope:
    return Envelope(
        type=data.event_type,
        source=f"/sipas/{data.producer}",
        subject=data.subject(),
        correlation_id=correlation_id or current_correlation_id(),
        data=data.model_dump(mode="json"),
    )


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on '.', '*' is one word, '#' zero or more.

    The in-process bus uses it so that a binding means exactly what it means on RabbitMQ.
    """
    p, k = pattern.split("."), routing_key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, jj) for jj in range(j, len(k) + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and match(i + 1, j + 1)

    return match(0, 0)
