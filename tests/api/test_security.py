"""The front door (app/api/security.py): host, origin, content type, size, token, headers,
limits. In-process TestClient: none of this needs a stream."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
LOCAL = "http://127.0.0.1"


def make_client(tmp_path: Path, **settings) -> TestClient:
    app = create_app(Settings(workers_dir=REPO / "workers", data_dir=tmp_path / "d", **settings))
    return TestClient(app, base_url=LOCAL)


@pytest.fixture
def client(tmp_path: Path):
    with make_client(tmp_path) as c:
        yield c


@pytest.fixture
def locked(tmp_path: Path):
    with make_client(tmp_path, api_token=TOKEN) as c:
        yield c


# ---- host and origin ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.nip.io", "attacker:8000"])
def test_a_foreign_host_is_refused(client, host):
    r = client.get("/workers", headers={"host": host})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_host"
    assert "LLM_DO_ALLOWED_HOSTS" in r.json()["error"]["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "[::1]:8000", "LOCALHOST:1"])
def test_loopback_hosts_are_served(client, host):
    assert client.get("/healthz", headers={"host": host}).status_code == 200


def test_allowed_hosts_extend_the_list(tmp_path):
    with make_client(tmp_path, allowed_hosts="llm.internal, box") as c:
        assert c.get("/healthz", headers={"host": "llm.internal:8000"}).status_code == 200
        assert c.get("/healthz", headers={"host": "other"}).status_code == 400


STATE_CHANGING = [
    ("/workers/greeter/run", {"input": "hi"}),
    ("/runs/abc/cancel", None),
    ("/runs/abc/approvals/xyz", {"decision": "approve"}),
]


@pytest.mark.parametrize(("path", "body"), STATE_CHANGING)
def test_a_foreign_origin_cannot_change_anything(client, path, body):
    r = client.post(path, json=body, headers={"origin": "https://evil.example"})
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "forbidden_origin"
    assert client.get("/runs").json()["runs"] == []  # nothing was started


def test_same_origin_and_allowed_origins_may_post(tmp_path, client):
    ok = client.post("/workers/greeter/run", json={"input": "hi"}, headers={"origin": LOCAL})
    assert ok.status_code == 200
    with make_client(tmp_path, allowed_origins="https://app.example") as c:
        r = c.post(
            "/workers/greeter/run", json={"input": "hi"}, headers={"origin": "https://app.example"}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"


def test_cors_is_off_by_default(client):
    r = client.get("/workers", headers={"origin": "https://app.example"})
    assert "access-control-allow-origin" not in r.headers


# ---- content type and size -----------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None]
)
def test_posts_must_be_json_or_multipart(client, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/workers/greeter/run", content=b'{"input": "x"}', headers=headers)
    assert r.status_code == 415
    assert r.json()["error"]["type"] == "unsupported_media_type"


def test_multipart_is_accepted(client):
    r = client.post("/workers/greeter/run", data={"input": "multi"}, files={"x": ("a", b"")})
    # a file part not named 'attachments' is refused by the route, not by the front door
    assert r.status_code == 422 and "attachments" in r.json()["error"]["message"]


def test_a_body_over_the_limit_is_413(tmp_path):
    with make_client(tmp_path, max_body_bytes=1000) as c:
        big = {"input": "x" * 2000}
        r = c.post("/workers/greeter/run", json=big)
        assert r.status_code == 413
        assert "LLM_DO_MAX_BODY_BYTES" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: counted while read
            yield b'{"input": "'
            for _ in range(30):
                yield b"y" * 100
            yield b'"}'

        r = c.post(
            "/workers/greeter/run", content=chunks(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert c.get("/runs").json()["runs"] == []


# ---- the token ---------------------------------------------------------------------------


def api_routes(client: TestClient) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json", headers={"authorization": f"Bearer {TOKEN}"}).json()
    out = []
    for path, item in spec["paths"].items():
        concrete = path.replace("{name}", "greeter").replace("{run_id}", "r1")
        concrete = concrete.replace("{approval_id}", "a1")
        out += [(method.upper(), concrete) for method in item]
    return out


def test_every_route_but_healthz_needs_the_token(locked):
    routes = api_routes(locked)
    assert ("POST", "/workers/greeter/run") in routes and len(routes) >= 9
    guarded = [r for r in routes if r[1] != "/healthz"]
    assert len(guarded) == len(routes) - 1
    for method, path in [*guarded, ("GET", "/openapi.json"), ("GET", "/docs")]:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            r = locked.request(method, path, headers=headers, json={} if method == "POST" else None)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.json()["error"]["type"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/").status_code == 200  # the page itself, to show the sign-in form
    assert locked.get("/static/app.js").status_code == 200


def test_the_right_token_opens_every_way(locked):
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert locked.get("/workers", headers=bearer).status_code == 200
    r = locked.post("/workers/greeter/run", json={"input": "hi"}, headers=bearer)
    assert r.json()["output"] == "hi"
    assert locked.get(f"/runs?access_token={TOKEN}").status_code == 200  # EventSource
    assert locked.post(f"/runs/x/cancel?access_token={TOKEN}").status_code == 401  # GET only


def test_sign_in_sets_an_httponly_strict_cookie_that_opens_the_api(locked):
    bad = locked.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert bad.status_code == 303 and bad.headers["location"] == "/#login-failed"
    assert "set-cookie" not in bad.headers
    good = locked.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert good.status_code == 303
    cookie = good.headers["set-cookie"]
    assert "llm_do_token=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert locked.get("/workers").status_code == 200  # the client keeps the cookie


def test_binding_beyond_loopback_needs_a_token():
    with pytest.raises(SystemExit, match="LLM_DO_API_TOKEN"):
        Settings(host="0.0.0.0").check_bind()
    Settings(host="0.0.0.0", api_token="t").check_bind()
    Settings(host="127.0.0.1").check_bind()


# ---- headers and limits ----------------------------------------------------------------------


def test_the_page_and_api_carry_browser_safety_headers(client):
    for path in ("/", "/workers", "/static/app.js"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"


def test_the_page_has_no_inline_script():
    html = (REPO / "app" / "web" / "index.html").read_text()
    assert "<script>" not in html and "onclick" not in html.lower()


def test_too_many_runs_is_429_with_retry_after(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "slow.worker").write_text(
        "---\nname: slow\nmodel_settings: {delay_ms: 200}\n---\nx\n"
    )
    app = create_app(Settings(workers_dir=tmp_path / "w", data_dir=tmp_path / "d", max_runs=1))
    with TestClient(app, base_url=LOCAL) as c:
        first = c.post("/workers/slow/run", json={"input": "a b c d e", "background": True})
        assert first.status_code == 202
        r = c.post("/workers/slow/run", json={"input": "x", "background": True})
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "too_many_runs"
        assert int(r.headers["retry-after"]) >= 1
        c.post(f"/runs/{first.json()['run_id']}/cancel")
        assert c.post("/workers/slow/run", json={"input": "x"}).status_code == 200


def test_a_stopping_service_refuses_new_runs_with_503(client):
    client.app.state.runs.stopping = True
    r = client.post("/workers/greeter/run", json={"input": "x"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable"
    assert "retry-after" in r.headers
    client.app.state.runs.stopping = False
