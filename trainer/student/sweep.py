"""Sweeps: many students from one store, as Ray Tune trials over Ray Train runs. The teacher never runs.

The search space covers what each student may set for itself (VARIANT_FIELDS). Tune's variant
generator resolves it (grid values crossed, random ones drawn `num_samples` times); the students
are then packed `students_per_run` to a Ray Train run, which reads the store once for all of
them, and Tune runs those runs `max_concurrent` at a time, retrying failed ones (a retry resumes
from the run's latest checkpoint).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from logitstore.atomic import atomic_write_text
from logitstore.errors import StoreError
from trainer.errors import ConfigError, ModelError, RemoteError, TrainerError, find_cause, is_process_death
from trainer.options import SectionedConfig, choice_problems, option, section
from trainer.student.config import VARIANT_FIELDS, TrainConfig
from trainer.student.outputs import RunOutput, copy_out, join_output

# Space entries: {"grid": [..]} | {"choice": [..]} | {"uniform": [lo, hi]} | {"loguniform": [lo, hi]} | a constant.
DOMAINS = ("grid", "choice", "uniform", "loguniform")
RESULT_KEYS = ("eval_accuracy", "teacher_agreement", "eval_kl_to_teacher", "eval_perplexity", "train_loss")
FAILED_KEY = "raised"  # a trial's result: the exception its run raised (a RemoteError, pickled, base64)


@dataclass
class Search:
    """What a sweep tries (the space and its draws), how it picks the best, and how it packs the
    trials into Ray Train runs."""

    space: str = option(
        "the search space, a JSON/YAML mapping of "
        + ", ".join(VARIANT_FIELDS)
        + " to {grid: [..]}, {choice: [..]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]} or a constant; the "
        "other flags are every trial's defaults",
        "",
        required=True,
    )
    num_samples: int = option(
        "draws of the random parameters; each is crossed with every grid value (trials = grid size * num_samples)", 1
    )
    metric: str = option("what picks the best student", "eval_accuracy", choices=RESULT_KEYS)
    mode: str = option(
        "whether a larger --metric is better (max) or a smaller one (min)", "max", choices=("max", "min")
    )
    max_concurrent: int = option("Ray Train runs at once (each leaves the data pipeline its share of CPUs)", 1)
    students_per_run: int = option(
        "students trained together in one Ray Train run from one read of the store (1 = one run per trial)", 1
    )
    max_retries: int = option(
        "times a run whose process or node died is retried (from its latest checkpoint; a run that raised is not)", 1
    )
    search_seed: int = option("seed of the random draws of the search space", 0)

    def problems(self) -> list[str]:
        """The checks of these flags but --space's (trials() reports those)."""
        problems = choice_problems(self)
        for flag, value in (
            ("--num-samples", self.num_samples),
            ("--max-concurrent", self.max_concurrent),
            ("--students-per-run", self.students_per_run),
        ):
            if value < 1:
                problems.append(f"{flag} must be >= 1, got {value}")
        if self.max_retries < 0:
            problems.append(f"--max-retries must be >= 0, got {self.max_retries}")
        return problems

    def trials(self) -> tuple[list[dict], list[str]]:
        """Every trial's student settings (the swept ones only), in Tune's order; or the problems of --space."""
        if not self.space:
            return [], [
                '--space is required: a mapping such as {"temperature": {"grid": [1, 2, 4]}, "lr": '
                '{"loguniform": [0.001, 0.03]}}'
            ]
        try:
            import yaml

            space = yaml.safe_load(self.space)  # JSON is YAML too
        except yaml.YAMLError as exc:
            return [], [f"--space is not valid JSON/YAML: {str(exc).splitlines()[0]}"]
        if not isinstance(space, dict) or not space:
            return [], ["--space must be a non-empty mapping of parameters to domains"]
        problems, spec = [], {}
        for key, domain in space.items():
            name = str(key).replace("-", "_")
            if name not in VARIANT_FIELDS:
                problems.append(
                    f"--space: {key!r} cannot be swept: sweep one of {', '.join(VARIANT_FIELDS)} (set the "
                    "others as flags)"
                )
                continue
            spec[name], problem = _tune_domain(name, domain)
            if problem:
                problems.append(problem)
        if problems or self.num_samples < 1:
            return [], problems
        from ray.tune.search.variant_generator import generate_variants

        rng = np.random.RandomState(self.search_seed)
        trials = [
            resolved for _ in range(self.num_samples) for _, resolved in generate_variants(spec, random_state=rng)
        ]
        return [{k: _plain(v) for k, v in t.items()} for t in trials], []


