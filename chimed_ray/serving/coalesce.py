"""Merge batches that queue up behind a busy engine into one forward pass.

`@serve.batch` forms the next batch as soon as the previous one has *started* (it then waits on
`max_concurrent_batches`), so under steady load it cuts the queue into many small batches, each
`batch_wait_timeout_s` worth of arrivals, that then run one after another. The coalescer sits
between `@serve.batch` and the engine: whatever batches arrive while a forward pass runs are
merged (up to `max_rows` sequences) into the next one.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

Row = TypeVar("Row")


class BatchCoalescer(Generic[Row]):
    """Runs `run(rows)` one call at a time, merging everything submitted meanwhile.

    All methods run on one event loop, so no lock is needed around the pending list.
    """

    def __init__(self, run: Callable[[list[Row]], Awaitable[None]], max_rows: int):
        self._run = run
        self.max_rows = max_rows
        self._pending: list[tuple[list[Row], asyncio.Future]] = []
        self._draining = False

    async def submit(self, rows: list[Row]) -> None:
        """Return once `rows` have been generated (or raise what the engine raised)."""
        done = asyncio.get_running_loop().create_future()
        self._pending.append((rows, done))
        if not self._draining:
            self._draining = True
            asyncio.ensure_future(self._drain())
        await done

    def _take(self) -> list[tuple[list[Row], asyncio.Future]]:
        """The oldest pending submissions that fit in `max_rows` (always at least one)."""
        taken, size = [], 0
        while self._pending and (not taken or size + len(self._pending[0][0]) <= self.max_rows):
            rows, done = self._pending.pop(0)
            taken.append((rows, done))
            size += len(rows)
        return taken

    async def _drain(self) -> None:
        try:
            while self._pending:
                taken = self._take()
                try:
                    await self._run([row for rows, _ in taken for row in rows])
                except Exception as exc:  # every caller in the failed pass gets the error
                    for _, done in taken:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for _, done in taken:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._draining = False
