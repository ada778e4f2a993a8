"""POST /login: the web page's sign-in. It trades the API token for an HttpOnly,
SameSite=Strict cookie, which `fetch` and `EventSource` then send by themselves."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from app.api.deps import SettingsDep
from app.api.security import COOKIE, token_matches

router = APIRouter(include_in_schema=False)


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> RedirectResponse:
    form = await request.form()
    token = str(form.get("token", ""))
    expected = settings.api_token.encode() if settings.api_token else None
    if not token_matches(token, expected):
        return RedirectResponse("/#login-failed", status_code=303)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
async def logout() -> RedirectResponse:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
