"""The scale-out files (docker-compose.replicas.yml, deploy/nginx.conf) wire three replicas to
one PostgreSQL, one Redis and a proxy that streams, and agree with the Dockerfile, with
docker-compose.yml and with the app.

No Docker engine and no nginx are needed: the files are parsed. The parsers and the facts
derived from the Dockerfile (the `serve` port, the health probe) come from tests/test_docker.py.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.test_docker import (
    COMPOSE,
    DOCKERFILE,
    ENV_PREFIX,
    cmd_port,
    compose_env_names,
    compose_service,
    healthcheck_urls,
    import_or_fail,
    parse_port_mapping,
    parse_volume,
)

REPO = Path(__file__).resolve().parents[1]
REPLICAS = REPO / "docker-compose.replicas.yml"
NGINX = REPO / "deploy" / "nginx.conf"
NGINX_CONF_TARGET = "/etc/nginx/conf.d/default.conf"
PROXY = "proxy"
POSTGRES = "postgres"
REDIS = "redis"
REPLICA_ID = "LLM_DO_REPLICA_ID"
AFFINITY = {"ip_hash", "hash", "sticky"}
TIME_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


# --- docker-compose.replicas.yml ---------------------------------------------------------------


def replicas_doc() -> dict:
    assert REPLICAS.is_file(), f"{REPLICAS} is missing"
    doc = yaml.safe_load(REPLICAS.read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), (
        f"{REPLICAS} must be a mapping with a `services` mapping"
    )
    return doc


def services() -> dict[str, dict]:
    return replicas_doc()["services"]


def service(name: str) -> dict:
    found = services()
    assert name in found, f"{REPLICAS} has no service {name!r} (services: {sorted(found)})"
    return found[name]


def builds_the_dockerfile(definition: dict) -> bool:
    build = definition.get("build")
    if build is None:
        return False
    if isinstance(build, str):
        build = {"context": build}
    context = (REPLICAS.parent / build.get("context", ".")).resolve()
    return (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE


def replicas() -> dict[str, dict]:
    """The services built from the repository's Dockerfile: the llm-do replicas."""
    found = {name: s for name, s in services().items() if builds_the_dockerfile(s)}
    assert found, (
        f"{REPLICAS}: no service is built from {DOCKERFILE} (`build: .`); the replicas must "
        "run the llm-do image"
    )
    return found


def env_of(definition: dict) -> dict[str, str | None]:
    """A service's environment as a mapping; None for a name passed through from the host."""
    env = definition.get("environment") or {}
    if isinstance(env, dict):
        return {k: None if v is None else str(v) for k, v in env.items()}
    return {name: (value if sep else None) for name, sep, value in (i.partition("=") for i in env)}


def mounts_of(definition: dict) -> dict[str, str | None]:
    """Container path -> source of a service's volumes."""
    return {
        target.rstrip("/"): source
        for source, target in map(parse_volume, definition.get("volumes") or [])
    }


def ports_of(name: str, definition: dict) -> list[tuple[str | None, str | None, int]]:
    parsed = []
    for entry in definition.get("ports") or []:
        try:
            parsed.append(parse_port_mapping(entry))
        except AssertionError:
            pytest.fail(f"{REPLICAS}: service {name!r}: cannot parse the port mapping {entry!r}")
    return parsed


def url_setting(name: str, replica: str, definition: dict):
    value = env_of(definition).get(name)
    assert value, (
        f"{REPLICAS}: replica {replica!r} does not set {name}; without it the replica keeps "
        "its state to itself and the others cannot serve its runs"
    )
    return urlsplit(value)


# --- deploy/nginx.conf -------------------------------------------------------------------------

Directive = tuple[str, list[str], list]  # (name, arguments, children of a `{ }` block)


def nginx_tokens(text: str) -> list[str]:
    tokens = []
    pattern = r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|#[^\n]*|[{};]|[^\s{};\"'#]+"
    for token in re.findall(pattern, text):
        if token.startswith("#"):
            continue
        if token[0] in "\"'":
            token = token[1:-1]
        tokens.append(token)
    return tokens


