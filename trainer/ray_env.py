"""Starting (or joining) Ray the same way in every job."""

from __future__ import annotations

import os

import ray
import ray.data

from trainer.inputs.specs import worker_runtime_env


def configure_data_context() -> None:
    ctx = ray.data.DataContext.get_current()
    # Task-based sort shuffle: the hash shuffle starts aggregator actors on every execution,
    # seconds of overhead per epoch on small machines.
    ctx.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    # Our own errors (bad teacher output, ids missing from a store) reach the driver as themselves,
    # so the jobs can print their one-line message.
    ctx.raise_original_map_exception = True


def ensure_ray() -> None:
    """Join the cluster at RAY_ADDRESS, else start a local embedded one; reuse a running session."""
    if not ray.is_initialized():
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or None,
            runtime_env=worker_runtime_env(),
            include_dashboard=False,
            logging_level="WARNING",
        )
    configure_data_context()


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def node_cpus(resources: dict[str, float]) -> list[float]:
    """The CPUs of each alive node that offers these custom resources (every node when none)."""
    return [
        float(n["Resources"].get("CPU", 0.0))
        for n in ray.nodes()
        if n.get("Alive") and all(n["Resources"].get(name, 0.0) >= amount for name, amount in resources.items())
    ]


def placement_problem(resources: dict[str, float], cpus: float, flag: str, what: str) -> str | None:
    """Why no node can host one `what` needing `cpus` CPUs and these custom resources (Ray would
    wait for such a node forever), or None."""
    offering = node_cpus(resources)
    if resources and not offering:
        return (
            f"{flag} {resources}: no node of the cluster offers these resources; start the nodes meant "
            f"for {what}s with them (ray start --resources '...'), or drop the flag"
        )
    if offering and max(offering) < cpus:
        return (
            f"each {what} needs {cpus:g} CPUs but the largest node that may host it has {max(offering):g}: "
            "lower --cpus-per-worker (or add larger nodes)"
        )
    return None
