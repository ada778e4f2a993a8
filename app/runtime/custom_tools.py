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

from .errors import InvalidWorker

_counter = itertools.count()


def load_tools(tools_py: Path, names: list[str], *, source: str) -> list[Callable[..., Any]]:
    if not names:
        return []
    if not tools_py.is_file():
        raise InvalidWorker(
            f"{source}: field 'custom_tools' names {names} but there is no tools.py beside it",
            path=source,
            field="custom_tools",
        )
    module_name = f"llm_do_tools_{tools_py.parent.name}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, tools_py)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # any import-time error of user code invalidates only this worker
        shown = str(Path(source).parent / "tools.py")
        raise InvalidWorker(
            f"{shown}: failed to import: {type(exc).__name__}: {exc}", path=shown
        ) from exc
    finally:
        sys.modules.pop(module_name, None)
    functions = []
    for name in names:
        fn = getattr(module, name, None)
        if fn is None or not inspect.isfunction(fn):
            raise InvalidWorker(
                f"{source}: field 'custom_tools': {tools_py.name} has no function {name!r}",
                path=source,
                field="custom_tools",
            )
        functions.append(fn)
    return functions
