"""Dynamic batching: an asyncio queue feeding one generation worker thread.

Inputs arriving within `max_wait_ms` of the oldest waiting one decode together, up to `max_batch_size`, grouped by
equal settings (inputs with other settings wait for a later batch, in arrival order). The queue is bounded: `submit`
raises [`QueueFull`] instead of queueing past `max_queue`. A batch that fails is retried one input at a time, so a
failing input fails alone. The worker is one thread, so the model is only ever called from it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

Run = Callable[[list[Any], Any], list[Any]]


class QueueFull(RuntimeError):
    """The queue holds `max_queue` inputs already; `retry_after` is a suggested wait in seconds."""

    def __init__(self, depth: int, retry_after: int = 1):
        super().__init__(f"the generation queue is full ({depth} inputs waiting); retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Job:
    input: Any
    key: Hashable
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    r"""
    Runs `run(inputs, key)` on batches of inputs that share a `key` (e.g. generation settings), in one worker thread.

    Args:
        run: generates for a list of inputs with one key; returns one result per input, in order.
        max_batch_size: the most inputs in one call of `run`.
        max_wait_ms: how long the oldest waiting input waits for others to join its batch.
        max_queue: the most inputs waiting at once.
        on_batch (*optional*): called with each batch's size (metrics).
    """

    def __init__(
        self,
        run: Run,
        max_batch_size: int = 16,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._pending: collections.deque[_Job] = collections.deque()
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._running = 0  # inputs in the batch being generated

    def depth(self) -> int:
        """Inputs waiting or being generated."""
        return (self._queue.qsize() if self._queue is not None else 0) + len(self._pending) + self._running

    async def start(self) -> None:
        """Start the worker (from the event loop that will submit)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splice-generate")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, timeout: float = 60.0) -> None:
        """Finish what is queued (up to `timeout` seconds), then stop the worker."""
        deadline = time.monotonic() + timeout
        while self.depth() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def submit(self, inputs: Sequence[Any], key: Hashable) -> list[asyncio.Future]:
        """Queue `inputs` (all or none); one future per input. Raises `QueueFull` past `max_queue`."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() has not run")
        depth = self.depth()
        if depth + len(inputs) > self.max_queue:
            raise QueueFull(depth)
        loop = asyncio.get_running_loop()
        futures = []
        for item in inputs:
            job = _Job(item, key, loop.create_future())
            self._queue.put_nowait(job)
            futures.append(job.future)
        return futures

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._pending.append(await self._queue.get())
            key = self._pending[0].key
            deadline = self._pending[0].enqueued + self.max_wait
            while sum(job.key == key for job in self._pending) < self.max_batch_size:
                try:
                    self._pending.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    self._pending.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [job for job in self._pending if job.key == key][: self.max_batch_size]
            taken = set(map(id, batch))
            self._pending = collections.deque(job for job in self._pending if id(job) not in taken)
            batch = [job for job in batch if not job.future.done()]  # a cancelled request's inputs are dropped
            if not batch:
                continue
            self._running = len(batch)
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, batch, key)
            finally:
                self._running = 0
            for job, result in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _run_batch(self, batch: list[_Job], key: Hashable) -> list[Any]:
        """In the worker thread: the batch's results, or, if it fails, each input's own result or exception."""
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            results = self.run([job.input for job in batch], key)
            if len(results) != len(batch):
                raise RuntimeError(f"the backend returned {len(results)} outputs for {len(batch)} inputs")
            return results
        except Exception as error:  # noqa: BLE001 - retried one by one below
            if len(batch) == 1:
                return [error]
        out: list[Any] = []
        for job in batch:
            try:
                out.extend(self.run([job.input], key))
            except Exception as error:  # noqa: BLE001 - this input fails alone
                out.append(error)
        return out
