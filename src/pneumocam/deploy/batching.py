"""Dynamic batching: single requests from concurrent callers become one batched call.

A batch closes when it holds `max_batch` items, `max_wait_ms` after its first item arrived, or as soon as
no other item is on its way (`incoming`, e.g. uploads still being decoded), whichever comes first: a lone
request never waits, and under load a batch waits for the requests already being prepared. While one
batch runs (in a worker thread), the next one fills up. On a CPU, one forward pass over 16 images costs
far less than 16 passes over one, so this is what lets a server under load approach offline throughput.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any


class DynamicBatcher:
    """`await batcher.submit(item)` -> run_batch([..., item, ...])[its index]. One batch runs at a time."""

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 16,
                 max_wait_ms: float = 50.0, incoming: Callable[[], int] = lambda: 1):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.incoming = incoming  # how many items are on their way (default: always some, so wait the full time)
        self.batch_sizes: list[int] = []  # of every batch run, for tests and the load benchmark
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None  # held here: the event loop keeps only a weak reference to tasks

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (a restarted server): a new queue and worker for it
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._work(self._queue))
        future = loop.create_future()
        await self._queue.put((item, future))
        return await future

    async def _collect(self, queue: asyncio.Queue) -> list[tuple[Any, asyncio.Future]]:
        batch = [await queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            if self.incoming() <= 0:
                break
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:  # what asyncio.wait_for raises from Python 3.11 on (pyproject requires it)
                break
        return [(item, future) for item, future in batch if not future.done()]  # callers gone: skip

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            batch = await self._collect(queue)
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
            except Exception as exc:  # the batch failed: every caller in it gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
