"""The README's curl examples work as written: each ```sh block that talks to the service is
run by bash against a real `llm-do serve` (port swapped for a free one) in a copy of the
project, and must succeed with no error body in its output."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import ROOT, run_service

BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def _blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b for b in BLOCK.findall(text) if "127.0.0.1:8000/workers" in b or "./dev llm-do" in b]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the README's commands touch, so they write nothing into the checkout."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("workers", "files", "examples"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("generated"))
    return root


@pytest.fixture(scope="module")
def readme_service(project: Path, fake_openai):
    with run_service(
        workers=project / "workers",
        data_dir=project / ".llm-do",
        fake_base_url=fake_openai.base_url,
    ) as service:
        yield service


def test_readme_has_curl_examples():
    blocks = _blocks()
    assert len(blocks) >= 4
    assert any("approvals" in b for b in blocks), "the approval walkthrough is missing"


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_block_works_as_written(index: int, project: Path, readme_service):
    script = _blocks()[index]
    port = readme_service.url.rsplit(":", 1)[1]
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = script.replace("./dev llm-do", f"{sys.executable} -m app.cli")
    script = script.replace("/tmp/llm-do-", f"{project}/tmp-llm-do-")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=project,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"README block {index} failed:\n{script}\n---\n{output}"
    assert '"error":{' not in output, f"README block {index} printed an error:\n{output}"
    if "text/event-stream" in script:
        assert "event: run.completed" in output, output
    if "/cancel" in script:
        assert '"status":"cancelled"' in output, output
    elif '"status":' in output:
        assert '"status":"succeeded"' in output, output
