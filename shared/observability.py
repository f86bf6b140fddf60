"""Structured logs, Prometheus metrics and the correlation id.

Metrics are defined once here with a ``service`` label: in embedded mode five services share one
process (and one Prometheus registry), and the label keeps their series apart. Logs are JSON lines
carrying the service and the correlation id of the request or event being handled. Nothing here
ever takes personal data: log calls pass ids and counts, never names, phones or addresses.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import uuid

from prometheus_client import Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter

_correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)
_service: contextvars.ContextVar[str | None] = contextvars.ContextVar("service", default=None)

CORRELATION_HEADER = "X-Correlation-ID"


def current_correlation_id() -> str | None:
    return _correlation_id.get()


def set_correlation_id(value: str | None) -> contextvars.Token:
    return _correlation_id.set(value)


def reset_correlation_id(token: contextvars.Token) -> None:
    _correlation_id.reset(token)


def set_service(value: str | None) -> contextvars.Token:
    return _service.set(value)


def reset_service(token: contextvars.Token) -> None:
    _service.reset(token)


def new_correlation_id() -> str:
    return uuid.uuid4().hex


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = _correlation_id.get()
        if not getattr(record, "service", None):
            record.service = _service.get()
        return True


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(correlation_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(service)s] %(name)s: %(message)s"))
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log repeats what the metrics middleware already counts.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


# --- metrics (one definition each, labelled by service) ---
HTTP_REQUESTS = Counter(
    "sipas_http_requests_total", "HTTP requests handled", ["service", "method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "sipas_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTBOX_BACKLOG = Gauge("sipas_outbox_backlog", "Outbox events not yet published", ["service"])
EVENTS_PUBLISHED = Counter("sipas_events_published_total", "Events published from the outbox", ["service", "type"])
EVENTS_CONSUMED = Counter(
    "sipas_events_consumed_total", "Events handled by consumers", ["service", "consumer", "outcome"]
)
CONSUMER_LAG = Gauge("sipas_consumer_lag", "Messages waiting in a consumer's queue", ["service", "consumer"])
EVENTS_DEAD_LETTERED = Counter(
    "sipas_events_dead_lettered_total", "Events sent to the dead-letter queue", ["service", "consumer"]
)
