"""The jobs on a 3-node Ray cluster with every path on object storage, as a new user runs them.

    python -m scripts.cluster_e2e [--work-dir DIR] [--quick]

Starts moto's S3 server on 127.0.0.1 (in this process) and a local Ray cluster of three nodes
(ray.cluster_utils.Cluster): a head (1 CPU), a "teacher" node and a "trainer" node (2 CPUs each,
custom resources teacher_node and train_node). Each node has a directory of its own for HOME,
TMPDIR and LOGITSTORE_CACHE, and so does the driver (its working directory): the nodes of one
machine share a disk, so this is how the run shows that no job needs a shared one. Then, each job
a process of its own with RAY_ADDRESS set, as on a real cluster:

  dump_logits (train and eval splits) --out s3://...  --actor-resources '{"teacher_node": 1}'
  verify_store s3://..., inspect_store s3://...
  train_student --store s3://... --eval-store s3://... --output s3://... --worker-resources '{"train_node": 1}'
  sweep (two temperatures, one Ray Train run) --output s3://... --worker-resources '{"train_node": 1}'
  an LM: dump_logits --teacher hf:s3://.../models/teacher --dataset s3://.../chat.jsonl, then
  train_student --student hf:s3://.../models/student (tiny random Llamas and chat rows uploaded first)

and checks: the s3 store (the digits train split; --quick: the LM's) decodes identically to the
same dump on the driver's local disk; the teacher actors ran on the teacher node, the training
workers on the trainer node (rank 0 staged its logs in its directory); the hf:s3
teacher's weights were copied to the teacher node's cache, the student's to the trainer node's,
and no weights to the driver's; the runs' outputs are on s3; and nothing else was written to the
driver's directory. Exit status 1 on any failed check.

--quick (CI, ~1.5 min instead of ~4): the LM's jobs only (its dump, verify, inspect, training) and
the checks on where they ran and what they wrote; no comparison with a local dump (CI compares
stores on s3 with stores on disk in tests/store/test_object_store.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUCKET = "cluster-e2e"


def start_s3() -> dict:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "e2e",
        "AWS_SECRET_ACCESS_KEY": "e2e",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    os.environ.update(env)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return env


def home(directory: Path) -> dict:
    """A node's (or the driver's) own HOME, TMPDIR and logitstore cache."""
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    return {"HOME": str(directory), "TMPDIR": str(directory / "tmp"), "LOGITSTORE_CACHE": str(directory / "cache")}


def start_cluster(work: Path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"head_node": 1}, "env_vars": home(work / "node-head")},
    )
    cluster.add_node(num_cpus=2, resources={"teacher_node": 1}, env_vars=home(work / "node-teacher"))
    cluster.add_node(num_cpus=2, resources={"train_node": 1}, env_vars=home(work / "node-trainer"))
    cluster.wait_for_nodes()
    return cluster


def run(job: list[str], driver: Path, env: dict, log) -> None:
    print(f"$ python -m {' '.join(job)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *job], cwd=driver, env=env, stdout=log, stderr=log)
    if done.returncode != 0:
        raise SystemExit(f"failed (exit {done.returncode}) after {time.perf_counter() - start:.0f} s; see {log.name}")
    print(f"  ok, {time.perf_counter() - start:.0f} s", flush=True)


def files_under(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} if path.exists() else set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.cluster_e2e", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="CI: the LM's jobs only")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="cluster-e2e-")).resolve()
    driver = work / "driver"
    driver.mkdir(parents=True, exist_ok=True)
    s3_env = start_s3()
    cluster = start_cluster(work)
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **s3_env, **home(driver), "RAY_ADDRESS": cluster.address, "PYTHONPATH": repo}
    env.pop("LOGITSTORE_LEASE_SECONDS", None)
    s3 = f"s3://{BUCKET}"
    print(f"cluster at {cluster.address}: 3 nodes; S3 at {s3_env['AWS_ENDPOINT_URL']}; work in {work}", flush=True)
    try:
        with open(work / "jobs.log", "w") as log:
            before, after, checked = run_jobs(work, driver, env, s3, args.quick, log)
            # The same dump on local disk without the cluster (a local Ray of its own), for the comparison.
            # (RAY_ADDRESS=local: a Ray of its own, not the cluster this machine runs, which a plain
            # ray.init() would join; the usual temporary directory: its sockets' paths must stay short)
            alone = {**{k: v for k, v in env.items() if k != "TMPDIR"}, "RAY_ADDRESS": "local"}
            if not args.quick:  # the digits train split's dump
                local = ["jobs.dump_logits", "--teacher", "digits-cnn", "--dataset", "digits"]
                run([*local, "--out", str(work / "local-store")], driver, alone, log)
        os.environ["RAY_ADDRESS"] = cluster.address
        failures = checks(work, driver, s3, checked, (before, after), env, args.quick)
    finally:
        cluster.shutdown()
    for failure in failures:
        print(f"FAILED: {failure}")
    print("all checks passed" if not failures else f"{len(failures)} checks failed")
    return 1 if failures else 0


def run_jobs(work: Path, driver: Path, env: dict, s3: str, quick: bool, log) -> tuple[set[str], set[str], str]:
    """The jobs on the cluster: the driver's files before and after the training jobs, and the
    store to compare with the same dump on local disk."""
    pinned = ["--actor-resources", json.dumps({"teacher_node": 1})]
    on_trainer = ["--worker-resources", json.dumps({"train_node": 1})]
    lm = upload_lm(work / "upload", s3)
    dump = ["jobs.dump_logits", "--teacher", f"hf:{lm['teacher']}", "--dataset", lm["data"], "--top-k", "4"]
    run([*dump, "--seq-len", "64", "--shard-size", "4", "--out", f"{s3}/chat-store", *pinned], driver, env, log)
    checked = f"{s3}/chat-store"
    if not quick:
        for split, out in (("digits", "digits-train"), ("digits-eval", "digits-eval")):
            run(["jobs.dump_logits", "--teacher", "digits-cnn", "--dataset", split, "--out", f"{s3}/{out}", *pinned],
                driver, env, log)  # fmt: skip
        checked = f"{s3}/digits-train"
    before = files_under(driver)
    run(["jobs.verify_store", checked], driver, env, log)
    run(["jobs.inspect_store", checked, "--out", str(driver / "inspect")], driver, env, log)
    if not quick:
        train = ["jobs.train_student", "--store", f"{s3}/digits-train", "--eval-store", f"{s3}/digits-eval"]
        train += ["--dataset", "digits-fewlabels", "--eval-dataset", "digits-eval", "--student", "digits-mlp"]
        run([*train, "--output", f"{s3}/runs/a", "--epochs", "3", *on_trainer], driver, env, log)
        sweep = ["jobs.sweep", *train[1:], "--output", f"{s3}/sweeps/t", "--epochs", "2"]
        sweep += ["--space", json.dumps({"temperature": {"grid": [1, 4]}}), "--students-per-run", "2"]
        run([*sweep, *on_trainer], driver, env, log)
    lm_train = ["jobs.train_student", "--store", f"{s3}/chat-store", "--student", f"hf:{lm['student']}"]
    run([*lm_train, "--output", f"{s3}/runs/lm", "--epochs", "1", "--batch-size", "4", *on_trainer], driver, env, log)
    return before, files_under(driver), checked


def upload_lm(directory: Path, s3: str) -> dict[str, str]:
    """Tiny random Llamas (a teacher with its tokenizer, a student) and chat rows, made here and
    uploaded: the jobs get only their s3:// URIs."""
    from logitstore.storage import open_storage
    from tests.helpers import tiny_chat_tokenizer, tiny_llama, write_jsonl

    tok = tiny_chat_tokenizer(directory / "teacher")
    tiny_llama(directory / "teacher", len(tok), max_positions=64, init_std=0.2)
    tiny_llama(directory / "student", len(tok), max_positions=64, seed=1)
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(24)
    ]
    write_jsonl(directory / "chat.jsonl", rows)
    uris = {"teacher": f"{s3}/models/teacher", "student": f"{s3}/models/student", "data": f"{s3}/data/chat.jsonl"}
    for name in ("teacher", "student"):
        files = {p.name: p.read_bytes() for p in (directory / name).iterdir() if p.is_file()}
        open_storage(uris[name]).put_many(files)
    open_storage(f"{s3}/data").put("chat.jsonl", (directory / "chat.jsonl").read_bytes())
    return {**uris, "teacher_weights": str(directory / "teacher"), "student_weights": str(directory / "student")}


