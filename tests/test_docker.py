"""The container files (Dockerfile, docker-compose.yml, .dockerignore) agree with each other
and with what the app really serves.

No Docker engine is needed: the files are parsed, and the app side is checked by importing it
(the `llm-do` console script's `serve --help`, the `/healthz` route, the `Settings` fields).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
DOCKERIGNORE = REPO / ".dockerignore"
SERVICE = "llm-do"
ENV_PREFIX = "LLM_DO_"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# --- parsing ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and `\\` continuations joined."""
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if not line:
            continue
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, f"{DOCKERFILE}: the last instruction ends with a dangling '\\'"
    return instructions


def only(instructions: list[tuple[str, str]], keyword: str) -> str:
    """Arguments of the last `keyword` instruction (the one Docker uses); fails when absent."""
    found = [args for kw, args in instructions if kw == keyword]
    assert found, f"{DOCKERFILE} has no {keyword} instruction"
    return found[-1]


def exec_form(args: str, what: str) -> list[str]:
    """A JSON exec-form argument list (`["a", "b"]`), or shell-split for shell form."""
    if args.startswith("["):
        try:
            parsed = json.loads(args)
        except json.JSONDecodeError as exc:
            pytest.fail(f"{DOCKERFILE}: {what} is not valid JSON exec form: {args!r} ({exc})")
        assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), (
            f"{DOCKERFILE}: {what} must be a JSON list of strings, got {args!r}"
        )
        return parsed
    return shlex.split(args)


def flag_value(argv: list[str], flag: str) -> str | None:
    """Value of `--flag VALUE` or `--flag=VALUE` in argv; None when the flag is absent."""
    for i, arg in enumerate(argv):
        if arg == flag:
            assert i + 1 < len(argv), f"{flag} is the last argument and has no value: {argv}"
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword != "ENV":
            continue
        for item in shlex.split(args):
            name, sep, value = item.partition("=")
            assert sep, f"{DOCKERFILE}: use the `ENV NAME=value` form, got `ENV {args}`"
            env[name] = value
    return env


def compose_service() -> dict:
    assert COMPOSE.is_file(), f"{COMPOSE} is missing"
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), (
        f"{COMPOSE} must be a mapping with a `services` mapping"
    )
    assert SERVICE in doc["services"], (
        f"{COMPOSE} has no service {SERVICE!r} (services: {sorted(doc['services'])})"
    )
    return doc["services"][SERVICE]


def compose_env_names(service: dict) -> list[str]:
    env = service.get("environment") or []
    if isinstance(env, dict):
        return list(env)
    return [item.split("=", 1)[0] for item in env]


def healthcheck_urls(argv: list[str]) -> list[str]:
    return re.findall(r"https?://[^\s'\"\\)]+", " ".join(argv))


def cmd_serve_args() -> list[str]:
    cmd = exec_form(only(dockerfile_instructions(), "CMD"), "CMD")
    assert cmd[:2] == ["llm-do", "serve"], f"{DOCKERFILE}: CMD must run `llm-do serve`, got {cmd}"
    return cmd


def cmd_port() -> int:
    port = flag_value(cmd_serve_args(), "--port")
    assert port is not None and port.isdigit(), (
        f"{DOCKERFILE}: CMD must pass a numeric --port, got {port!r}"
    )
    return int(port)


def parse_port_mapping(entry: str | int | dict) -> tuple[str | None, str | None, int]:
    """(host_ip, published, container_port) of one compose `ports` entry."""
    if isinstance(entry, dict):
        published = entry.get("published")
        return (
            entry.get("host_ip"),
            None if published is None else str(published),
            int(entry["target"]),
        )
    text = str(entry).split("/", 1)[0]  # drop "/tcp"
    host_ip = None
    if bracketed := re.fullmatch(r"\[(?P<ip>[^\]]+)\]:(?P<rest>.+)", text):  # [::1]:8000:8000
        host_ip, text = bracketed["ip"], bracketed["rest"]
        parts = [host_ip, *text.split(":")]
    else:
        parts = text.split(":")
    assert 1 <= len(parts) <= 3 and all(p.isdigit() for p in parts[-2:]), (
        f"{COMPOSE}: cannot parse the port mapping {entry!r}"
    )
    if len(parts) == 3:
        host_ip = parts[0]
    published = parts[-2] if len(parts) >= 2 else None
    return host_ip, published, int(parts[-1])


