"""The jobs on a 3-node Ray cluster (ray.cluster_utils.Cluster) with every path on the S3 server:
scripts/cluster_e2e.py, run as a new user would, in a process of its own (it starts its own
cluster and server; this session's Ray stays as it is). ~3 min."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_dump_verify_inspect_and_train_on_three_nodes_with_everything_on_s3(tmp_path):
    # Not this session's Ray settings (ray.init sets RAY_AUTH_MODE and others in our environment).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.cluster_e2e", "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "identical" in done.stdout and "all checks passed" in done.stdout
    assert "'ShardDumper': {'teacher_node'}" in done.stdout and "'RayTrainWorker': {'train_node'}" in done.stdout
    assert "{'node-teacher': ['teacher'], 'node-trainer': ['student'], 'node-head': [], 'driver': []}" in done.stdout