def model_copies(node: Path) -> set[bytes]:
    """The weights of the hf: models a node copied from object storage into its cache."""
    return {p.read_bytes() for p in (node / "cache" / "hf-models").glob("*/model.safetensors")}


def actor_nodes() -> dict[str, set[str]]:
    """Per kind of actor the jobs started (teacher actors, training workers), the custom resource
    of the nodes they ran on: from Ray's record of every actor, dead ones included."""
    import ray
    from ray._private.state import actors  # the GCS actor table (the state API needs the dashboard)

    ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
    node_kind = {n["NodeID"]: next((r for r in n["Resources"] if r.endswith("_node")), "?") for n in ray.nodes()}
    placed: dict[str, set[str]] = {}
    for actor in actors().values():
        for kind in ("ShardDumper", "RayTrainWorker"):
            if kind in actor.get("ActorClassName", ""):
                where = node_kind.get(actor["Address"]["NodeID"], "?")
                placed.setdefault(kind, set()).add(where)
                if where != {"ShardDumper": "teacher_node", "RayTrainWorker": "train_node"}[kind]:
                    print({k: actor.get(k) for k in ("ActorClassName", "State", "StartTime", "EndTime", "Address")})
                    print(str(actor.get("DeathCause"))[:500])
    ray.shutdown()
    return placed


