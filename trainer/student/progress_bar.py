"""A training progress bar in the driver's terminal (tqdm). Rank 0 posts its latest step to a
ProgressBoard actor (at most a few times a second); a thread of the driver reads it and redraws
one bar: step / total, epoch, loss, positions/s and the ETA. A bar drawn inside a Ray Train
worker does not render (Ray forwards worker output line by line), so the bar lives where the
terminal is. When the driver's stderr is not a terminal (CI logs, files), there is no bar and
rank 0 prints plain lines instead (trainer/student/logs.py)."""

from __future__ import annotations

import sys
import threading

import ray


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest step rank 0 posted: {"step", "total", "epoch", "loss", "positions_per_s"}."""

    def __init__(self) -> None:
        self.latest: dict | None = None

    def post(self, state: dict) -> None:
        self.latest = state

    def read(self) -> dict | None:
        return self.latest


def wants_bar(stream=None) -> bool:
    """A bar only where someone watches: the driver's stderr is a terminal."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class DriverBar:
    """`with DriverBar(board, total):` redraws a tqdm bar from the board every `interval` seconds."""

    def __init__(self, board, total: int, interval: float = 0.5, stream=None) -> None:
        self.board, self.total, self.interval = board, max(total, 1), interval
        self.stream = stream or sys.stderr
        self.stop = threading.Event()
        self.first: int | None = None
        self.thread = threading.Thread(target=self._draw, name="progress-bar", daemon=True)

    def __enter__(self) -> DriverBar:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _draw(self) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.total, unit="step", file=self.stream, dynamic_ncols=True, desc="training")
        try:
            while not self.stop.wait(self.interval):
                try:
                    state = ray.get(self.board.read.remote(), timeout=self.interval * 4)
                except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                    continue
                if state:
                    self._show(bar, state)
        finally:
            bar.close()

    def _show(self, bar, state: dict) -> None:
        if self.first is None:  # rate and ETA from the first step posted, not from Ray's start-up
            self.first = state["step"]
            bar.reset(total=max(self.total, state["step"]))
        bar.total = max(bar.total, state["step"])
        bar.update(state["step"] - bar.n)
        bar.set_description(f"epoch {state['epoch']}", refresh=False)
        bar.set_postfix_str(f"loss {state['loss']:.4f}, {state['positions_per_s']:,.0f} positions/s", refresh=False)
        bar.refresh()