def nginx_conf() -> list[Directive]:
    """deploy/nginx.conf as a tree of directives."""
    assert NGINX.is_file(), f"{NGINX} is missing"
    tokens = nginx_tokens(NGINX.read_text())
    position = 0

    def block() -> list[Directive]:
        nonlocal position
        directives: list[Directive] = []
        while position < len(tokens):
            if tokens[position] == "}":
                position += 1
                return directives
            words: list[str] = []
            while position < len(tokens) and tokens[position] not in {";", "{", "}"}:
                words.append(tokens[position])
                position += 1
            assert position < len(tokens) and tokens[position] != "}", (
                f"{NGINX}: `{' '.join(words)}` does not end with ';' or open a block"
            )
            position += 1
            children = block() if tokens[position - 1] == "{" else []
            directives.append((words[0], words[1:], children))
        return directives

    return block()


def named(directives: list[Directive], name: str) -> list[Directive]:
    return [d for d in directives if d[0] == name]


def proxied_location() -> tuple[list[Directive], list[list[Directive]]]:
    """The `location` that proxy_passes to the upstream, and its enclosing contexts, innermost
    first (location, server, http); nginx inherits most proxy_* settings down that chain."""
    http = nginx_conf()
    for server in named(http, "server"):
        for location in named(server[2], "location"):
            if named(location[2], "proxy_pass"):
                return location[2], [location[2], server[2], http]
    pytest.fail(f"{NGINX}: no `server {{ location ... {{ proxy_pass ... }} }}` block")


def effective(name: str) -> list[str] | None:
    """Arguments of the directive that applies in the proxied location; None when unset."""
    for context in proxied_location()[1]:
        found = named(context, name)
        if found:
            return found[-1][1]
    return None


def proxy_headers() -> dict[str, str]:
    """proxy_set_header name (lower case) -> value in the proxied location (nginx inherits
    proxy_set_header only when the inner context sets none)."""
    for context in proxied_location()[1]:
        found = named(context, "proxy_set_header")
        if found:
            return {args[0].lower(): " ".join(args[1:]) for _, args, _ in found}
    return {}


def upstream() -> tuple[str, list[Directive]]:
    """(name, directives) of the upstream that the proxied location proxy_passes to."""
    target = named(proxied_location()[0], "proxy_pass")[-1][1][0]
    parts = urlsplit(target)
    assert parts.scheme == "http", f"{NGINX}: proxy_pass {target} should be http://<upstream>"
    blocks = {args[0]: children for _, args, children in named(nginx_conf(), "upstream")}
    assert parts.netloc in blocks, (
        f"{NGINX}: proxy_pass {target} names no `upstream {parts.netloc} {{ }}` block, so it "
        f"would go to a single host, not the replicas (upstreams: {sorted(blocks)})"
    )
    return parts.netloc, blocks[parts.netloc]


