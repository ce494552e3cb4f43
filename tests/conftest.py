"""Shared fixtures: one Ray session for the whole suite, and stores dumped once and reused."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# The digits teacher is trained once per test session into a private cache, never the user's.
_CACHE = Path(tempfile.mkdtemp(prefix="logitstore-test-cache-"))
os.environ["LOGITSTORE_CACHE"] = str(_CACHE)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from trainer.ray_env import configure_data_context
    from trainer.specs import worker_runtime_env

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", runtime_env=worker_runtime_env())
    configure_data_context()
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def teacher_cache() -> Path:
    return _CACHE


@pytest.fixture(scope="session")
def dump(ray_session, tmp_path_factory):
    """dump(name, **config) -> store path; the same arguments are dumped once per session."""
    from trainer.config import DumpConfig
    from trainer.dump import run_dump

    root = tmp_path_factory.mktemp("stores")
    done: dict[tuple, str] = {}

    def _dump(**kwargs) -> str:
        key = tuple(sorted(kwargs.items()))
        if key not in done:
            out = root / f"store{len(done)}"
            cfg = DumpConfig(out=str(out), **kwargs)
            assert cfg.validate() == []
            run_dump(cfg)
            done[key] = str(out)
        return done[key]

    return _dump


@pytest.fixture(scope="session")
def user_modules(tmp_path_factory):
    """add(name, source): a user's module, importable here and in Ray workers (as from their cwd)."""
    import importlib
    import sys
    import textwrap

    root = tmp_path_factory.mktemp("usermods")
    sys.path.insert(0, str(root))
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), saved]))

    def add(name: str, source: str) -> None:
        (root / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()

    yield add
    sys.path.remove(str(root))
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved
