"""End-to-end fixtures: the fake OpenAI server (a thread in this process) and `llm-do serve`
(a subprocess) whose OpenAI client is pointed at it, using the workers in tests/e2e/workers."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from e2e_support import ROOT, WORKERS, Service, run_service

if str(ROOT) not in sys.path:  # `tests.fakes` is imported from the project root
    sys.path.insert(0, str(ROOT))

from tests.fakes.fake_openai import FakeOpenAIServer


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


@pytest.fixture(scope="session")
def service(
    fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with run_service(
        workers=WORKERS,
        data_dir=tmp_path_factory.mktemp("llm-do-data"),
        fake_base_url=fake_openai.base_url,
    ) as svc:
        yield svc
    # Whatever the tests did, the service never logged a stack trace (no 500s, no task errors).
    assert "Traceback" not in svc.output(), svc.output()
