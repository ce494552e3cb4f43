"""Shared fixtures: one Ray session for the whole suite, stores dumped once and reused, user modules."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest
from helpers import free_port

# Built-in teachers are trained once per test session into a private cache, never the user's.
_CACHE = Path(tempfile.mkdtemp(prefix="logitstore-test-cache-"))
os.environ["LOGITSTORE_CACHE"] = str(_CACHE)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from trainer.inputs.specs import worker_runtime_env
    from trainer.ray_env import configure_data_context

    # A local Ray of its own, never a cluster that `ray start` left on the machine.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env=worker_runtime_env(),
    )
    configure_data_context()
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def teacher_cache() -> Path:
    return _CACHE


@pytest.fixture(scope="session")
def dump(ray_session, tmp_path_factory):
    """dump(**config) -> store path; the same arguments are dumped once per session."""
    from trainer.teacher.config import DumpConfig
    from trainer.teacher.pipeline import run_dump

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
def digits_stores(dump):
    """The digits teacher's stores the student tests share: train (k=5, 3 shards) and eval (k=10)."""
    return {
        "train": dump(teacher="digits-cnn", dataset="digits", top_k=5, shard_size=500),
        "eval": dump(teacher="digits-cnn", dataset="digits-eval", top_k=10, format="zarr", shard_size=100),
    }


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


@pytest.fixture
def buggy_student(user_modules, tmp_path):
    """(spec, raised): a digits student whose first training step raises IndexError (a plain bug),
    appending one line to `raised` each time it does (how many times the step ran)."""
    raised = tmp_path / "raised"
    name = f"buggy_{tmp_path.name.replace('-', '_').replace('[', '_').replace(']', '_')}"
    user_modules(
        name,
        f"""
        from trainer.builtin.digits import DigitsMLP

        class Buggy(DigitsMLP):
            calls = 0
            def forward(self, x):
                Buggy.calls += 1
                if Buggy.calls == 5:  # a training step's (the driver probes the width with one call)
                    with open({str(raised)!r}, "a") as f:
                        f.write("raised\\n")
                    return ()[0]
                return super().forward(x)

        def student():
            return Buggy()
    """,
    )
    return f"{name}:student", raised


@pytest.fixture(scope="session")
def lm_teacher(user_modules):
    """`lm_models:tiny_gpt`, a small byte-level GPT of random weights: the tests check the pipeline
    against the teacher's own outputs, not its quality, so it needs no training."""
    user_modules(
        "lm_models",
        """
        import torch
        from trainer.builtin.stdlib.gpt import GPT, GPTConfig
        def tiny_gpt():
            torch.manual_seed(3)
            return GPT(GPTConfig(vocab_size=256, seq_len=128, width=32, depth=1, heads=2))
    """,
    )
    import lm_models

    return lm_models.tiny_gpt()


# The S3 test server's settings are in the environment before Ray starts, so Ray's workers find it
# as the driver does (a real cluster's nodes get them from theirs; the jobs forward AWS_* too).
_S3_ENV = {
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
    "LOGITSTORE_OBJECT_RETRY_SECONDS": "5",
}
os.environ.update(_S3_ENV)


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server on 127.0.0.1 (moto's server mode) for the session, found by the
    client through AWS_ENDPOINT_URL as a real endpoint would be; -> uri(name): a fresh s3:// prefix."""
    import uuid

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(_S3_ENV["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]))
    server.start()
    boto3.client("s3").create_bucket(Bucket="logitstore-test")
    yield lambda name: f"s3://logitstore-test/{name}-{uuid.uuid4().hex[:8]}"
    server.stop()
