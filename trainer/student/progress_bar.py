"""A training progress bar in the driver's terminal (tqdm). Rank 0 posts its latest step to a
ProgressBoard actor (at most a few times a second); a thread of the driver reads it and redraws
one bar: step / total, epoch, loss, positions/s and the ETA. A bar drawn inside a Ray Train
worker does not render (Ray forwards worker output line by line), so the bar lives where the
terminal is. When the driver's stderr is not a terminal (CI logs, files), there is no bar and
rank 0 prints plain lines instead (trainer/student/logs.py) with --verbose, and without it the
driver prints one line at each quarter of the run from the same board (DriverLines)."""

from __future__ import annotations

import sys
import threading
import time

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


class DriverLines(DriverBar):
    """`with DriverLines(board, total):` prints one plain line when the run passes each quarter of its
    steps (25, 50 and 75 %; the job's own summary follows the end): where there is no terminal for a
    bar and Ray's output is not forwarded (no --verbose)."""

    QUARTERS = (0.25, 0.5, 0.75)

    def _draw(self) -> None:
        marks = [max(1, int(self.total * q)) for q in self.QUARTERS]
        started: tuple[float, int] | None = None  # (time, step) of the first step posted
        while marks and not self.stop.wait(self.interval):
            try:
                state = ray.get(self.board.read.remote(), timeout=self.interval * 4)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                continue
            if not state:
                continue
            now, step = time.perf_counter(), state["step"]
            if started is None:
                started = (now, step)
            if step < marks[0]:
                continue
            while marks and step >= marks[0]:
                marks.pop(0)
            print(self.line(state, now - started[0], step - started[1]), file=self.stream, flush=True)

    def line(self, state: dict, seconds: float, steps: int) -> str:
        step, total = state["step"], max(state["total"], 1)
        eta = f", ETA {seconds / steps * (total - step):.0f} s" if steps > 0 else ""
        return (
            f"training: step {step}/{total} ({100 * step / total:.0f}%), epoch {state['epoch']}, "
            f"loss {state['loss']:.4f}, {state['positions_per_s']:,.0f} positions/s{eta}"
        )