@dataclass
class SweepConfig(SectionedConfig):
    """Sweep student hyper-parameters over one logit store with Ray Tune (a Ray Train run per trial; no teacher)."""

    # Every trial's defaults; each run's output is runs/<run> of the sweep's.
    train: TrainConfig = section(TrainConfig, omit=("output", "overwrite"))
    output: str = option(
        "directory (or s3://, gs://, az:// prefix) of the sweep: results.csv/.md/.json, plot.png, best/ (model.pt "
        "and the exported student/), "
        "config.json, trials.json and runs/<run>/ (each run's metrics.json, config.json, checkpoint, student)",
        "",
        required=True,
    )
    overwrite: bool = option("replace a finished sweep already in --output", False)
    search: Search = section(Search)

    def validate(self) -> list[str]:
        trials, problems = self.search.trials()
        if self.train.distill.variants:
            problems.append(
                "--variants does not apply to a sweep: put the settings in --space, and --students-per-run "
                "packs them into runs"
            )
        # The train flags, checked as one run with every trial as a student.
        problems += self.train.run_problems(students=trials, each="trial ")
        if not self.output:
            problems.append("--output is required")
        elif _finished(self.output) and not self.overwrite:
            problems.append(
                f"{self.output} already holds a finished sweep (results.csv): pass --overwrite to replace it, "
                "or choose another --output"
            )
        problems += self.search.problems()
        return list(dict.fromkeys(problems))  # a flag the sweep and its runs share is reported once


def _tune_domain(name: str, domain: Any) -> tuple[Any, str | None]:
    from ray import tune

    if not isinstance(domain, dict):
        return domain, None  # a constant
    if len(domain) != 1 or next(iter(domain)) not in DOMAINS:
        return (
            None,
            f"--space: {name} must be a constant or one of {{grid: [..]}}, {{choice: [..]}}, {{uniform: [lo, "
            f"hi]}}, {{loguniform: [lo, hi]}}, got {domain!r}",
        )
    kind, values = next(iter(domain.items()))
    if not isinstance(values, list) or not values:
        return None, f"--space: {name}: {kind} needs a non-empty list, got {values!r}"
    if kind == "grid":
        return tune.grid_search(values), None
    if kind == "choice":
        return tune.choice(values), None
    numbers = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numbers or not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
        return (
            None,
            f"--space: {name}: {kind} needs [lo, hi] with lo < "
            f"hi{' and lo > 0' if kind == 'loguniform' else ''}, got {values!r}",
        )
    return (tune.uniform if kind == "uniform" else tune.loguniform)(*values), None


def _plain(value: Any) -> Any:
    """numpy scalars from Tune's draws as JSON-able Python values."""
    return value.item() if hasattr(value, "item") else value


def _cpus_per_worker(cfg: SweepConfig) -> float:
    from trainer.student.run import cpus_per_worker

    # The concurrent runs' workers share the CPUs.
    scale = cfg.train.scale
    return cpus_per_worker(scale.cpus_per_worker, scale.worker_resources, scale.workers * cfg.search.max_concurrent)


def _run_group(tune_config: dict) -> None:
    """One Tune trial: one Ray Train run of a group of students, reporting the group's best; or the
    exception it raised (Tune would retry a trial that raises: only a process or node that died
    is worth it)."""
    from ray import cloudpickle, tune

    from trainer.student.run import run_training

    run = tune_config["run"]
    # Tune starts a trial in a directory of its own: paths and user modules are the user's, as in
    # their shell (and Ray Train's workers get the same import path from worker_runtime_env).
    os.chdir(run["cwd"])
    os.environ["PYTHONPATH"] = run["pythonpath"]
    sys.path[:0] = [p for p in run["pythonpath"].split(os.pathsep) if p not in sys.path]
    try:
        metrics = run_training(TrainConfig.from_flags(**run["train"]), inputs_checked=True)
    except Exception as exc:
        if is_process_death(exc):
            raise  # Tune retries the run (--max-retries), from its latest checkpoint
        # Raised again by a retry: the trial ends with it as its result, and the sweep reports it.
        known = (StoreError, TrainerError)
        error = exc if isinstance(exc, RemoteError) else RemoteError.wrap(exc, f"run {run['index']}", known)
        tune.report({FAILED_KEY: base64.b64encode(cloudpickle.dumps(error)).decode()})
        return
    results = metrics.get("students", [metrics])
    values = [r[run["metric"]] for r in results if r.get(run["metric"]) is not None]
    best = (max if run["mode"] == "max" else min)(values) if values else float("nan")
    tune.report({run["metric"]: best, "wall_seconds": metrics["wall_seconds"]})


