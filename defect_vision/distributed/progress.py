"""Progress of a long sharded run as plain lines (they read well in a terminal and in a cluster job's log):
images done, images/s over this run, ETA, shards written; and the run's steady throughput."""
from __future__ import annotations

import sys
import time


def duration(seconds: float) -> str:
    """12 s, 3m05s, 2h07m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ShardProgress:
    """Counts images and shards; prints a line at most every `every` seconds (and always the last one)."""

    def __init__(self, images: int, shards: int, shards_done: int = 0, every: float = 10.0, enabled: bool = True,
                 stream=None):
        self.total, self.done = images, 0
        self.shards, self.shards_done = shards, shards_done
        self.every, self.enabled, self.stream = every, enabled, stream or sys.stderr
        self.start = time.perf_counter()
        self.last = self.start
        self.first_result_s: float | None = None  # seconds to the first result (workers started, models loaded)

    @property
    def rate(self) -> float:
        """Images per second since this run started (model loading included: what the run really gives)."""
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        eta = duration((self.total - self.done) / rate) if rate > 0 else "unknown"
        return (f"predict: {self.done}/{self.total} images, {rate:.2f} img/s, ETA {eta}, "
                f"{self.shards_done}/{self.shards} shards written")

    def update(self, images: int = 0, shards: int = 0) -> None:
        self.done += images
        self.shards_done += shards
        now = time.perf_counter()
        if images and self.first_result_s is None:
            self.first_result_s = now - self.start
        if self.enabled and (now - self.last >= self.every or self.done == self.total and shards):
            self.last = now
            print(self.line(), file=self.stream, flush=True)


def completion_rate(done_at: list[float]) -> float | None:
    """Images per second once the workers run, from the times they finished each image: the least-squares slope
    of image count over time (images finish in batches, so the slope rather than first-to-last); None with fewer
    than 3 images or no time between them."""
    t = sorted(done_at)
    n = len(t)
    if n < 3 or t[-1] <= t[0]:
        return None
    mean_i, mean_t = (n - 1) / 2, sum(t) / n
    cov = sum((i - mean_i) * (x - mean_t) for i, x in enumerate(t))
    var = sum((x - mean_t) ** 2 for x in t)
    return cov / var
