"""A page served from another origin, in a real browser, cannot start a run or answer an
approval on the service (issue 6): its requests are refused before anything happens."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from e2e_support import WORKERS, Service, run_service

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "browser tests need Debian's Chromium at /usr/bin/chromium", allow_module_level=True
    )

from playwright.sync_api import sync_playwright  # noqa: E402

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def evil_page(service: str, approval_url: str) -> bytes:
    """What a hostile page would try: a JSON fetch, a no-cors text/plain fetch, a form post."""
    return f"""<!doctype html><html><body>
<form id="f" method="post" action="{service}/workers/plain/run" enctype="text/plain">
  <input name='{{"input": "from a form", "x": "' value='"}}'>
</form>
<script>
async function attack() {{
  const out = [];
  try {{
    const r = await fetch("{service}/workers/plain/run", {{method: "POST",
      headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{input: "json"}})}});
    out.push("json:" + r.status);
  }} catch (e) {{ out.push("json:blocked"); }}
  try {{
    await fetch("{service}/workers/plain/run", {{method: "POST", mode: "no-cors",
      headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{input: "plain"}})}});
    out.push("plain:sent");
  }} catch (e) {{ out.push("plain:blocked"); }}
  try {{
    await fetch("{approval_url}", {{method: "POST", mode: "no-cors",
      body: JSON.stringify({{decision: "approve"}})}});
    out.push("approve:sent");
  }} catch (e) {{ out.push("approve:blocked"); }}
  document.title = out.join(",");
}}
attack();
</script></body></html>""".encode()


@pytest.fixture(scope="module")
def service(fake_openai, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("cross-origin")
    with run_service(workers=WORKERS, data_dir=data, fake_base_url=fake_openai.base_url) as svc:
        yield svc


@pytest.fixture(scope="module")
def pending(service: Service) -> Iterator[tuple[str, str]]:
    """A run that waits for the approval of a write: (run id, approval id)."""
    call = {"tool": "write_file", "args": {"path": "notes/evil.md", "content": "pwned"}}
    body = {"input": json.dumps({"calls": [call]}), "background": True}
    with httpx.Client(base_url=service.url, timeout=10) as client:
        run_id = client.post("/workers/g_writer/run", json=body).json()["run_id"]
        deadline = time.monotonic() + 10
        while not (approvals := client.get(f"/runs/{run_id}/approvals").json()["approvals"]):
            assert time.monotonic() < deadline, "the write never asked for approval"
            time.sleep(0.05)  # cross-process: poll the service with a deadline
        yield run_id, approvals[0]["approval_id"]
        client.post(f"/runs/{run_id}/cancel")


@pytest.fixture(scope="module")
def evil_site(service: Service, pending: tuple[str, str]) -> Iterator[str]:
    run_id, approval_id = pending
    page = evil_page(service.url, f"{service.url}/runs/{run_id}/approvals/{approval_id}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_foreign_page_cannot_start_or_approve_runs(
    service: Service, evil_site: str, pending: tuple[str, str]
) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(evil_site)
            page.wait_for_function("document.title.includes('approve:')", timeout=10_000)
            title = page.title()
            with page.expect_navigation(timeout=10_000):
                page.evaluate("document.getElementById('f').submit()")
            form_answer = page.content()
        finally:
            browser.close()
    # the JSON fetch needs a CORS preflight, which the service does not grant
    assert "json:blocked" in title, title
    # the form post reached the server and was refused at the door
    assert "forbidden_origin" in form_answer
    runs = httpx.get(f"{service.url}/runs", timeout=5).json()["runs"]
    assert [r["run_id"] for r in runs] == [pending[0]], runs  # the page started nothing
    approvals = httpx.get(f"{service.url}/runs/{pending[0]}/approvals", timeout=5).json()
    assert [a["approval_id"] for a in approvals["approvals"]] == [pending[1]]  # still waiting