def _trial_dirname(trial) -> str:
    """Tune's directory of a trial, named after its run (Tune's default spells out the whole config)."""
    return f"run-{trial.config['run']['index']:03d}"


def run_sweep(cfg: SweepConfig, draw: Callable[[dict, Path], None] | None = None) -> dict:
    """Every trial's student trained, the results written; `draw(summary, path)` (the job's plot)
    makes plot.png before results.csv, which marks a finished sweep, is written last."""
    from trainer.student.stores import RunStores, check_inputs

    start = time.perf_counter()
    trials, _ = cfg.search.trials()
    out, cpus = _start(cfg, trials)
    # Every run trains on the same data and stores: check them once here, not once per run.
    as_run = cfg.train.with_flags(variants=json.dumps(trials))
    stores = RunStores.open(as_run.data)
    as_run = as_run.with_store_temperature(stores.manifest)
    check_inputs(as_run, stores.with_student_tokenizer(as_run))
    n = cfg.search.students_per_run
    groups = [trials[i : i + n] for i in range(0, len(trials), n)]
    runs = [_run(cfg, r, group, cpus) for r, group in enumerate(groups)]
    rows = _results(cfg, _tune(cfg, runs), trials, groups, runs)
    summary = _write_results(cfg, out.local, rows, start, draw)
    out.publish("results.md", "best", "results.json", *(["plot.png"] if (out.local / "plot.png").exists() else []))
    out.publish("results.csv")  # last: it marks a finished sweep
    return summary


def _start(cfg: SweepConfig, trials: list[dict]) -> tuple[RunOutput, float]:
    """The sweep's output made ready (a local directory, or a prefix on object storage: files staged
    locally, then uploaded) with its config.json and trials.json, and Ray started; and each training
    worker's CPUs."""
    import ray

    from trainer.ray_env import ensure_ray

    out = RunOutput(cfg.output)
    if cfg.overwrite:
        out.remove(["results.csv", "results.md", "results.json", "plot.png", "best", "runs", "tune", "config.json"])
        out.remove(["trials.json"])
    out.local.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    cpus = _cpus_per_worker(cfg)
    # The resolved configuration (loadable again with --config), and the trials it resolves to.
    resolved = cfg.with_flags(cpus_per_worker=cpus).to_dict()
    atomic_write_text(out.local / "config.json", json.dumps(resolved, indent=2) + "\n")
    atomic_write_text(out.local / "trials.json", json.dumps(trials, indent=2) + "\n")
    out.publish("config.json", "trials.json")
    return out, cpus


def _run(cfg: SweepConfig, index: int, group: list[dict], cpus: float) -> dict:
    """A Tune trial's config: one Ray Train run of a group of students (its flags, flat)."""
    from trainer.inputs.specs import worker_runtime_env

    students = group[0] if len(group) == 1 else {"variants": json.dumps(group)}
    train = cfg.train.with_flags(
        output=join_output(cfg.output, f"runs/run-{index:03d}"),
        cpus_per_worker=cpus,
        overwrite=False,
        max_failures=0,  # Tune retries the run (--max-retries)
        **students,
    )
    return {
        "index": index,
        "train": train.to_dict(),
        "metric": cfg.search.metric,
        "mode": cfg.search.mode,
        "cwd": os.getcwd(),
        "pythonpath": worker_runtime_env()["env_vars"]["PYTHONPATH"],
    }


def _tune(cfg: SweepConfig, runs: list[dict]):
    """The runs as Tune trials, `--max-concurrent` at a time: Tune's ResultGrid."""
    from ray import tune

    tuner = tune.Tuner(
        # The trial itself only waits on its Ray Train run, which holds the CPUs (Tune needs some
        # resource in a trial's bundle: one byte of memory).
        tune.with_resources(_run_group, {"cpu": 0, "memory": 1}),
        param_space={"run": tune.grid_search(runs)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=cfg.search.max_concurrent, trial_dirname_creator=_trial_dirname
        ),
        run_config=tune.RunConfig(
            name="sweep",
            storage_path=join_output(cfg.output, "tune"),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_retries),
        ),
    )
    return tuner.fit()


