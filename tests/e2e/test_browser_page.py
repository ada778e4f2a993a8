"""The web page (app/web) in a real browser: Debian's Chromium driven by Playwright (sync API)
against `llm-do serve` in a subprocess.

The service runs on a temporary project (workers written below, sandbox folders next to them)
so files the page's approvals let through land where the tests can look. Every wait is
bounded (10 s); the only sleeps sample the text of a streaming run. Every test fails on a
console error or an uncaught exception in the page. Screenshots are written to
tests/artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from e2e_support import Service, run_service
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.fakes.fake_openai import FakeOpenAIServer

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"browser tests need Debian's Chromium at {CHROMIUM} (Playwright cannot download one)",
        allow_module_level=True,
    )

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1366, "height": 768}

WORKER_FILES = {
    "b_stream": """\
---
name: b_stream
description: Streams its input back through the fake OpenAI server, a word every 50 ms
model: openai-chat:fake-slow
---
Repeat the user's text.
""",
    "b_slow": """\
---
name: b_slow
description: Reads the input back, a word every 100 ms (for reloading mid-run)
model: echo
model_settings:
  delay_ms: 100
---
Read the text back.
""",
    "b_parent": """\
---
name: b_parent
description: Hands its input to b_child with worker_call and reports the result
model: demo
allow_workers: [b_child]
---
Delegate to b_child.
""",
    "b_child": """\
---
name: b_child
description: Echoes its input, a word every 20 ms
model: echo
model_settings:
  delay_ms: 20
---
Echo the input.
""",
    "b_notes": """\
---
name: b_notes
description: Writes notes; every write waits for approval
model: demo
sandbox:
  paths:
    notes: {root: files/notes, mode: rw, suffixes: [.md], write_approval: true}
---
Save the note with write_file.
""",
}


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: workers/ with the files above; sandbox roots resolve under it."""
    root = tmp_path_factory.mktemp("browser-project")
    (root / "workers").mkdir()
    for name, text in WORKER_FILES.items():
        (root / "workers" / f"{name}.worker").write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def web(
    project: Path, fake_openai: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with run_service(
        workers=project / "workers",
        data_dir=tmp_path_factory.mktemp("browser-data"),
        fake_base_url=fake_openai.base_url,
        LLM_DO_APPROVAL="prompt",
    ) as svc:
        yield svc
    assert "Traceback" not in svc.output(), svc.output()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n!.gitignore\n", encoding="utf-8")
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(browser: Browser, viewport: dict[str, int]) -> Iterator[Page]:
    """A fresh context and page; after the test, no console error and no uncaught exception."""
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console.{msg.type}: {msg.text} @ {msg.location}")
            if msg.type == "error"
            else None
        ),
    )
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], "the page logged errors:\n" + "\n".join(errors)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    with open_page(browser, DESKTOP) as page:
        yield page


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    with open_page(browser, PHONE) as page:
        yield page


expect.set_options(timeout=TIMEOUT_MS)


# ---- helpers -------------------------------------------------------------------------------


def words(prefix: str, n: int) -> str:
    """n distinct words, so a duplicate or a gap in the streamed text cannot go unnoticed."""
    return " ".join(f"{prefix}{i:02d}" for i in range(1, n + 1))


def start_run(page: Page, url: str, worker: str, text: str) -> str:
    """Open the worker's form, type the input, click Run; the run's id from the new hash."""
    page.goto(f"{url}/#worker={worker}")
    expect(page.locator("#worker-name")).to_have_text(worker)
    page.locator("#input").fill(text)
    page.locator("#run-btn").click()
    page.wait_for_url(re.compile(r"#run=[0-9a-f-]+$"))
    return page.url.rsplit("#run=", 1)[1]


def status(page: Page) -> Locator:
    return page.locator("#run-status")


def expect_status(page: Page, value: str) -> None:
    expect(status(page)).to_have_class(re.compile(rf"(^|\s){value}(\s|$)"))


