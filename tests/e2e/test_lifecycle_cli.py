"""The CLI's run lifecycle commands against a real server: `run --background` prints the run id,
`follow RUN_ID --after N` prints the rest and exits 0, `runs` lists it, `cancel` cancels."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from e2e_support import ROOT, Service, fake_log, service_env

from tests.fakes.fake_openai import FakeOpenAIServer


def cli(
    fake: FakeOpenAIServer, tmp_path: Path, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=service_env(fake.base_url, tmp_path),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def replay(service: Service, run_id: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{service.url}/runs/{run_id}/events", timeout=10)
    return [json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data:")]


def test_background_follow_and_runs(
    service: Service, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    text = f"cli-bg-{uuid.uuid4().hex[:8]} " + " ".join(f"w{i}" for i in range(10))
    started = cli(
        fake_openai,
        tmp_path,
        *("run", "plain", text, "--server", service.url, "--background"),
        *("--model", "openai-chat:fake-slow"),
    )
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert len(run_id) == 32 and run_id.isalnum(), started.stdout
    assert f"llm-do follow {run_id}" in started.stderr

    followed = cli(
        fake_openai, tmp_path, "follow", run_id, "--server", service.url, "--after", "2", "--json"
    )
    assert followed.returncode == 0, followed.stderr
    printed = [json.loads(line) for line in followed.stdout.splitlines()]
    assert printed == replay(service, run_id)[2:]  # exactly the events after id 2
    assert printed[0]["seq"] == 3
    assert printed[-1]["type"] == "run.completed" and printed[-1]["output"] == text

    rendered = cli(fake_openai, tmp_path, "follow", run_id, "--server", service.url, "--after", "2")
    assert rendered.returncode == 0, rendered.stderr
    lines = rendered.stdout.splitlines()
    assert not lines[0].startswith("●")  # run.started (id 1) is not repeated
    assert lines[0] == text
    assert lines[-1].startswith("✓ completed · requests 1")

    listed = cli(fake_openai, tmp_path, "runs", "--server", service.url, "--worker", "plain")
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(run_id)]
    assert " succeeded " in row and " plain " in row
    assert text[:20] in row


def test_cancel_a_running_background_run(
    service: Service, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    marker = f"cli-cancel-{uuid.uuid4().hex[:8]}"
    started = cli(
        fake_openai,
        tmp_path,
        *("run", "plain", marker, "--server", service.url, "--background"),
        *("--model", "openai-chat:fake-hang"),
    )
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()

    cancelled = cli(fake_openai, tmp_path, "cancel", run_id, "--server", service.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == "cancelled"
    events = replay(service, run_id)
    assert events[-1]["type"] == "run.cancelled"

    again = cli(fake_openai, tmp_path, "cancel", run_id, "--server", service.url)
    assert again.returncode != 0
    assert "HTTP 409: run_already_ended" in again.stderr

    # A follower of the cancelled run exits non-zero (the run did not complete).
    followed = cli(fake_openai, tmp_path, "follow", run_id, "--server", service.url)
    assert followed.returncode == 1, followed.stdout
    assert followed.stdout.splitlines()[-1].startswith("✗ cancelled:")
    assert fake_log(fake_openai.url)["requests"]