def _results(cfg: SweepConfig, grid, trials: list[dict], groups: list[list[dict]], runs: list[dict]) -> list[dict]:
    """One row per trial, from its run's metrics.json; or what ended the sweep, raised: a run's own
    exception, a user error's one line, or the runs that failed after their retries."""
    from ray import cloudpickle

    raised = [r.metrics[FAILED_KEY] for r in grid if r.metrics and r.metrics.get(FAILED_KEY)]
    if raised:
        raise cloudpickle.loads(base64.b64decode(raised[0]))  # the job prints it (jobs/cli.py:run_job)
    failed = [r for r in grid if r.error is not None]
    rows = _collect_rows(trials, groups, runs)
    known = next((e for e in (find_cause(r.error, (StoreError, TrainerError)) for r in failed) if e is not None), None)
    if known is not None:
        raise known  # a user error (bad data, a student that does not fit): its own one-line message
    if failed or len(rows) != len(trials):
        raise ModelError(
            f"{len(failed)} of {len(runs)} runs failed after {cfg.search.max_retries} retries "
            f"({str(failed[0].error).splitlines()[0] if failed else 'missing results'}); see their logs under "
            f"{join_output(cfg.output, 'runs')}"
        )
    return rows


def _finished(output: str) -> bool:
    """A finished sweep (results.csv) at `output`, a local directory or a URI."""
    try:
        return RunOutput(output).exists("results.csv")
    except StoreError:
        return False  # unreachable: the run reports it when it starts


def _collect_rows(trials: list[dict], groups: list[list[dict]], runs: list[dict]) -> list[dict]:
    """One row per trial (student): its swept settings and its results, from its run's metrics.json."""
    rows = []
    for r, (group, run) in enumerate(zip(groups, runs)):
        where = RunOutput(run["train"]["output"])
        if not where.exists("metrics.json"):
            continue
        metrics = json.loads(where.read_text("metrics.json"))
        for settings, result in zip(group, metrics.get("students", [metrics])):
            rows.append(
                {
                    "trial": len(rows),
                    "run": r,
                    **settings,
                    **{k: result.get(k) for k in RESULT_KEYS},
                    "run_seconds": metrics["wall_seconds"],
                    "checkpoint": result["checkpoint"],
                    "exported": result.get("exported"),
                }
            )
    return rows


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _write_results(cfg: SweepConfig, output: Path, rows: list[dict], start: float, draw) -> dict:
    swept = [k for k in VARIANT_FIELDS if k in rows[0]]  # the --space parameters
    scored = [row for row in rows if row[cfg.search.metric] is not None and math.isfinite(row[cfg.search.metric])]
    if not scored:
        needs_store = ", and --eval-store" if cfg.search.metric in ("teacher_agreement", "eval_kl_to_teacher") else ""
        raise ConfigError(
            [
                f"no trial reported --metric {cfg.search.metric} (it needs --eval-dataset{needs_store}): "
                "pass them, or choose another --metric"
            ]
        )
    best = (max if cfg.search.mode == "max" else min)(scored, key=lambda row: row[cfg.search.metric])
    columns = [
        "trial",
        "run",
        *swept,
        *[k for k in RESULT_KEYS if any(row[k] is not None for row in rows)],
        "run_seconds",
    ]

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*columns, "checkpoint"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(output / "results.md", _markdown(rows, columns))
    best_dir = output / "best"
    shutil.rmtree(best_dir, ignore_errors=True)
    best_dir.mkdir()
    copy_out(best["checkpoint"], best_dir / "model.pt")
    if best.get("exported"):  # the exported student (save_pretrained, or model.safetensors)
        copy_out(best["exported"], best_dir / "student")
    atomic_write_text(best_dir / "trial.json", json.dumps(best, indent=2) + "\n")
    summary = {
        "trials": len(rows),
        "runs": len({row["run"] for row in rows}),
        "best": best,
        "metric": cfg.search.metric,
        "mode": cfg.search.mode,
        "swept": swept,
        "wall_seconds": time.perf_counter() - start,
    }
    atomic_write_text(output / "results.json", json.dumps({**summary, "rows": rows}, indent=2) + "\n")
    if draw is not None:
        draw({**summary, "rows": rows}, output / "plot.png")
    # Written last: a results.csv marks a finished sweep.
    atomic_write_text(output / "results.csv", buffer.getvalue())
    return {**summary, "rows": rows}