def seconds(value: str) -> float:
    parts = re.findall(r"(\d+)(ms|[smhdw]?)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"{NGINX}: bad time {value!r}"
    return sum(int(n) * TIME_UNITS[u or "s"] for n, u in parts)


def size_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, f"{NGINX}: bad size {value!r}"
    return int(match[1]) * SIZE_UNITS[match[2].lower()]


def settings_default(field: str):
    settings_cls = import_or_fail("app.settings").Settings
    return settings_cls.model_fields[field].default


# --- the replicas ------------------------------------------------------------------------------


def test_three_replicas_are_built_from_the_dockerfile_with_distinct_ids():
    found = replicas()
    assert len(found) == 3, (
        f"{REPLICAS}: expected three llm-do replicas built from {DOCKERFILE}, got "
        f"{sorted(found)}; add or remove services that use the shared `x-llm-do` definition"
    )
    ids = {name: env_of(s).get(REPLICA_ID) for name, s in found.items()}
    missing = sorted(name for name, value in ids.items() if not value)
    assert not missing, (
        f"{REPLICAS}: replicas {missing} set no {REPLICA_ID}; give each one its own name "
        "(it is shown in GET /healthz and in every run record as `replica`)"
    )
    assert len(set(ids.values())) == len(ids), (
        f"{REPLICAS}: replicas share a {REPLICA_ID} ({ids}); give each a distinct name, or "
        "their heartbeats and runs are confused with one another"
    )


def test_replicas_differ_only_in_their_replica_id():
    found = replicas()

    def without_id(definition: dict) -> dict:
        env = {k: v for k, v in env_of(definition).items() if k != REPLICA_ID}
        return {**definition, "environment": env}

    (first, reference), *others = sorted(found.items())
    for name, definition in others:
        assert without_id(definition) == without_id(reference), (
            f"{REPLICAS}: replica {name!r} is configured differently from {first!r} beyond "
            f"{REPLICA_ID}; define both as `<<: *llm-do` and only add {REPLICA_ID} "
            "(a run must behave the same whichever replica received its POST)"
        )


def test_replicas_store_runs_in_the_postgres_service_with_its_credentials():
    pg = service(POSTGRES)
    assert str(pg.get("image", "")).startswith("postgres:"), (
        f"{REPLICAS}: service {POSTGRES!r} should run a postgres image, got {pg.get('image')!r}"
    )
    pg_env = env_of(pg)
    user = pg_env.get("POSTGRES_USER") or "postgres"
    expected = {
        "user": user,
        "password": pg_env.get("POSTGRES_PASSWORD"),
        "database": pg_env.get("POSTGRES_DB") or user,
        "port": int(pg_env.get("PGPORT") or 5432),
    }
    assert expected["password"], (
        f"{REPLICAS}: service {POSTGRES!r} needs POSTGRES_PASSWORD (the image refuses to "
        "initialise without one)"
    )
    for name, definition in replicas().items():
        url = url_setting("LLM_DO_STORE_URL", name, definition)
        assert url.scheme == "postgresql", (
            f"{REPLICAS}: replica {name!r}: LLM_DO_STORE_URL should start with postgresql://, "
            f"got {url.geturl()!r}; SQLite or memory:// would give each replica its own runs"
        )
        assert url.hostname == POSTGRES, (
            f"{REPLICAS}: replica {name!r}: LLM_DO_STORE_URL points at host {url.hostname!r}; "
            f"point it at the {POSTGRES!r} service"
        )
        actual = {
            "user": url.username,
            "password": url.password,
            "database": url.path.lstrip("/"),
            "port": url.port or 5432,
        }
        for key in expected:
            assert actual[key] == expected[key], (
                f"{REPLICAS}: replica {name!r}: LLM_DO_STORE_URL has {key} {actual[key]!r}, but "
                f"the {POSTGRES!r} service has {expected[key]!r} (POSTGRES_USER/POSTGRES_PASSWORD/"
                "POSTGRES_DB); make them match or the replicas cannot connect"
            )


def test_replicas_use_the_redis_service_as_their_bus():
    redis = service(REDIS)
    assert str(redis.get("image", "")).startswith("redis:"), (
        f"{REPLICAS}: service {REDIS!r} should run a redis image, got {redis.get('image')!r}"
    )
    command = redis.get("command") or []
    words = command.split() if isinstance(command, str) else [str(w) for w in command]
    port = int(words[words.index("--port") + 1]) if "--port" in words else 6379
    for name, definition in replicas().items():
        url = url_setting("LLM_DO_BUS_URL", name, definition)
        assert url.scheme == "redis", (
            f"{REPLICAS}: replica {name!r}: LLM_DO_BUS_URL should start with redis://, got "
            f"{url.geturl()!r}; unset, each replica keeps an in-process bus that the others "
            "never hear (no live events, approvals or cancels across replicas)"
        )
        assert url.hostname == REDIS and (url.port or 6379) == port, (
            f"{REPLICAS}: replica {name!r}: LLM_DO_BUS_URL points at "
            f"{url.hostname}:{url.port or 6379}; point it at the {REDIS!r} service on port {port}"
        )


def test_replicas_start_once_postgres_and_redis_are_healthy():
    probes = {POSTGRES: "pg_isready", REDIS: "redis-cli ping"}
    for dependency, probe in probes.items():
        test = (service(dependency).get("healthcheck") or {}).get("test") or []
        text = test if isinstance(test, str) else " ".join(str(w) for w in test)
        assert probe in text, (
            f"{REPLICAS}: service {dependency!r} needs a healthcheck running `{probe}`; the "
            f"replicas wait for it to be healthy (got {test!r})"
        )
    for name, definition in replicas().items():
        depends = definition.get("depends_on") or {}
        for dependency in probes:
            condition = depends.get(dependency, {}) if isinstance(depends, dict) else {}
            assert condition.get("condition") == "service_healthy", (
                f"{REPLICAS}: replica {name!r} should have `depends_on: {dependency}: "
                "condition: service_healthy`, or it starts before it can store or publish "
                "anything and its first runs fail"
            )


def test_postgres_keeps_its_data_in_a_named_volume():
    mounts = mounts_of(service(POSTGRES))
    source = mounts.get("/var/lib/postgresql/data")
    declared = replicas_doc().get("volumes") or {}
    assert source in declared, (
        f"{REPLICAS}: mount a named volume (declared under top-level `volumes:`) at "
        f"/var/lib/postgresql/data, or every run is lost when the container is recreated "
        f"(mounts: {mounts}, declared: {sorted(declared)})"
    )


def test_replicas_require_the_token_and_pass_the_same_variables_as_docker_compose():
    single = compose_env_names(compose_service())
    for name, definition in replicas().items():
        env = env_of(definition)
        assert re.fullmatch(r"\$\{LLM_DO_API_TOKEN:\?.+\}", env.get("LLM_DO_API_TOKEN") or ""), (
            f"{REPLICAS}: replica {name!r} must require the token as "
            "LLM_DO_API_TOKEN: ${LLM_DO_API_TOKEN:?message}; it listens on 0.0.0.0, which the "
            "service refuses without one"
        )
        missing = sorted(set(single) - set(env))
        assert not missing, (
            f"{REPLICAS}: replica {name!r} does not pass {missing}, which {COMPOSE} passes; "
            "add them to the shared `x-llm-do` environment"
        )
        for var, value in env.items():
            assert not (value is not None and re.fullmatch(r"\$\{\w+:?-\}", value)), (
                f"{REPLICAS}: {var}: {value} sets {var} to '' when the host leaves it unset; "
                f"pass it by bare name (`{var}:` with no value) instead"
            )


def test_replicas_mount_workers_and_files_like_docker_compose():
    single = {
        target: source
        for target, source in mounts_of(compose_service()).items()
        if target in {"/srv/workers", "/srv/files"}
    }
    assert len(single) == 2, f"{COMPOSE} should mount /srv/workers and /srv/files: {single}"
    for name, definition in replicas().items():
        mounts = mounts_of(definition)
        for target, source in single.items():
            assert mounts.get(target) == source, (
                f"{REPLICAS}: replica {name!r} mounts {mounts.get(target)!r} at {target}, "
                f"{COMPOSE} mounts {source!r}; every replica must see the same workers and "
                "files, or a run behaves differently depending on where it was POSTed"
            )


def test_replicas_healthcheck_is_the_one_of_docker_compose():
    single = (compose_service().get("healthcheck") or {}).get("test")
    for name, definition in replicas().items():
        test = (definition.get("healthcheck") or {}).get("test")
        assert test == single, (
            f"{REPLICAS}: replica {name!r} health probe {test!r} differs from {COMPOSE}'s "
            f"{single!r}; use the same python urllib GET /healthz (the image has no curl)"
        )
        for url in healthcheck_urls(test):
            assert urlsplit(url).port == cmd_port(), (
                f"{REPLICAS}: replica {name!r} probes {url}, but the Dockerfile CMD serves on "
                f"--port {cmd_port()}"
            )


def test_only_the_proxy_publishes_a_port_and_only_on_loopback():
    for name, definition in services().items():
        if name == PROXY:
            continue
        assert not definition.get("ports"), (
            f"{REPLICAS}: service {name!r} publishes {definition['ports']}; remove them: the "
            f"replicas, PostgreSQL and Redis are reached through the {PROXY!r} service only"
        )
    proxy = service(PROXY)
    ports = ports_of(PROXY, proxy)
    assert ports, f"{REPLICAS}: the {PROXY!r} service publishes no port; publish 127.0.0.1:8000"
    listen = {
        int(re.sub(r"^.*:", "", args[0]))
        for server in named(nginx_conf(), "server")
        for _, args, _ in named(server[2], "listen")
    }
    for host_ip, _published, target in ports:
        assert host_ip == "127.0.0.1", (
            f"{REPLICAS}: the proxy must publish on 127.0.0.1 only (got host ip {host_ip!r}); "
            "beyond localhost the API token is all that guards the workers"
        )
        assert target in listen, (
            f"{REPLICAS}: the proxy publishes container port {target}, but {NGINX} listens on "
            f"{sorted(listen)}; make them the same"
        )


def test_proxy_runs_nginx_with_this_config_after_the_replicas():
    proxy = service(PROXY)
    image = str(proxy.get("image", ""))
    match = re.fullmatch(
        r"(?:docker\.io/)?(?:library/)?nginx:(\d+)\.(\d+)(?:\.(\d+))?(?:-.*)?", image
    )
    assert match, f"{REPLICAS}: the proxy should run a versioned nginx image, got {image!r}"
    uses_resolve = any("resolve" in args[1:] for _, args, _ in named(upstream()[1], "server"))
    if uses_resolve:
        version = tuple(int(p) if p else 99 for p in match.groups())
        assert version >= (1, 27, 3), (
            f"{NGINX}: `server ... resolve` in an upstream needs nginx >= 1.27.3, but the proxy "
            f"runs {image}; use nginx:1.27-alpine or newer"
        )
        assert effective("resolver") or named(upstream()[1], "resolver"), (
            f"{NGINX}: `resolve` needs a `resolver` (Docker's DNS is 127.0.0.11); nginx will "
            "not start without one"
        )
    entries = [
        (source, target, entry)
        for entry in proxy.get("volumes") or []
        for source, target in [parse_volume(entry)]
    ]
    mounted = {target: (source, entry) for source, target, entry in entries}
    assert NGINX_CONF_TARGET in mounted, (
        f"{REPLICAS}: mount ./deploy/nginx.conf at {NGINX_CONF_TARGET} in the proxy, or nginx "
        "serves its welcome page instead of the replicas"
    )
    source, entry = mounted[NGINX_CONF_TARGET]
    assert source is not None and (REPLICAS.parent / source).resolve() == NGINX, (
        f"{REPLICAS}: the proxy mounts {source!r} at {NGINX_CONF_TARGET}; mount ./deploy/nginx.conf"
    )
    assert isinstance(entry, str) and entry.endswith(":ro"), (
        f"{REPLICAS}: mount the nginx config read-only (`...:{NGINX_CONF_TARGET}:ro`)"
    )
    depends = proxy.get("depends_on") or []
    missing = sorted(set(replicas()) - set(depends))
    assert not missing, f"{REPLICAS}: the proxy should depend on every replica; missing {missing}"


# --- the proxy ---------------------------------------------------------------------------------


def test_upstream_is_exactly_the_three_replicas_on_the_serve_port():
    name, directives = upstream()
    servers = sorted(args[0] for _, args, _ in named(directives, "server"))
    expected = sorted(f"{replica}:{cmd_port()}" for replica in replicas())
    assert servers == expected, (
        f"{NGINX}: upstream {name} lists {servers}; it should list every replica service on "
        f"the port the Dockerfile CMD serves on, {expected}"
    )
    for _, args, _ in named(directives, "server"):
        assert not {"backup", "down"} & set(args[1:]), (
            f"{NGINX}: `server {' '.join(args)}` is kept out of the rotation; drop backup/down"
        )


def test_upstream_has_no_session_affinity():
    _, directives = upstream()
    found = sorted({d[0] for d in directives} & AFFINITY)
    assert not found, (
        f"{NGINX}: the upstream uses {found}; remove it. Any replica serves any run, and "
        "affinity only piles clients onto one replica (and onto a dead one's successor)"
    )


def test_streams_pass_through_unbuffered():
    expected = {
        "proxy_http_version": (["1.1"], "SSE responses are chunked; HTTP/1.0 has no chunking"),
        "proxy_buffering": (["off"], "nginx would hold SSE events until its buffer fills"),
        "proxy_cache": (["off"], "event streams and run records must never come from a cache"),
        "proxy_request_buffering": (
            ["off"],
            "uploads would be spooled to a file in the proxy before reaching a replica",
        ),
    }
    for directive, (value, why) in expected.items():
        actual = effective(directive)
        assert actual == value, (
            f"{NGINX}: set `{directive} {' '.join(value)};` in the proxied location (got "
            f"{actual}): {why}"
        )
    assert proxy_headers().get("connection") == "", (
        f'{NGINX}: set `proxy_set_header Connection "";` so the client\'s Connection header '
        "does not close (or upgrade) the kept-alive connection to the replica"
    )


def test_long_waits_are_not_cut_off():
    floor = max(3600, float(settings_default("approval_timeout_s")))
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        value = effective(directive)
        actual = seconds(value[0]) if value else 60
        assert actual >= floor, (
            f"{NGINX}: {directive} is {actual:g} s; set it to at least {floor:g}s. A blocking "
            "run answers only when it ends (approvals wait up to LLM_DO_APPROVAL_TIMEOUT_S) and "
            "nginx would close it with a 504"
        )


def test_a_post_is_never_retried_on_another_replica():
    value = effective("proxy_next_upstream") or ["error", "timeout"]
    assert "non_idempotent" not in value, (
        f"{NGINX}: `proxy_next_upstream {' '.join(value)}` re-sends POSTs to another replica; "
        "drop non_idempotent: a run executes where it was POSTed, so a retried POST starts it "
        "twice (and a retried approve or cancel is sent twice)"
    )


def test_keepalive_connections_are_dropped_before_uvicorn_drops_them():
    _, directives = upstream()
    if not named(directives, "keepalive"):
        return
    uvicorn = import_or_fail("uvicorn")
    server_timeout = inspect.signature(uvicorn.Config).parameters["timeout_keep_alive"].default
    value = named(directives, "keepalive_timeout")
    nginx_timeout = seconds(value[-1][1][0]) if value else 60
    assert nginx_timeout < server_timeout, (
        f"{NGINX}: the upstream keeps idle connections {nginx_timeout:g} s, uvicorn closes them "
        f"after {server_timeout} s; set `keepalive_timeout {server_timeout - 1}s;` in the "
        "upstream, or a POST sent on a connection uvicorn just closed fails with a 502"
    )


def test_uploads_up_to_the_service_limit_get_through():
    limit = int(settings_default("max_body_bytes"))
    value = effective("client_max_body_size")
    actual = size_bytes(value[0]) if value else 1024**2
    assert actual == 0 or actual >= limit, (
        f"{NGINX}: client_max_body_size is {actual} bytes, below the service's "
        f"LLM_DO_MAX_BODY_BYTES default of {limit}; set `client_max_body_size "
        f"{-(-limit // 1024**2)}m;` or nginx refuses uploads the service accepts"
    )


def test_host_and_forwarded_headers_reach_the_replicas():
    headers = proxy_headers()
    assert headers.get("host") == "$http_host", (
        f"{NGINX}: set `proxy_set_header Host $http_host;` (got {headers.get('host')!r}). The "
        "service checks Host against loopback + LLM_DO_ALLOWED_HOSTS and compares a POST's "
        "Origin with http://<Host>: $host drops the port, so the web page's own POSTs "
        "(Origin http://127.0.0.1:8000) would be refused as cross-origin, and nginx's default "
        "($proxy_host, the upstream name) is not an allowed host at all"
    )
    for header in ("x-forwarded-for", "x-forwarded-proto"):
        assert header in headers, f"{NGINX}: set `proxy_set_header {header} ...;`"


# --- ... and with what the app reads -----------------------------------------------------------


def test_every_llm_do_variable_is_a_settings_field():
    settings_cls = import_or_fail("app.settings").Settings
    prefix = settings_cls.model_config.get("env_prefix", "")
    assert prefix.upper() == ENV_PREFIX, (
        f"app.settings.Settings reads env prefix {prefix!r}, {REPLICAS.name} uses {ENV_PREFIX}"
    )
    fields = set(settings_cls.model_fields)
    unknown: dict[str, list[str]] = {}
    for service_name, definition in services().items():
        for name in env_of(definition):
            if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() not in fields:
                unknown.setdefault(name, []).append(service_name)
    assert not unknown, (
        f"{REPLICAS} sets {sorted(unknown)} (in services {unknown}), but app.settings.Settings "
        "has no such fields, so the app would silently ignore them; add the fields to Settings "
        f"or fix the names (fields: {sorted(fields)})"
    )
