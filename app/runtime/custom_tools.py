"""Load the functions a directory-form worker names in `custom_tools` from its `tools.py`.

Sync functions become tools that PydanticAI runs in a worker thread, async ones run
on the loop. A `tools.py` that fails to import makes that worker invalid, never the
service.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InvalidWorker, SandboxViolation
from .paths import resolve_inside

_counter = itertools.count()


def import_file(py: Path, *, shown: str) -> Any:
    """Import a worker's Python file fresh, under a private name; failure invalidates only
    that worker."""
    module_name = f"llm_do_user_{py.parent.name}_{py.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, py)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # any import-time error of user code invalidates only this worker
        raise InvalidWorker(
            f"{shown}: failed to import: {type(exc).__name__}: {exc}", path=shown
        ) from exc
    finally:
        sys.modules.pop(module_name, None)
    return module


def load_code(folder: Path, ref: str, *, source: str) -> tuple[Callable[..., Any], Path]:
    """`FILE.py:FUNCTION` of a code worker: (the async function, the file)."""
    file, sep, function = ref.partition(":")
    if not sep or not file.endswith(".py") or not function.isidentifier():
        raise InvalidWorker(
            f"{source}: field 'code': {ref!r} is not 'FILE.py:FUNCTION'", path=source, field="code"
        )
    try:
        py = resolve_inside(folder, file)
    except SandboxViolation as exc:
        raise InvalidWorker(
            f"{source}: field 'code': {exc.message}", path=source, field="code"
        ) from None
    if not py.is_file():
        raise InvalidWorker(
            f"{source}: field 'code': {file} does not exist beside the worker file",
            path=source,
            field="code",
        )
    module = import_file(py, shown=str(Path(source).parent / file))
    fn = getattr(module, function, None)
    if fn is None or not callable(fn):
        raise InvalidWorker(
            f"{source}: field 'code': {file} has no function {function!r}",
            path=source,
            field="code",
        )
    if not inspect.iscoroutinefunction(fn):
        raise InvalidWorker(
            f"{source}: field 'code': {function} must be 'async def {function}(ctx, input)'",
            path=source,
            field="code",
        )
    return fn, py


def load_tools(tools_py: Path, names: list[str], *, source: str) -> list[Callable[..., Any]]:
    if not names:
        return []
    if not tools_py.is_file():
        raise InvalidWorker(
            f"{source}: field 'custom_tools' names {names} but there is no tools.py beside it",
            path=source,
            field="custom_tools",
        )
    module = import_file(tools_py, shown=str(Path(source).parent / "tools.py"))
    functions = []
    for name in names:
        fn = getattr(module, name, None)
        if fn is None or not inspect.isfunction(fn):
            raise InvalidWorker(
                f"{source}: field 'custom_tools': {tools_py.name} has no function {name!r}",
                path=source,
                field="custom_tools",
            )
        takes_ctx = next(iter(inspect.signature(fn).parameters), None) == "ctx"
        if takes_ctx and not inspect.iscoroutinefunction(fn):
            raise InvalidWorker(
                f"{source}: tool {name!r} takes ctx, so it must be 'async def'",
                path=source,
                field="custom_tools",
            )
        functions.append(fn)
    return functions
