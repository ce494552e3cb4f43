"""The jobs on a 3-node Ray cluster (ray.cluster_utils.Cluster) with every path on the S3 server:
scripts/cluster_e2e.py, run as a new user would, in a process of its own (it starts its own
cluster and server; this session's Ray stays as it is). CI runs its --quick form (~1.5 min)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "form",
    [
        pytest.param("--quick", id="quick"),  # ~1.5 min: the LM's dump, verify, inspect and training
        pytest.param("", id="full", marks=pytest.mark.battery),  # ~4 min: + the eval split, a digits run, a sweep
    ],
)
def test_dump_verify_inspect_and_train_on_three_nodes_with_everything_on_s3(tmp_path, form):
    # Not this session's Ray settings (ray.init sets RAY_AUTH_MODE and others in our environment).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.cluster_e2e", "--work-dir", str(tmp_path), *filter(None, [form])],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all checks passed" in done.stdout and ("identical" in done.stdout) == (form != "--quick")
    assert "'ShardDumper': {'teacher_node'}" in done.stdout and "'RayTrainWorker': {'train_node'}" in done.stdout
    assert "{'node-teacher': ['teacher'], 'node-trainer': ['student'], 'node-head': [], 'driver': []}" in done.stdout
    assert ("trained runs/a on the cluster" in done.stdout) == (form != "--quick")


PROBE = (
    "import json, ray\n"
    "from trainer.ray_env import ensure_ray\n"
    "ensure_ray()\n"
    "print(json.dumps({'gcs': ray.get_runtime_context().gcs_address, 'cpus': ray.cluster_resources()['CPU']}))\n"
)


def test_without_ray_address_a_job_starts_its_own_ray_beside_a_cluster_that_ray_start_left(tmp_path):
    """`ray start` records its cluster as the machine's current one, which ray.init() without an
    address joins: a job would have run on whatever cluster happened to be there. Unset, a job
    starts its own local Ray; RAY_ADDRESS=auto joins the machine's. The extra cluster lives in a
    Ray temp dir of this test's (RAY_TMPDIR: where `ray start` records it and ray.init looks) and
    is stopped by its process group: `ray stop` would stop every cluster on the machine."""
    import json
    import shutil
    import signal
    import tempfile
    from pathlib import Path

    from helpers import free_port

    root = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's sockets live below it (108 bytes at most)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=root, PYTHONWARNINGS="ignore")
    port = free_port()
    start = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}", "--num-cpus=1"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    # Not the default ports, which another cluster on the machine may hold.
    for flag in ("ray-client-server", "dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export"):
        start.append(f"--{flag}-port={free_port()}")
    start.append(f"--runtime-env-agent-port={free_port()}")
    head = subprocess.Popen(start, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = head.communicate(timeout=180)
        assert head.returncode == 0, out[-3000:]
        repo = Path(__file__).resolve().parents[2]

        def probe(**extra) -> dict:
            command = [sys.executable, "-c", PROBE]
            done = subprocess.run(command, env={**env, **extra}, cwd=repo, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stderr[-3000:]
            return json.loads(done.stdout.strip().splitlines()[-1])

        own = probe()
        assert own["gcs"].rsplit(":", 1)[1] != str(port) and own["cpus"] != 1, own
        joined = probe(RAY_ADDRESS="auto")
        assert joined["gcs"].rsplit(":", 1)[1] == str(port) and joined["cpus"] == 1, joined
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # the head's daemons (GCS, raylet, its workers) share its group
        shutil.rmtree(root, ignore_errors=True)
