import asyncio
import time

import pytest

from pneumocam.deploy import DynamicBatcher


def _run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_items_share_batches_and_keep_their_order():
    seen = []

    def double(items):
        seen.append(list(items))
        time.sleep(0.02)  # a forward pass: the next batch fills meanwhile
        return [2 * item for item in items]

    batcher = DynamicBatcher(double, max_batch=4, max_wait_ms=50)

    async def main():
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert _run(main()) == [2 * i for i in range(10)]
    assert max(batcher.batch_sizes) == 4 and sum(batcher.batch_sizes) == 10
    assert sorted(item for batch in seen for item in batch) == list(range(10))


def test_a_lone_item_waits_at_most_max_wait():
    batcher = DynamicBatcher(lambda items: list(items), max_batch=16, max_wait_ms=30)  # others always incoming

    async def main():
        start = time.perf_counter()
        result = await batcher.submit("x")
        return result, time.perf_counter() - start

    result, waited = _run(main())
    assert result == "x" and batcher.batch_sizes == [1] and waited < 1.0


def test_a_lone_item_does_not_wait_when_nothing_else_is_on_its_way():
    batcher = DynamicBatcher(lambda items: list(items), max_batch=16, max_wait_ms=5000, incoming=lambda: 0)

    async def main():
        start = time.perf_counter()
        await batcher.submit("x")
        return time.perf_counter() - start

    assert _run(main()) < 1.0


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_runs():
    calls = {"n": 0}

    def flaky(items):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory")
        return list(items)

    batcher = DynamicBatcher(flaky, max_batch=8, max_wait_ms=20)

    async def main():
        first = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        second = await batcher.submit(3)
        return first, second

    first, second = _run(main())
    assert all(isinstance(r, RuntimeError) for r in first) and second == 3


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        DynamicBatcher(list, max_batch=0)
