"""A bounded pool for the service's model work: requests run on ``workers`` threads, at most
``queue`` more wait, and the rest are refused at once (HTTP 503) instead of piling up. The event
loop never runs a model, so ``/health``, thumbnails and the page answer while the models are busy."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Busy(Exception):
    """Every worker is busy and the queue is full."""


class Admission:
    def __init__(self, workers: int, queue: int):
        if workers < 1 or queue < 0:
            raise ValueError(f"serve.workers must be >= 1 and serve.queue >= 0, got {workers} and {queue}")
        self.workers, self.queue = workers, queue
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self.lock = threading.Lock()
        self.admitted = 0

    def _enter(self) -> None:
        with self.lock:
            if self.admitted >= self.workers + self.queue:
                raise Busy(f"busy: {self.admitted} requests running or waiting (serve.workers={self.workers}, "
                           f"serve.queue={self.queue}); retry shortly")
            self.admitted += 1

    def _leave(self) -> None:
        with self.lock:
            self.admitted -= 1

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a worker thread, or :class:`Busy` when there is no room."""
        self._enter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self._leave()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
