"""Event contracts, one module per producing service.

Importing this package registers every contract in ``shared.events.CONTRACTS``. The AsyncAPI
document in ``docs/events/asyncapi.json`` is generated from them (``python -m shared.contracts``)
and a test keeps it up to date.
"""

from __future__ import annotations

import json
from typing import Any

from shared.contracts import indexing, publication, sampling, survey, verification  # noqa: F401  (registers)
from shared.events import CONTRACTS, Envelope


def asyncapi_document() -> dict[str, Any]:
    """AsyncAPI 3.0 document describing every event on the exchange."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    envelope_schema = Envelope.model_json_schema()
    schemas["Envelope"] = envelope_schema
    for event_type in sorted(CONTRACTS):
        model = CONTRACTS[event_type]
        name = event_type.replace(".", "_")
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas[def_name] = definition
        schemas[model.__name__] = schema
        messages[name] = {
            "name": event_type,
            "title": model.__name__,
            "summary": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else "",
            "description": (model.__doc__ or "").strip(),
            "contentType": "application/json",
            "payload": {
                "allOf": [
                    {"$ref": "#/components/schemas/Envelope"},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": event_type},
                            "data": {"$ref": f"#/components/schemas/{model.__name__}"},
                        },
                    },
                ]
            },
        }
        channels[name] = {
            "address": event_type,
            "description": f"Routing key {event_type} on the topic exchange.",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"publish_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"Published by the {model.producer} service through its outbox.",
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "SIPAS events",
            "version": "1",
            "description": "Events exchanged by the five SIPAS services on one durable topic "
            "exchange. Every message is a CloudEvents-style envelope; the routing key is the "
            "event type. Payloads carry no personal data.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {"host": "rabbitmq:5672", "protocol": "amqp", "description": "Production broker"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def render_asyncapi() -> str:
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
