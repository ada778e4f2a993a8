"""Render a worker's instructions: a Jinja2 template when the body holds `{{`, `{%` or `{#`.

`{{ file('X') }}` and `{% include 'X' %}` read files under the worker's own folder,
through the one containment check; a path that escapes it or is missing is an
InvalidWorker error naming the path. The files read are returned so the registry
can reload the worker when one of them changes.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from .errors import InvalidWorker, SandboxViolation
from .paths import resolve_inside

_MARKERS = ("{{", "{%", "{#")


def render_instructions(body: str, *, folder: Path, source: str) -> tuple[str, list[Path]]:
    """Return (instructions, files read). `source` names the worker file in errors."""
    text = body.strip()
    if not any(m in text for m in _MARKERS):
        return text, []
    used: list[Path] = []

    def read(rel: str) -> str:
        try:
            real = resolve_inside(folder, rel)
        except SandboxViolation as exc:
            raise InvalidWorker(
                f"{source}: template path {rel!r}: {exc.message}", path=source
            ) from None
        try:
            content = real.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InvalidWorker(
                f"{source}: template file {rel!r} does not exist", path=source
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidWorker(f"{source}: template file {rel!r}: {exc}", path=source) from exc
        used.append(real)
        return content

    class _Loader(jinja2.BaseLoader):
        def get_source(self, environment, template):  # type: ignore[override]
            return read(template), None, lambda: False

    env = jinja2.Environment(
        loader=_Loader(),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.globals["file"] = read
    try:
        rendered = env.from_string(text).render()
    except InvalidWorker:
        raise
    except jinja2.TemplateError as exc:
        raise InvalidWorker(f"{source}: instructions template: {exc}", path=source) from exc
    return rendered.strip(), used
