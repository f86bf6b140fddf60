"""Every service's OpenAPI document, checked against the real running stack.

The stack runs as ``python -m services run`` in its own process (the README's command), on the
test tier's backend. Schemathesis generates requests for every operation of every service from
its OpenAPI document and checks that nothing answers 5xx and that every response matches its
own schema, status codes and content types. As later issues add operations, this test covers them
with no change.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
import schemathesis
from schemathesis.checks import positive_data_acceptance
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate

from shared.settings import SERVICES
from tests.conftest import BUS_URL, DATABASE_URL, ON_SERVICES, drop_backend
from tests.support.stack_process import StackProcess, stack_env


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    env, urls, uid = stack_env(
        tmp, database_url=DATABASE_URL if ON_SERVICES else None, bus_url=BUS_URL if ON_SERVICES else None
    )
    stack = StackProcess(env, urls, log_dir=tmp)
    try:
        stack.start("embedded")
        stack.ministry_key = stack.issue_key("ministry")
        yield stack
    finally:
        codes = stack.stop()
        if ON_SERVICES:
            from shared.settings import PlatformSettings
            from tests.conftest import all_queues

            platform = PlatformSettings(
                schema_prefix=f"t{uid}_", exchange=f"sipas.test.{uid}", queue_prefix=f"test.{uid}"
            )
            asyncio.run(drop_backend(platform, all_queues(platform)))
        assert codes == [0], f"the stack did not stop cleanly: {codes}\n{stack.logs()}"


def test_every_service_serves_a_valid_openapi_document(running_stack):
    for name in SERVICES:
        r = httpx.get(f"{running_stack.urls[name]}/openapi.json")
        assert r.status_code == 200
        doc = r.json()
        validate(doc)  # raises on an invalid OpenAPI document
        assert doc["info"]["title"].lower().startswith("sipas")
        assert "/healthz" in doc["paths"] and "/readyz" in doc["paths"] and "/metrics" in doc["paths"]
        docs = httpx.get(f"{running_stack.urls[name]}/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_metrics_are_labelled_by_service(running_stack):
    httpx.get(f"{running_stack.urls['survey']}/healthz")
    body = httpx.get(f"{running_stack.urls['survey']}/metrics").text
    assert 'sipas_http_requests_total{method="GET",route="/healthz",service="survey",status="200"}' in body
    assert 'sipas_outbox_backlog{service="survey"}' in body


@pytest.mark.parametrize("service", SERVICES)
def test_no_operation_answers_5xx_or_breaks_its_schema(running_stack, service):
    """Property-based: for every operation, generated requests (valid and invalid) never get a
    5xx and every response conforms to the operation's documented responses.

    ``positive_data_acceptance`` is left out on purpose: rules that JSON Schema cannot state
    (cross-field rules such as "a national wave has no province", references to things that
    must exist) rightly reject some schema-valid requests with a problem document. Invalid
    requests must still be rejected (``negative_data_rejection`` stays on)."""
    schema = schemathesis.openapi.from_url(f"{running_stack.urls[service]}/openapi.json")
    headers = {"X-API-Key": running_stack.ministry_key}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "no operations found"
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            case.call_and_validate(headers=headers, timeout=30, excluded_checks=[positive_data_acceptance])

        try:
            check()
        except Exception as exc:  # collect, so one run reports every failing operation
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
