"""Helpers of the several-replicas tests: a fresh PostgreSQL schema and Redis prefix per test,
a Redis server of the test's own (to stop and restart), and N `llm-do serve` processes
sharing them.

The machine's PostgreSQL and Redis are used where a test only needs them running; a test
that stops a server starts its own on a free port rather than disturb the shared ones.
Without them the tests skip (fail under CI, see tests/servers.py), saying what is missing and
which variable points elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncpg

from tests.e2e.e2e_support import Service, free_port, run_service, stop_process
from tests.servers import missing

POSTGRES = os.environ.get("LLM_DO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("LLM_DO_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A store URL on a schema of its own (dropped afterwards), or a skip saying why not."""

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    schema = f"r_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(run(f'CREATE SCHEMA "{schema}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        missing(f"no PostgreSQL at {POSTGRES} ({exc}); set LLM_DO_TEST_POSTGRES_URL")
    try:
        yield f"{POSTGRES}?schema={schema}"
    finally:
        asyncio.run(run(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def redis_bus_url() -> str:
    """The machine's Redis with a key prefix of this test's own, or a skip saying why not."""
    rest = REDIS.removeprefix("redis://").split("/")[0]
    host, _, port = rest.rpartition(":")
    if not _reachable(host or "127.0.0.1", int(port or 6379)):
        missing(f"no Redis at {REDIS}; set LLM_DO_TEST_REDIS_URL")
    sep = "&" if "?" in REDIS else "?"
    return f"{REDIS}{sep}prefix=t{uuid.uuid4().hex[:10]}"


class RedisServer:
    """`redis-server` on a free port, keeping nothing on disk: stop() and start() again on
    the same port is a Redis restart that lost every key."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed (Debian package redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.workdir)]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not _reachable("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


@contextmanager
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def replicas(
    count: int,
    *,
    workers: Path,
    tmp_path: Path,
    fake_base_url: str,
    store_url: str,
    bus_url: str,
    **env: str,
) -> Iterator[list[Service]]:
    """`count` services sharing one store and one bus, named r0, r1, ... (LLM_DO_REPLICA_ID)."""
    with ExitStack() as stack:
        services = [
            stack.enter_context(
                run_service(
                    workers=workers,
                    data_dir=tmp_path / f"r{i}",
                    fake_base_url=fake_base_url,
                    LLM_DO_STORE_URL=store_url,
                    LLM_DO_BUS_URL=bus_url,
                    LLM_DO_REPLICA_ID=f"r{i}",
                    **env,
                )
            )
            for i in range(count)
        ]
        yield services
