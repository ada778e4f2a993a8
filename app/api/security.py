"""The service's front door, as one pure ASGI middleware (no per-chunk buffering).

A local service that can write files and spend API money is reachable by every web
page the user visits (they can send requests to 127.0.0.1) and, through DNS
rebinding, by remote pages that look same-origin. So, for every HTTP request:

1. `Host` must be a loopback name or one of LLM_DO_ALLOWED_HOSTS (DNS rebinding).
2. A state-changing request (not GET/HEAD/OPTIONS) that carries an `Origin` must come
   from this service's own origin or one of LLM_DO_ALLOWED_ORIGINS (cross-site requests).
3. Its body must be JSON or multipart (a `text/plain` or urlencoded form post is how a
   foreign page sends a request without a CORS preflight); `/login` takes its form.
4. Bodies over LLM_DO_MAX_BODY_BYTES are refused (413), with or without Content-Length.
5. With LLM_DO_API_TOKEN set, every route but `/healthz`, `/login` and the page's own
   files needs the token: `Authorization: Bearer`, the HttpOnly cookie set by `/login`,
   or `?access_token=` on a GET (for `EventSource`). Compared in constant time.
6. Every response gets the browser-safety headers (CSP without inline script, no
   framing, no sniffing, no referrer).
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import LOOPBACK_HOSTS, Settings

COOKIE = "llm_do_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BODY_TYPES = frozenset({"application/json", "multipart/form-data"})
PUBLIC_PATHS = frozenset({"/healthz", "/login", "/"})
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def token_matches(offered: str, expected: bytes | None) -> bool:
    """The one token comparison (constant time); no expected token matches nothing."""
    return bool(expected) and hmac.compare_digest(offered.encode(), expected)


def _refuse(status: int, type_: str, message: str, headers: list[tuple[bytes, bytes]] = ()):
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()

    async def respond(send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *SECURITY_HEADERS,
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return respond


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = {h.lower() for h in LOOPBACK_HOSTS} | settings.extra_hosts
        self.origins = settings.extra_origins
        self.max_body = settings.max_body_bytes
        self.token = settings.api_token.encode() if settings.api_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._check(scope, headers)
        if refusal is not None:
            await refusal(send)
            return
        if scope["method"] not in SAFE_METHODS:
            receive = self._limited(receive, headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except _TooLarge:
            await _refuse(413, "request_too_large", self._too_large_message())(send)

    def _too_large_message(self) -> str:
        return f"The request body is over {self.max_body} bytes (LLM_DO_MAX_BODY_BYTES)"

    def _check(self, scope: Scope, headers: Headers) -> Any:
        host = headers.get("host", "")
        if _hostname(host) not in self.hosts:
            return _refuse(
                400,
                "invalid_host",
                f"Host {host!r} is not served here; add it to LLM_DO_ALLOWED_HOSTS if it should be",
            )
        method, path = scope["method"], scope["path"]
        if method not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and not self._same_origin(origin, scope, host):
                return _refuse(
                    403,
                    "forbidden_origin",
                    f"Requests from the web page at {origin!r} may not change anything here; "
                    "add the origin to LLM_DO_ALLOWED_ORIGINS to allow it",
                )
            length = headers.get("content-length")
            has_body = (length is not None and length != "0") or "transfer-encoding" in headers
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            form_login = path == "/login" and ctype == "application/x-www-form-urlencoded"
            if has_body and ctype not in BODY_TYPES and not form_login:
                return _refuse(
                    415,
                    "unsupported_media_type",
                    f"Send a JSON body (Content-Type: application/json, e.g. curl --json) or "
                    f"multipart/form-data, not {ctype or 'no Content-Type'!r}",
                )
            if length is not None and length.isdigit() and int(length) > self.max_body:
                return _refuse(413, "request_too_large", self._too_large_message())
        if (
            self.token is not None
            and method != "OPTIONS"  # CORS preflights carry no credentials
            and not self._public(path)
            and not self._authorized(scope, headers)
        ):
            return _refuse(
                401,
                "unauthorized",
                "This service needs its API token: send 'Authorization: Bearer <token>' "
                "(the value of LLM_DO_API_TOKEN), or sign in on the web page",
                [(b"www-authenticate", b'Bearer realm="llm-do"')],
            )
        return None

    def _same_origin(self, origin: str, scope: Scope, host: str) -> bool:
        origin = origin.rstrip("/")
        return origin == f"{scope.get('scheme', 'http')}://{host}" or origin in self.origins

    @staticmethod
    def _public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith("/static/")

    def _authorized(self, scope: Scope, headers: Headers) -> bool:
        assert self.token is not None
        offered: list[str] = []
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            offered.append(auth[7:].strip())
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                offered.append(value)
        if scope["method"] == "GET" and scope.get("query_string"):
            query = parse_qs(scope["query_string"].decode("latin-1"))
            offered.extend(query.get("access_token", []))
        return any(token_matches(o, self.token) for o in offered)

    def _limited(self, receive: Receive, headers: Headers) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        return counted


class _TooLarge(Exception):
    """A body without Content-Length grew past the limit while the app read it."""
