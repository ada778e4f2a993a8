"""`llm-do run NAME INPUT --server URL` follows a run over HTTP and renders it, nested workers
indented under their `↳` line."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from e2e_support import ROOT, Service, service_env

from tests.fakes.fake_openai import FakeOpenAIServer


def _cli(
    service: Service, fake: FakeOpenAIServer, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "run", *args, "--server", service.url],
        cwd=ROOT,
        env=service_env(fake.base_url, tmp_path),
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_cli_run_against_the_server(
    service: Service, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    marker = f"cli-{uuid.uuid4().hex[:8]}"
    args = {"worker": "summarizer", "input_data": f"from the cli {marker}"}
    payload = json.dumps({"calls": [{"tool": "worker_call", "args": args}]})
    proc = _cli(service, fake_openai, tmp_path, "orchestrator", payload)
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")
    assert proc.returncode == 0, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith("● orchestrator · model openai-chat:fake · run ")
    assert "\x1b[" not in out  # not a terminal: no colours
    started = next(i for i, line in enumerate(lines) if line.startswith("  ↳ summarizer"))
    assert "(model openai-chat:fake)" in lines[started]
    child = lines[started + 1]
    assert child == f"  [summarizer] from the cli {marker}", out
    assert lines[started + 2] == "  ✓ summarizer succeeded"
    assert any(line.startswith("→ worker_call(") for line in lines[:started])
    assert f"Tool results: from the cli {marker}" in lines
    assert lines[-1].startswith("✓ completed · requests 3")


def test_cli_run_failure_exits_1(
    service: Service, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    proc = _cli(service, fake_openai, tmp_path, "plain", "hi", "--model", "nonsense")
    out = proc.stdout.decode("utf-8")
    assert proc.returncode == 1, out
    assert "✗ failed: model_error:" in out


def test_cli_unknown_worker(
    service: Service, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    proc = _cli(service, fake_openai, tmp_path, "no-such-worker", "hi")
    assert proc.returncode != 0
    assert "HTTP 404: worker_not_found" in proc.stderr.decode("utf-8")
