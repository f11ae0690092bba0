"""The event loop's turns while the code under test runs, for the tests that
check a long piece of work lets the loop run (input batches, HTTP pulls)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
def loop_turns() -> AbstractAsyncContextManager[list[None]]: ...


@overload
def loop_turns(observe: Callable[[], T]) -> AbstractAsyncContextManager[list[T]]: ...


def loop_turns(observe: Callable[[], Any] | None = None
               ) -> AbstractAsyncContextManager[list[Any]]:
    """A list that grows by ``observe()`` (``None`` without it: ``len`` counts
    the turns) each time another task gets a turn of the loop in the ``async
    with`` block; none is recorded before the block starts or after it ends.

    >>> async def work() -> list[int]:
    ...     done = 0
    ...     async with loop_turns(lambda: done) as turns:
    ...         for _ in range(3):
    ...             done += 1
    ...             await asyncio.sleep(0)
    ...     return turns
    >>> asyncio.run(work())
    [1, 2, 3]
    """
    return _recording(observe or (lambda: None))


@asynccontextmanager
async def _recording(observe: Callable[[], object]) -> AsyncIterator[list[object]]:
    turns: list[object] = []

    async def other_task() -> None:
        while True:
            await asyncio.sleep(0)
            turns.append(observe())

    task = asyncio.create_task(other_task())
    await asyncio.sleep(0)  # it starts (and waits for its first turn) before the block
    try:
        yield turns
    finally:
        task.cancel()
        # An exception from ``observe`` is the test's.
        with suppress(asyncio.CancelledError):
            await task
