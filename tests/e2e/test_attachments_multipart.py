"""Attachments over HTTP (workers.md §4, http-api.md): a multipart upload reaches the model as a
file part with the exact bytes; a policy violation is a 4xx before any model request."""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from e2e_support import SSE, Service, afake_log, sse_items, user_content

from tests.fakes.fake_openai import FakeOpenAIServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.url, timeout=15) as c:
        yield c


def marker() -> str:
    return f"mp-{uuid.uuid4().hex[:10]}"


async def requests_with(fake: FakeOpenAIServer, needle: str) -> list[dict[str, Any]]:
    log = await afake_log(fake.url)
    return [r for r in log["requests"] if needle in json.dumps(r)]


def file_parts(request: dict[str, Any]) -> list[dict[str, Any]]:
    content = user_content(request)
    return [p for p in content or [] if isinstance(p, dict) and p.get("type") == "file"]


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    head, _, data = uri.partition(";base64,")
    return head.removeprefix("data:"), base64.b64decode(data, validate=True)


# ---- uploads that reach the model --------------------------------------------------------------


async def test_multipart_pdf_reaches_the_model_as_a_file_part(
    client: httpx.AsyncClient, fake_openai: FakeOpenAIServer
) -> None:
    m = marker()
    pdf = b"%PDF-1.4\n" + m.encode() + b"\n" + os.urandom(48) + b"\n%%EOF\n"
    with anyio.fail_after(20):
        resp = await client.post(
            "/workers/plain/run",
            data={"input": f"describe {m}", "model": "openai-chat:fake"},
            files=[("attachments", ("deck.pdf", pdf, "application/pdf"))],
        )
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["status"] == "succeeded", result
    # (the fake names the file as PydanticAI sent it; OpenAI chat gets a generic file name)
    assert re.fullmatch(
        rf"describe {m} \[files: [\w.-]+\.pdf \({len(pdf)} bytes\)\]", result["output"]
    )
    assert resp.headers["x-run-id"] == result["run_id"]

    (request,) = await requests_with(fake_openai, m)
    assert request["model"] == "fake"  # the form's model field was used
    (part,) = file_parts(request)
    media_type, data = decode_data_uri(part["file"]["file_data"])
    assert media_type == "application/pdf"
    assert data == pdf
    record = (await client.get(f"/runs/{result['run_id']}")).json()
    assert (record["input"], record["model"]) == (f"describe {m}", "openai-chat:fake")


async def test_multipart_media_type_is_guessed_from_the_file_name(
    client: httpx.AsyncClient, fake_openai: FakeOpenAIServer
) -> None:
    m = marker()
    pdf = b"%PDF-1.4 " + m.encode()
    with anyio.fail_after(20):
        resp = await client.post(
            "/workers/plain/run",
            data={"input": f"guess {m}", "model": "openai-chat:fake"},
            files=[("attachments", ("../../etc/report.pdf", pdf, "application/octet-stream"))],
        )
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "succeeded"
    (request,) = await requests_with(fake_openai, f"guess {m}")
    (part,) = file_parts(request)
    assert decode_data_uri(part["file"]["file_data"]) == ("application/pdf", pdf)


async def test_multipart_streamed_run_with_two_files(
    client: httpx.AsyncClient, fake_openai: FakeOpenAIServer
) -> None:
    m = marker()
    first, second = b"%PDF-1.4 one " + m.encode(), b"%PDF-1.4 two, longer " + m.encode()
    events: list[dict[str, Any]] = []
    with anyio.fail_after(20):
        async with client.stream(
            "POST",
            "/workers/summarizer/run",
            data={"input": f"two {m}"},
            files=[
                ("attachments", ("a.pdf", first, "application/pdf")),
                ("attachments", ("b.pdf", second, "application/pdf")),
            ],
            headers=SSE,
        ) as resp:
            assert resp.status_code == 200
            async for item in sse_items(resp):
                if not isinstance(item, str):
                    events.append(item.data)
    assert events[-1]["type"] == "run.completed", events[-1]
    (request,) = await requests_with(fake_openai, f"two {m}")
    assert [decode_data_uri(p["file"]["file_data"])[1] for p in file_parts(request)] == [
        first,
        second,
    ]


async def test_multipart_input_that_is_a_json_object_is_sent_as_json(
    client: httpx.AsyncClient, fake_openai: FakeOpenAIServer
) -> None:
    m = marker()
    with anyio.fail_after(20):
        resp = await client.post(
            "/workers/plain/run",
            data={"input": json.dumps({"topic": m}), "model": "openai-chat:fake"},
            files=[("attachments", ("n.md", b"# notes", "text/markdown"))],
        )
    assert resp.status_code == 200, resp.text
    run = (await client.get(f"/runs/{resp.json()['run_id']}")).json()
    assert run["input"] == {"topic": m}


# ---- policy violations: 4xx, and the model is never asked ---------------------------------------

PDF = b"%PDF-1.4 small"


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ([("a.pdf", PDF), ("b.pdf", PDF), ("c.pdf", PDF)], "Too many attachments"),
        ([("notes.txt", b"plain text")], "Attachment suffix '.txt'"),
        ([("NOTES.TXT", b"plain text")], "Attachment suffix '.txt'"),
        ([("a.pdf", b"x" * 60), ("b.pdf", b"y" * 60)], "exceed max_total_bytes"),
    ],
    ids=["too-many", "denied-suffix", "denied-suffix-upper-case", "too-big"],
)
@pytest.mark.parametrize("encoding", ["multipart", "json"])
@pytest.mark.parametrize("streamed", [False, True], ids=["blocking", "sse"])
async def test_policy_violation_is_rejected_before_any_model_call(
    client: httpx.AsyncClient,
    fake_openai: FakeOpenAIServer,
    files: list[tuple[str, bytes]],
    needle: str,
    encoding: str,
    streamed: bool,
) -> None:
    m = marker()
    headers = SSE if streamed else {}
    with anyio.fail_after(20):
        if encoding == "multipart":
            resp = await client.post(
                "/workers/g_strict/run",
                data={"input": m},
                files=[("attachments", (name, data, "application/pdf")) for name, data in files],
                headers=headers,
            )
        else:
            attachments = [
                {"filename": name, "data_base64": base64.b64encode(data).decode()}
                for name, data in files
            ]
            resp = await client.post(
                "/workers/g_strict/run",
                json={"input": m, "attachments": attachments},
                headers=headers,
            )
        runs = await client.get("/runs", params={"worker": "g_strict", "limit": 500})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["type"] == "attachment_rejected"
    assert needle in error["message"] and "g_strict" in error["message"]
    assert "x-run-id" not in resp.headers  # no run was started
    assert not await requests_with(fake_openai, m)
    assert m not in json.dumps(runs.json())


async def test_a_file_part_not_named_attachments_is_refused(
    client: httpx.AsyncClient, fake_openai: FakeOpenAIServer
) -> None:
    m = marker()
    with anyio.fail_after(20):
        resp = await client.post(
            "/workers/plain/run",
            data={"input": m, "model": "openai-chat:fake"},
            files=[("file", ("deck.pdf", PDF, "application/pdf"))],
        )
    assert resp.status_code == 422, resp.text
    assert "attachments" in resp.json()["error"]["message"]
    assert not await requests_with(fake_openai, m)