def root_node(page: Page) -> Locator:
    return page.locator("#tree > .node")


def own_text(node: Locator) -> Locator:
    """The streamed text spans of this node itself (not of nested nodes)."""
    return node.locator(":scope > .node-body > .stream > .text")


def calls_json(*calls: dict[str, object]) -> str:
    return json.dumps({"calls": list(calls)})


def page_widths(page: Page) -> dict[str, int]:
    return page.evaluate(
        "() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"
    )


# ---- tests ---------------------------------------------------------------------------------


def test_streamed_text_grows_then_ends_with_the_output(page: Page, web: Service) -> None:
    text = words("grow", 40)  # 40 chunks, 50 ms apart: about 2 s of streaming
    start_run(page, web.url, "b_stream", text)
    node = root_node(page)
    expect(node.locator(".node-name")).to_have_text("b_stream")
    stream = own_text(node)
    expect(stream).to_have_text(re.compile(r"\S"))

    # Sample the text while the run is running: it must get longer between samples.
    samples: list[int] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "running" not in (status(page).get_attribute("class") or ""):
            break
        samples.append(len(stream.first.text_content() or ""))
        if len(set(samples)) >= 3:
            break
        page.wait_for_timeout(120)  # sampling the growing text, not synchronisation
    assert len(samples) >= 2, f"the run ended before the text was sampled twice: {samples}"
    assert samples == sorted(samples) and samples[-1] > samples[0], samples
    assert samples[-1] < len(text), samples

    expect_status(page, "succeeded")
    expect(page.locator("#output")).to_have_text(text)
    expect(stream).to_have_text([text])
    expect(node.locator(":scope > .node-head .node-status")).to_have_text("succeeded")


def test_orchestrator_run_nests_the_child_under_its_parent(
    page: Page, web: Service, artifacts: Path
) -> None:
    child_input = words("child", 12)
    script = calls_json(
        {"tool": "worker_call", "args": {"worker": "b_child", "input_data": child_input}}
    )
    start_run(page, web.url, "b_parent", script)
    expect_status(page, "succeeded")

    parent = root_node(page)
    expect(parent).to_have_count(1)
    expect(parent.locator(":scope > .node-head .node-name")).to_have_text("b_parent")
    child = parent.locator(".node")
    expect(child).to_have_count(1)
    expect(child).to_have_class(re.compile(r"(^|\s)child(\s|$)"))
    expect(child.locator(".node-name")).to_have_text("b_child")
    expect(child.locator(".node-status")).to_have_text("succeeded")
    # The finished child is collapsed, but its streamed text is in its node.
    assert own_text(child).first.text_content() == child_input
    # The worker_call tool entry is in the parent's stream, and the child right after it.
    call = parent.locator(":scope > .node-body > .stream > details.tool")
    expect(call.locator(".tool-name")).to_have_text("worker_call")
    expect(call.locator(".tool-outcome")).to_have_text("success")
    assert call.evaluate("el => el.nextElementSibling?.classList.contains('child')")
    expect(page.locator("#output")).to_contain_text(child_input)

    page.screenshot(path=str(artifacts / "nested-run.png"), full_page=True)
    # The same run with the child expanded: what a person sees after clicking its toggle.
    child.locator(".toggle").click()
    expect(own_text(child)).to_have_text([child_input])
    expect(child.locator(".toggle")).to_have_attribute("aria-expanded", "true")
    page.screenshot(path=str(artifacts / "nested-run-expanded.png"), full_page=True)


