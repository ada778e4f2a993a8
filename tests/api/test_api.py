"""HTTP behaviour that needs no streaming: routes, errors, OpenAPI (in-process TestClient)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(tmp_path: Path):
    workers = tmp_path / "workers"
    workers.mkdir()
    for name in ("greeter", "orchestrator", "summarizer"):
        (workers / f"{name}.worker").write_text((REPO / "workers" / f"{name}.worker").read_text())
    (workers / "typed.worker").write_text(
        "---\nname: typed\ninput_schema:\n  type: object\n  properties: {n: {type: integer}}\n"
        "  required: [n]\n---\nCount.\n"
    )
    (workers / "broken.worker").write_text("---\nname: broken\nmodle: x\n---\nHi\n")
    app = create_app(Settings(workers_dir=workers, data_dir=tmp_path / "data"))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


def test_list_workers_shows_invalid_worker_with_error_and_keeps_the_rest(client):
    workers = {w["name"]: w for w in client.get("/workers").json()["workers"]}
    assert {"greeter", "orchestrator", "summarizer", "typed", "broken"} <= set(workers)
    assert workers["orchestrator"]["tools"] == ["worker_call"]
    assert workers["orchestrator"]["allow_workers"] == ["summarizer"]
    assert workers["broken"]["error"]["type"] == "invalid_worker"
    assert "modle" in workers["broken"]["error"]["message"]


def test_get_worker_includes_instructions(client):
    body = client.get("/workers/greeter").json()
    assert body["name"] == "greeter"
    assert "friendly assistant" in body["instructions"]


def test_invalid_worker_is_422_naming_file_and_key(client):
    r = client.get("/workers/broken")
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "invalid_worker"
    assert "broken.worker" in err["message"] and "'modle'" in err["message"]
    assert err["field"] == "modle"


@pytest.mark.parametrize("name", ["nope", "Bad-Name", "a.b", "a" * 70])
def test_unknown_or_malformed_worker_name_is_404(client, name):
    for r in (client.get(f"/workers/{name}"), client.post(f"/workers/{name}/run", json={})):
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "worker_not_found"


def test_blocking_run_returns_result_and_run_headers(client):
    r = client.post("/workers/greeter/run", json={"input": "hello there"})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "succeeded" and body["output"] == "hello there"
    assert body["error"] is None and body["usage"]["requests"] == 1
    assert r.headers["x-run-id"] == body["run_id"]
    assert r.headers["content-location"] == f"/runs/{body['run_id']}"


def test_a_form_post_is_refused_with_415_saying_what_to_send(client):
    r = client.post(
        "/workers/greeter/run",
        content=b'{"input": "plain curl -d"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415
    assert r.json()["error"]["type"] == "unsupported_media_type"
    assert "application/json" in r.json()["error"]["message"]


def test_empty_body_runs_with_no_input(client):
    r = client.post("/workers/greeter/run")
    assert r.status_code == 200 and r.json()["status"] == "succeeded"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"inptu": "x"}', "unknown field 'inptu'"),
        (b'{"on_disconnect": "sometimes"}', "on_disconnect"),
        (b'{"attachments": [{"filename": "a.txt", "data_base64": "***"}]}', "base64"),
    ],
)
def test_bad_run_request_is_422_with_a_message_that_says_what_to_fix(client, body, needle):
    r = client.post(
        "/workers/greeter/run", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "invalid_request"
    assert needle in err["message"]


def test_input_schema_violation_is_422_before_the_run_starts(client):
    r = client.post("/workers/typed/run", json={"input": {"n": "many"}})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "invalid_input" and "typed" in err["message"] and "n" in err["message"]
    ok = client.post("/workers/typed/run", json={"input": {"n": 3}})
    assert ok.json()["output"] == '{"n": 3}'


def test_attachment_policy_violation_is_422_with_the_rule(client):
    data = base64.b64encode(b"x").decode()
    files = [{"filename": f"f{i}.md", "data_base64": data} for i in range(5)]
    r = client.post("/workers/summarizer/run", json={"input": "x", "attachments": files})
    assert r.status_code == 422
    assert "Too many attachments" in r.json()["error"]["message"]
    r = client.post(
        "/workers/summarizer/run",
        json={"attachments": [{"filename": "a.exe", "data_base64": data}]},
    )
    assert r.status_code == 422 and "'.exe'" in r.json()["error"]["message"]


def test_attachment_reaches_the_echo_model(client):
    data = base64.b64encode(b"# notes").decode()
    r = client.post(
        "/workers/summarizer/run",
        json={"input": "see file", "attachments": [{"filename": "n.md", "data_base64": data}]},
    )
    assert r.json()["output"] == "see file\n[file: n.md, text/markdown, 7 bytes]"


def test_unbuildable_model_fails_the_run_with_model_error_not_500(client):
    r = client.post("/workers/greeter/run", json={"input": "x", "model": "nonsense"})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "failed"
    assert body["error"]["type"] == "model_error" and "'nonsense'" in body["error"]["message"]


def test_unknown_route_and_method_are_json_errors(client):
    r = client.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = client.get("/workers/greeter/run")
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"


def test_healthz_and_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    spec = client.get("/openapi.json").json()
    run = spec["paths"]["/workers/{name}/run"]["post"]
    assert "input" in run["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert client.get("/docs").status_code == 200
