"""Model workers: batches through the models on several threads at once (CPU), each call a Future."""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future


class ModelWorkers:
    """`n` threads running submitted calls in submission order. Leaving the `with` block (normally, on an error or
    on Ctrl-C) cancels the calls not started and waits for the ones running, at most one per worker: a thread
    left inside torch while the interpreter exits aborts the process, and a left-over call would still count on
    the predictor's counters in the next run."""

    def __init__(self, n: int, name: str = "model"):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.submitted: list[Future] = []
        self.threads = [threading.Thread(target=self._work, name=f"{name}-{i}") for i in range(n)]
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
        """Cancel the calls not started, let each thread finish its current call, and wait for them."""
        for f in self.submitted:
            f.cancel()
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()

    def __enter__(self) -> ModelWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