def test_approve_lets_the_run_finish_and_writes_the_file(
    page: Page, web: Service, project: Path, artifacts: Path
) -> None:
    name = f"approved-{uuid.uuid4().hex[:8]}.md"
    content = "# Approved note\n\nWritten after a click on Approve.\n"
    script = calls_json(
        {"tool": "write_file", "args": {"path": f"notes/{name}", "content": content}}
    )
    start_run(page, web.url, "b_notes", script)

    card = page.locator("#approvals .approval")
    expect(card).to_have_count(1)
    expect_status(page, "waiting_approval")
    expect(card.locator(".approval-tool-name")).to_have_text("write_file")
    expect(card.locator(".approval-args")).to_contain_text(f"notes/{name}")
    expect(card.locator(".approval-args")).to_contain_text("Written after a click on Approve.")
    expect(card.locator(".act-approve")).to_be_focused()
    tool = root_node(page).locator("details.tool")
    expect(tool.locator(".tool-outcome")).to_have_text("waiting for approval")
    target = project / "files" / "notes" / name
    assert not target.exists()
    page.screenshot(path=str(artifacts / "pending-approval.png"), full_page=True)

    card.locator(".act-approve").click()
    expect(card.locator(".approval-result")).to_have_text("Approved")
    expect(card).to_have_class(re.compile(r"(^|\s)approved(\s|$)"))
    expect_status(page, "succeeded")
    expect(tool.locator(".tool-outcome")).to_have_text("success")
    expect(page.locator("#output")).to_contain_text(f"notes/{name}")
    assert target.read_text(encoding="utf-8") == content


def test_deny_with_a_reason_shows_the_denied_outcome(
    page: Page, web: Service, project: Path
) -> None:
    name = f"denied-{uuid.uuid4().hex[:8]}.md"
    script = calls_json({"tool": "write_file", "args": {"path": f"notes/{name}", "content": "no"}})
    start_run(page, web.url, "b_notes", script)

    card = page.locator("#approvals .approval")
    expect(card).to_have_count(1)
    reason = "not in my notes, thanks"
    card.locator(".deny-reason").fill(reason)
    card.locator(".act-deny").click()

    expect(card.locator(".approval-result")).to_have_text(f"Denied: {reason}")
    expect(card).to_have_class(re.compile(r"(^|\s)denied(\s|$)"))
    for control in (".act-approve", ".act-run", ".act-deny", ".deny-reason"):
        expect(card.locator(control)).to_be_disabled()
    outcome = root_node(page).locator("details.tool .tool-outcome")
    expect(outcome).to_have_text("denied")
    expect(outcome).to_have_class(re.compile(r"(^|\s)denied(\s|$)"))
    expect(root_node(page).locator("details.tool .tool-result")).to_contain_text(reason)
    expect_status(page, "succeeded")  # a denial is a tool result; the model goes on
    assert not (project / "files" / "notes" / name).exists()


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop-1366x768", "phone-390x844"])
def test_a_new_approval_card_is_on_screen(
    browser: Browser, web: Service, viewport: dict[str, int]
) -> None:
    note = "# Seen\n\nA short note of a few lines,\nas a person would write it.\n"
    script = calls_json({"tool": "write_file", "args": {"path": "notes/seen.md", "content": note}})
    with open_page(browser, viewport) as page:
        start_run(page, web.url, "b_notes", script)
        card = page.locator("#approvals .approval")
        expect(card).to_have_count(1)
        expect(card.locator(".act-approve")).to_be_focused()
        try:
            # The card is complete when it is added: a scroll to it would come at once.
            for button in (".act-approve", ".act-deny"):
                expect(card.locator(button)).to_be_in_viewport(ratio=1, timeout=1500)
        finally:
            card.locator(".act-deny").click()
            expect_status(page, "succeeded")


