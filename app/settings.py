"""Every setting of the service, in one place. The only reader of environment variables.

Built once (by the CLI or a test) and passed to `create_app`; never read at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLM_DO_", extra="ignore")

    workers_dir: Path = Field(Path("workers"), description="Folder holding the .worker files")
    host: str = Field("127.0.0.1", description="Address `llm-do serve` binds")
    port: int = Field(8000, description="Port `llm-do serve` binds")
    model: str | None = Field(
        None, description="Default model for workers that name none (unset: the offline `echo`)"
    )
    approval: Literal["prompt", "approve_all", "deny_all"] = Field(
        "prompt", description="Approval mode of runs that do not ask for one"
    )
    approval_timeout_s: float = Field(
        600, gt=0, description="Seconds a gated tool call waits for a decision before it is denied"
    )
    stall_timeout_s: float = Field(
        120, gt=0, description="Seconds a model request may go without a byte before it fails"
    )
    max_depth: int = Field(5, ge=0, description="Deepest nesting of worker_call (root is 0)")
    data_dir: Path = Field(Path(".llm-do"), description="Folder for the service's own data")
    store_url: str | None = Field(
        None,
        description="Run store: sqlite:///PATH, postgresql://... or memory:// "
        "(default: SQLite in the data dir)",
    )
    bus_url: str | None = Field(
        None,
        description="Bus shared by several replicas: redis://HOST:PORT/DB "
        "(unset: in-process, one replica)",
    )
    lease_s: float = Field(
        30,
        gt=0,
        description="Seconds after which a silent replica's runs are ended as `interrupted`",
    )
    replica_id: str | None = Field(
        None,
        description="This replica's name in run records and /healthz (default: host-pid-random)",
    )
    retention_days: float | None = Field(
        30, gt=0, description="Ended runs older than this many days are deleted (unset: kept)"
    )
    retention_runs: int | None = Field(
        10000, gt=0, description="At most this many ended runs are kept, newest first"
    )
    ping_s: float = Field(15, gt=0, description="Seconds of SSE silence before a `: ping`")
    shutdown_grace_s: float = Field(
        5, ge=0, description="Seconds open requests get to finish when the server stops"
    )
    log_level: str = Field("info", description="uvicorn log level")
    api_token: str | None = Field(
        None,
        description="Bearer token every route but /healthz requires (required off loopback)",
    )
    allowed_hosts: str = Field(
        "", description="Extra Host names accepted besides loopback ones, comma-separated"
    )
    allowed_origins: str = Field(
        "", description="Extra browser origins allowed to call the API (CORS), comma-separated"
    )
    max_body_bytes: int = Field(25_000_000, gt=0, description="Largest request body (413 beyond)")
    max_runs: int = Field(100, gt=0, description="Most runs at once (429 with Retry-After beyond)")

    @property
    def extra_hosts(self) -> set[str]:
        return {h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()}

    @property
    def extra_origins(self) -> set[str]:
        return {o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()}

    def check_bind(self) -> None:
        """Refuse to serve beyond loopback without a token: anyone who can reach the port
        could run workers, write files and spend provider credits."""
        if self.host not in LOOPBACK_HOSTS and not self.api_token:
            raise SystemExit(
                f"llm-do: refusing to listen on {self.host!r} without an API token. "
                "Set LLM_DO_API_TOKEN (clients then send 'Authorization: Bearer <token>'), "
                "or bind 127.0.0.1."
            )

    @property
    def default_model(self) -> str:
        return self.model or "echo"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'runs.sqlite3'}"
