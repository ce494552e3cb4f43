"""Progress of a long pass on the driver as plain lines (a terminal and a CI log alike; the
training run draws a bar in a terminal, trainer/student/progress_bar.py, the dump not yet): at
most ~20 of them, each with the count done, the rate and the ETA."""

from __future__ import annotations

import sys
import time


class Progress:
    """`total` units (shards, ...), each carrying amounts of `rate_units` (tokens read, positions
    stored): a line per ~5% with the count, each amount's rate and the ETA."""

    def __init__(self, total: int, unit: str, what: str, rate_units: tuple[str, ...] = ()) -> None:
        self.total, self.unit, self.what, self.rate_units = total, unit, what, rate_units
        self.done, self.amounts, self.start = 0, [0.0] * len(rate_units), time.perf_counter()
        self.every = max(1, total // 20)

    def update(self, *amounts: float) -> None:
        """One more unit done, carrying `amounts` (one per rate unit, e.g. a shard's tokens and positions)."""
        self.done += 1
        self.amounts = [total + amount for total, amount in zip(self.amounts, amounts)]
        if self.done % self.every and self.done != self.total:
            return
        seconds = max(time.perf_counter() - self.start, 1e-9)
        rates = "".join(f", {a / seconds:,.0f} {unit}/s" for a, unit in zip(self.amounts, self.rate_units))
        eta = seconds / self.done * (self.total - self.done)
        print(
            f"{self.what}: {self.done}/{self.total} {self.unit}s{rates}, ETA {eta:.0f} s", file=sys.stderr, flush=True
        )
