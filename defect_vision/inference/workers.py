"""Model workers: batches through the models on several threads at once (CPU), each call a Future.

Daemon threads, unlike ThreadPoolExecutor's (joined at exit): an interrupted run exits at once instead of waiting
for the batches still in the models (SAM vit_b's encoder: 20-40 s per image on one CPU thread). They only
compute; the files are written by the writer threads, which are joined."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future


class ModelWorkers:
    """`n` daemon threads running submitted calls in submission order; `close` cancels what has not started."""

    def __init__(self, n: int, name: str = "model"):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.submitted: list[Future] = []
        self.threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        self.submitted = [f for f in self.submitted if not f.done()] + [future]
        self.jobs.put((future, fn, args))
        return future

    def close(self) -> None:
        """Cancel the calls not started and let the threads end after their current call (not waited for)."""
        for f in self.submitted:
            f.cancel()
        for _ in self.threads:
            self.jobs.put(None)

    def __enter__(self) -> ModelWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