def checks(
    work: Path, driver: Path, s3: str, checked: str, files: tuple[set[str], set[str]], env: dict, quick: bool
) -> list[str]:
    failures = [] if quick else compare_with_local(work, driver, checked, env)
    placed = actor_nodes()
    print(f"where the actors ran: {placed}")
    if placed.get("ShardDumper") != {"teacher_node"}:
        failures.append(f"the teacher actors ran on {placed.get('ShardDumper')}, not only on the teacher node")
    if placed.get("RayTrainWorker") != {"train_node"}:
        failures.append(f"the training workers ran on {placed.get('RayTrainWorker')}, not only on the trainer node")
    staged = [f for f in files_under(work / "node-trainer") if f.endswith("logs/steps.csv")]
    if not staged:
        failures.append("no training worker staged its logs on the trainer node: the workers ran elsewhere")
    failures += output_checks(s3, ["runs/lm"] if quick else ["runs/a", "runs/lm"], [] if quick else ["sweeps/t"])
    failures += model_copy_checks(work)
    before, after = files
    new = {f for f in after - before if not f.startswith(("inspect/", "tmp/", "cache/", ".cache/"))}
    if new:
        failures.append(f"training wrote to the driver's directory: {sorted(new)[:5]}")
    return failures


def compare_with_local(work: Path, driver: Path, checked: str, env: dict) -> list[str]:
    compare = subprocess.run(
        [sys.executable, "-m", "scripts.compare_stores", checked, str(work / "local-store")],
        cwd=driver,
        env=env,
        capture_output=True,
        text=True,
    )
    print(compare.stdout.strip())
    return [] if compare.returncode == 0 else ["the s3 store does not decode identically to the local one"]


def output_checks(s3: str, runs: list[str], sweeps: list[str]) -> list[str]:
    """The runs' and sweeps' outputs, Ray Train's checkpoints included, are on s3."""
    from logitstore.storage import open_storage

    failures = []
    for run_name in runs:
        names = set(open_storage(f"{s3}/{run_name}").list())
        for name in ("metrics.json", "config.json", "student/model.safetensors", "logs/steps.csv", "curves.png"):
            if name not in names:
                failures.append(f"the run's {run_name}/{name} is not on s3")
        if not any(n.startswith("ray/train/checkpoint_") for n in names):
            failures.append(f"Ray Train's checkpoints of {run_name} are not on s3")
        if "metrics.json" in names:
            metrics = json.loads(open_storage(f"{s3}/{run_name}").get("metrics.json"))
            kept = [k for k in ("eval_accuracy", "teacher_agreement") if metrics.get(k) is not None]
            figures = "".join(f", {k} {metrics[k]:.4f}" for k in kept)
            print(f"trained {run_name} on the cluster: train_loss {metrics['train_loss']:.4f}{figures}; "
                  f"{len(names)} objects on s3")  # fmt: skip
    for sweep_name in sweeps:
        swept = set(open_storage(f"{s3}/{sweep_name}").list())
        for name in ("results.csv", "results.md", "best/model.pt", "best/student/model.safetensors", "trials.json"):
            if name not in swept:
                failures.append(f"the sweep's {name} is not on s3")
    return failures


def model_copy_checks(work: Path) -> list[str]:
    """Each hf:s3 model was copied to the cache of the node that runs it, and nowhere else."""
    weights = {name: (work / "upload" / name / "model.safetensors").read_bytes() for name in ("teacher", "student")}
    copied = {node: model_copies(work / node) for node in ("node-teacher", "node-trainer", "node-head", "driver")}
    held = {node: sorted(name for name, w in weights.items() if w in copies) for node, copies in copied.items()}
    print(f"hf:s3 model weights copied to each node's cache: {held}")
    failures = []
    if weights["teacher"] not in copied["node-teacher"] or weights["student"] not in copied["node-trainer"]:
        failures.append("the hf:s3 teacher (student) was not copied to the teacher (trainer) node's cache")
    if copied["driver"] or weights["teacher"] in copied["node-trainer"]:
        failures.append("model weights were copied where no model runs (the driver, or the teacher to the trainer)")
    return failures


if __name__ == "__main__":
    raise SystemExit(main())
