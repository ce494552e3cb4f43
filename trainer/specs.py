"""Resolving what users bring: `package.module:function` specs, importable from the working directory."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Callable

from trainer.errors import TrainerError

_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_callable_spec(spec: str) -> bool:
    return bool(_CALLABLE_SPEC.match(spec))


def import_callable(spec: str, error: type[TrainerError], what: str) -> Callable[..., Any]:
    """Import `package.module:function`, looking in the working directory too (as `python -m` does)."""
    module_name, func_name = spec.split(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{what} {spec!r}: cannot import module {module_name!r} ({exc}); check the name and that it is importable from {cwd}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise error(f"{what} {spec!r}: module {module_name!r} has no function {func_name!r}")
    return func


def worker_runtime_env() -> dict:
    """Runtime env that lets Ray workers import user modules from the driver's working directory."""
    paths = [os.getcwd()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}
