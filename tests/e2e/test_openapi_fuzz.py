"""Schemathesis against the service's own /openapi.json, over a real socket: no generated
request, valid or not, gets a 5xx or a body that breaks the documented schema."""

from __future__ import annotations

import pytest
import schemathesis
from e2e_support import WORKERS, run_service
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.fakes.fake_openai import FakeOpenAIServer


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    with (
        FakeOpenAIServer() as fake,
        run_service(
            workers=WORKERS,
            data_dir=tmp_path_factory.mktemp("fuzz"),
            fake_base_url=fake.base_url,
            LLM_DO_APPROVAL="deny_all",
        ) as svc,
    ):
        yield svc


def test_no_generated_request_breaks_the_service(live):
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case):
            case.call_and_validate(base_url=live.url, timeout=30, checks=checks)
            label = case.operation.label
            calls[label] = calls.get(label, 0) + 1

        fuzz()
    # every operation was called; those with parameters many times
    assert len(calls) == len(operations) and max(calls.values()) >= 10, calls
    assert "Traceback" not in live.output()
