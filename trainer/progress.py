"""Progress of a long pass on the driver as plain lines (a terminal and a CI log alike; the
training run draws a bar in a terminal, trainer/student/progress_bar.py, the dump not yet): at
most ~20 of them, each with the count done, the rate and the ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, unit: str, what: str, rate_unit: str = "") -> None:
        self.total, self.unit, self.what, self.rate_unit = total, unit, what, rate_unit
        self.done, self.amount, self.start = 0, 0.0, time.perf_counter()
        self.every = max(1, total // 20)

    def update(self, amount: float = 0.0) -> None:
        """One more unit done, carrying `amount` of rate_unit (e.g. the positions of a shard)."""
        self.done += 1
        self.amount += amount
        if self.done % self.every and self.done != self.total:
            return
        seconds = max(time.perf_counter() - self.start, 1e-9)
        rate = f", {self.amount / seconds:,.0f} {self.rate_unit}/s" if self.rate_unit else ""
        eta = seconds / self.done * (self.total - self.done)
        print(f"{self.what}: {self.done}/{self.total} {self.unit}s{rate}, ETA {eta:.0f} s", file=sys.stderr, flush=True)