def test_reload_mid_run_reattaches_and_misses_nothing(page: Page, web: Service) -> None:
    text = words("rel", 30)  # 30 words, 100 ms apart: about 3 s
    run_id = start_run(page, web.url, "b_slow", text)
    stream = own_text(root_node(page))
    expect(stream).to_have_text(re.compile(r"rel03"))
    before = stream.first.text_content() or ""
    assert len(before) < len(text)

    page.reload()
    assert page.url.endswith(f"#run={run_id}")
    # The reload happened mid-run: the server still has the run going.
    record = httpx.get(f"{web.url}/runs/{run_id}", timeout=5).json()
    assert record["status"] == "running", record
    expect(page.locator("#run-worker")).to_have_text("b_slow")

    expect_status(page, "succeeded")
    expect(page.locator("#output")).to_have_text(text)
    # The whole text exactly once, in one span: replay and live events joined without a
    # duplicate or a gap.
    expect(stream).to_have_text([text])
    assert (stream.first.text_content() or "").count("rel01 ") == 1


def phone_tour(page: Page, url: str, shots: Path, prefix: str) -> dict[str, dict[str, int]]:
    """The worker form, a pending approval with a long path, and a finished nested run at
    phone width: a full-page screenshot and the page's scroll width of each."""
    sizes: dict[str, dict[str, int]] = {}

    def look(view: str) -> None:
        sizes[view] = page_widths(page)
        page.screenshot(path=str(shots / f"{prefix}-{view}.png"), full_page=True)

    page.goto(f"{url}/#worker=b_notes")
    expect(page.locator("#worker-name")).to_have_text("b_notes")
    look("form")

    long_path = "notes/" + "a-rather-long-note-name-without-spaces-" * 3 + "x.md"
    script = calls_json({"tool": "write_file", "args": {"path": long_path, "content": "hi"}})
    page.locator("#input").fill(script)
    page.locator("#run-btn").click()
    card = page.locator("#approvals .approval")
    expect(card).to_have_count(1)
    look("approval")
    card.locator(".act-deny").click()
    expect_status(page, "succeeded")

    script = calls_json(
        {"tool": "worker_call", "args": {"worker": "b_child", "input_data": words("ph", 8)}}
    )
    start_run(page, url, "b_parent", script)
    expect_status(page, "succeeded")
    expect(root_node(page).locator(".node.child")).to_have_count(1)
    look("nested-run")
    return sizes


def overflowing(sizes: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {view: s for view, s in sizes.items() if s["scroll"] > s["inner"]}


def test_phone_width_has_no_horizontal_overflow(phone: Page, web: Service, artifacts: Path) -> None:
    sizes = phone_tour(phone, web.url, artifacts, "phone")
    assert overflowing(sizes) == {}, f"views that scroll sideways at 390 px: {sizes}"


def test_keyboard_reaches_a_worker_and_runs_it(page: Page, web: Service) -> None:
    page.goto(f"{web.url}/")
    expect(page.locator("#workers .item").first).to_be_visible()

    # Tab from the start of the page reaches a worker button within a few presses.
    def focused(attr: str) -> str | None:
        return page.evaluate(f"() => document.activeElement?.getAttribute({attr!r}) ?? null")

    for _ in range(5):
        page.keyboard.press("Tab")
        if focused("data-worker"):
            break
    worker = focused("data-worker")
    assert worker, "Tab did not reach a worker button in 5 presses"
    # Move to b_child (buttons are in name order) and choose it with Enter.
    for _ in range(len(WORKER_FILES)):
        if focused("data-worker") == "b_child":
            break
        page.keyboard.press("Tab")
    assert focused("data-worker") == "b_child"
    page.keyboard.press("Enter")
    expect(page.locator("#worker-name")).to_have_text("b_child")
    expect(page.locator("#input")).to_be_focused()

    text = words("key", 5)
    page.keyboard.type(text)
    for _ in range(10):
        if focused("id") == "run-btn":
            break
        page.keyboard.press("Tab")
    assert focused("id") == "run-btn", "Tab from the input did not reach the Run button"
    page.keyboard.press("Enter")

    page.wait_for_url(re.compile(r"#run=[0-9a-f-]+$"))
    expect_status(page, "succeeded")
    expect(page.locator("#output")).to_have_text(text)