def parse_volume(entry: str | dict) -> tuple[str | None, str]:
    """(source, target) of one compose `volumes` entry."""
    if isinstance(entry, dict):
        return entry.get("source"), entry["target"]
    parts = entry.split(":")
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]


# --- Dockerfile and compose file agree with each other ----------------------------------------


def test_base_image_is_slim_python_3_11_or_newer():
    base = only(dockerfile_instructions(), "FROM").split()[0]
    match = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)(?:\.\d+)?-slim.*", base)
    assert match, f"{DOCKERFILE}: FROM must be a python:X.Y-slim image, got {base!r}"
    version = (int(match[1]), int(match[2]))
    assert version >= (3, 11), (
        f"{DOCKERFILE}: base image Python {version[0]}.{version[1]} is older than the 3.11 "
        "that pyproject.toml requires"
    )


def test_runs_as_a_non_root_user():
    user = only(dockerfile_instructions(), "USER")
    name = user.split(":", 1)[0]
    assert name not in {"root", "0"}, f"{DOCKERFILE}: the last USER is root ({user!r})"


def test_copy_sources_exist_and_are_not_dockerignored():
    ignored = {
        line.strip().strip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for expected in (".venv", ".git", ".llm-do", "tests", "bench"):
        assert expected in ignored, f"{DOCKERIGNORE} should exclude {expected!r}"
    for keyword, args in dockerfile_instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        words = [w for w in exec_form(args, keyword) if not w.startswith("--")]
        for source in words[:-1]:
            top = source.removeprefix("./").split("/", 1)[0]
            assert (REPO / source).exists(), f"{DOCKERFILE}: `{keyword} {args}`: {source} missing"
            assert top not in ignored, (
                f"{DOCKERFILE}: `{keyword} {args}` copies {source}, which {DOCKERIGNORE} excludes"
            )


def test_cmd_serves_on_all_interfaces_on_the_exposed_port():
    cmd = cmd_serve_args()
    assert flag_value(cmd, "--host") == "0.0.0.0", (
        f"{DOCKERFILE}: CMD must pass `--host 0.0.0.0` (loopback inside a container is "
        f"unreachable through a published port), got {cmd}"
    )
    exposed = only(dockerfile_instructions(), "EXPOSE").split()
    exposed_ports = {int(p.split("/", 1)[0]) for p in exposed}
    assert cmd_port() in exposed_ports, (
        f"{DOCKERFILE}: CMD --port {cmd_port()} is not EXPOSEd (EXPOSE {' '.join(exposed)})"
    )


def test_compose_publishes_the_cmd_port_on_loopback_only():
    ports = compose_service().get("ports") or []
    assert ports, f"{COMPOSE}: service {SERVICE!r} publishes no ports"
    for entry in ports:
        host_ip, published, target = parse_port_mapping(entry)
        assert target == cmd_port(), (
            f"{COMPOSE}: port mapping {entry!r} targets container port {target}, but the "
            f"Dockerfile CMD serves on --port {cmd_port()}"
        )
        assert host_ip == "127.0.0.1", (
            f"{COMPOSE}: port mapping {entry!r} must bind the host side to 127.0.0.1 "
            f"(got {host_ip!r}); exposing beyond localhost needs LLM_DO_API_TOKEN"
        )
        assert published, f"{COMPOSE}: port mapping {entry!r} should name the host port"


def test_healthchecks_request_healthz_on_the_cmd_port():
    healthcheck = only(dockerfile_instructions(), "HEALTHCHECK")
    match = re.fullmatch(r"(?P<options>.*?)\s*\bCMD\s+(?P<probe>.+)", healthcheck)
    assert match, f"{DOCKERFILE}: HEALTHCHECK has no CMD: {healthcheck!r}"
    options = shlex.split(match["options"])
    for option in ("--interval", "--timeout", "--retries"):
        assert any(o.startswith(option + "=") for o in options), (
            f"{DOCKERFILE}: HEALTHCHECK should set {option}=..., got {options}"
        )
    dockerfile_probe = exec_form(match["probe"], "HEALTHCHECK CMD")

    compose_check = compose_service().get("healthcheck") or {}
    compose_test = compose_check.get("test")
    assert compose_test, f"{COMPOSE}: service {SERVICE!r} has no healthcheck.test"
    if isinstance(compose_test, str):
        compose_test = ["CMD-SHELL", compose_test]
    for key in ("interval", "timeout", "retries"):
        assert key in compose_check, f"{COMPOSE}: healthcheck should set {key}"

    for where, probe in ((f"{DOCKERFILE} HEALTHCHECK", dockerfile_probe), (COMPOSE, compose_test)):
        assert not any(word.split("/")[-1] in {"curl", "wget"} for word in probe), (
            f"{where}: python:*-slim has no curl/wget; probe with python's urllib: {probe}"
        )
        urls = healthcheck_urls(probe)
        assert urls, f"{where}: the health probe requests no http:// URL: {probe}"
        for url in urls:
            parts = urlsplit(url)
            assert parts.path == "/healthz", f"{where}: probe requests {url}, not /healthz"
            assert parts.port == cmd_port(), (
                f"{where}: probe requests port {parts.port} ({url}), but CMD serves on "
                f"--port {cmd_port()}"
            )
            assert parts.hostname in LOOPBACK, f"{where}: probe {url} should target loopback"


def test_compose_mounts_workers_at_the_cmd_workers_dir_and_data_at_the_data_dir():
    workers = flag_value(cmd_serve_args(), "--workers")
    assert workers, f"{DOCKERFILE}: CMD must pass --workers, got {cmd_serve_args()}"
    volumes = compose_service().get("volumes") or []
    mounts = {target.rstrip("/"): source for source, target in map(parse_volume, volumes)}
    workers = workers.rstrip("/")
    assert workers in mounts, (
        f"{COMPOSE}: no volume is mounted at {workers} (the CMD's --workers); mounts: {mounts}"
    )
    assert mounts[workers] in {"./workers", "workers", "./workers/"}, (
        f"{COMPOSE}: {workers} should be mounted from ./workers, got {mounts[workers]!r}"
    )

    data_dir = dockerfile_env(dockerfile_instructions()).get("LLM_DO_DATA_DIR")
    assert data_dir, f"{DOCKERFILE}: set ENV LLM_DO_DATA_DIR so data lands on a volume"
    assert data_dir.rstrip("/") in mounts, (
        f"{COMPOSE}: nothing is mounted at LLM_DO_DATA_DIR={data_dir}; data would be lost "
        f"when the container is recreated (mounts: {mounts})"
    )
    named = mounts[data_dir.rstrip("/")]
    declared = (yaml.safe_load(COMPOSE.read_text()).get("volumes")) or {}
    assert named in declared, (
        f"{COMPOSE}: the data volume {named!r} is not declared under top-level `volumes:`"
    )


def test_compose_passes_provider_keys_without_forcing_empty_values():
    service = compose_service()
    names = compose_env_names(service)
    for var in (
        "LLM_DO_MODEL",
        "LLM_DO_API_TOKEN",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "OLLAMA_BASE_URL",
    ):
        assert var in names, f"{COMPOSE}: environment should pass {var} through (has {names})"
    env = service["environment"]
    items = env.items() if isinstance(env, dict) else (i.partition("=")[::2] for i in env)
    for name, value in items:
        assert not (isinstance(value, str) and re.fullmatch(r"\$\{\w+:?-\}", value)), (
            f"{COMPOSE}: {name}={value} sets {name} to '' when the host leaves it unset; an "
            f"empty OPENAI_BASE_URL breaks the OpenAI client. Pass it by bare name instead"
        )


def test_compose_requires_a_token_because_the_container_binds_beyond_loopback():
    settings_module = import_or_fail("app.settings")
    host = cmd_serve_args()[cmd_serve_args().index("--host") + 1]
    with pytest.raises(SystemExit, match="LLM_DO_API_TOKEN"):
        settings_module.Settings(host=host).check_bind()
    env = compose_service()["environment"]
    items = dict(env) if isinstance(env, dict) else dict(i.partition("=")[::2] for i in env)
    assert re.fullmatch(r"\$\{LLM_DO_API_TOKEN:\?.+\}", items.get("LLM_DO_API_TOKEN", "")), (
        f"{COMPOSE}: LLM_DO_API_TOKEN must be required (${{LLM_DO_API_TOKEN:?message}}): the "
        f"service refuses to listen on {host} without it"
    )


def test_compose_restarts_unless_stopped():
    restart = compose_service().get("restart")
    assert restart == "unless-stopped", (
        f"{COMPOSE}: service {SERVICE!r} should set `restart: unless-stopped`, got {restart!r}"
    )


# --- ... and with what the app really serves --------------------------------------------------


def import_or_fail(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        pytest.fail(f"the container files rely on {module}, which cannot be imported: {exc}")


def test_cmd_executable_is_the_console_script_and_serve_accepts_the_cmd_flags():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    cmd = cmd_serve_args()
    assert cmd[0] in scripts, (
        f"{DOCKERFILE}: CMD runs {cmd[0]!r}, not a console script of pyproject.toml ({scripts})"
    )
    module, _, func = scripts[cmd[0]].partition(":")
    import_or_fail(module)
    # Exactly what the console script does, with argv = `llm-do serve --help`.
    code = (
        "import sys\n"
        f"from {module} import {func} as main\n"
        f"sys.argv = [{cmd[0]!r}, 'serve', '--help']\n"
        "sys.exit(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`{cmd[0]} serve --help` exited {result.returncode}:\n{output}"
    flags = [arg for arg in cmd[2:] if arg.startswith("--")]
    for flag in {f.split("=", 1)[0] for f in flags}:
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", output), (
            f"{DOCKERFILE}: CMD passes {flag}, but `{cmd[0]} serve --help` does not list it:\n"
            f"{output}"
        )


def app_route_methods(application) -> dict[str, set[str]]:
    """Path -> HTTP methods of every route the app serves.

    Read from the OpenAPI schema as well as `app.routes`: FastAPI 0.165 keeps included routers
    as lazy `_IncludedRouter` entries, so `app.routes` alone lists only the app's own routes.
    """
    methods: dict[str, set[str]] = {}
    for route in application.routes:
        path = getattr(route, "path", None)
        if path:
            methods.setdefault(path, set()).update(getattr(route, "methods", None) or ())
    for path, operations in application.openapi().get("paths", {}).items():
        methods.setdefault(path, set()).update(op.upper() for op in operations)
    return methods


def test_app_serves_healthz(tmp_path):
    from fastapi.testclient import TestClient

    main = import_or_fail("app.main")
    settings_module = import_or_fail("app.settings")
    application = main.create_app(
        settings_module.Settings(workers_dir=REPO / "workers", data_dir=tmp_path / "data")
    )
    routes = app_route_methods(application)
    # The real request decides (a health route may be left out of the OpenAPI schema);
    # the route listing makes the failure message useful.
    with TestClient(application, base_url="http://127.0.0.1") as client:
        response = client.get("/healthz")
    assert response.status_code == 200, (
        f"the HEALTHCHECKs probe GET /healthz, but create_app() answers "
        f"{response.status_code} {response.text[:200]!r} (routes: {routes})"
    )
    assert response.json().get("status") == "ok", (
        f"GET /healthz should return {{'status': 'ok'}}, got {response.text[:200]!r}"
    )


def test_every_llm_do_variable_is_a_settings_field():
    settings_cls = import_or_fail("app.settings").Settings
    prefix = settings_cls.model_config.get("env_prefix", "")
    assert prefix.upper() == ENV_PREFIX, (
        f"app.settings.Settings reads env prefix {prefix!r}, the container files use {ENV_PREFIX}"
    )
    fields = set(settings_cls.model_fields)
    passed = {
        str(COMPOSE): compose_env_names(compose_service()),
        str(DOCKERFILE): list(dockerfile_env(dockerfile_instructions())),
    }
    for where, names in passed.items():
        for name in names:
            if not name.startswith(ENV_PREFIX):
                continue
            field = name[len(ENV_PREFIX) :].lower()
            assert field in fields, (
                f"{where} sets {name}, but app.settings.Settings has no field {field!r}, so the "
                f"app silently ignores it (fields: {sorted(fields)})"
            )
