"""Where a training run's wall time goes: the driver's phases (its own clock) and the epochs'
starts and lengths (rank 0's history), on one wall-clock axis (time.time(); one machine's clock,
or clocks kept in sync across a cluster's nodes)."""

from __future__ import annotations

import time


class RunClock:
    """Marks of the driver's phases, in the order they happen."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {"start": time.time()}

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()


def run_timing(marks: dict[str, float], history: list[dict], end: float) -> dict:
    """wall_seconds, startup_seconds (the run's start to its first epoch's), epochs_seconds and an
    `overhead` breakdown that adds up to the wall time with the epochs:

      ray_init, check_inputs, prepare (driver) | workers_start (fit called -> the loop runs on rank
      0) | before_first_epoch (build, restore) | between_epochs (eval, reports, checkpoints) |
      after_last_epoch (the last eval, report and checkpoint, Ray Train's teardown) | outputs (copy,
      export, metrics). A restart's lost time lands where the crash happened (workers_start or
      between_epochs).

    Only the epochs this driver ran count (a resumed run's history begins with earlier ones)."""
    start = marks["start"]
    mine = [e for e in history if "started_at" in e and e["started_at"] >= start]
    timing = {"wall_seconds": end - start}
    if not mine:
        return timing
    ends = [e["started_at"] + e["epoch_seconds"] for e in mine]
    loop_start = mine[0].get("loop_started_at", mine[0]["started_at"])
    timing.update(
        startup_seconds=mine[0]["started_at"] - start,
        epochs_seconds=sum(e["epoch_seconds"] for e in mine),
        # The part of the epochs spent waiting for each epoch's data to start (not overhead: inside them).
        first_batch_seconds=sum(e.get("first_batch_seconds", 0.0) for e in mine),
        overhead={
            "ray_init": marks["ray_ready"] - start,
            "check_inputs": marks["inputs_checked"] - marks["ray_ready"],
            "prepare": marks["fit_called"] - marks["inputs_checked"],
            "workers_start": loop_start - marks["fit_called"],
            "before_first_epoch": mine[0]["started_at"] - loop_start,
            "between_epochs": sum(b["started_at"] - a for a, b in zip(ends, mine[1:])),
            "after_last_epoch": marks["fit_returned"] - ends[-1],
            "outputs": end - marks["fit_returned"],
        },
    )
    return timing
