"""Group commit: one thread writes small jobs in shared transactions.

Under load, many requests each committing their own few rows spend most of their time on
transaction overhead and, on SQLite, on the single write lock. `BatchWriter` runs every
submitted item on one thread: it takes whatever items are waiting (up to `max_batch`),
writes them in one transaction and commits once. An item refused by validation gets its
exception; the others still commit.
A future is resolved only after the commit, so an answer always means "stored".

Work is given as a batch function and one payload per item; the function handles all the
waiting items of its kind with set-based SQL (a few statements per batch, not per item).
When idle the thread waits, so a lone request is written at once with no batching delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from rag_loop.db.engine import write_connection

log = logging.getLogger(__name__)

T = TypeVar("T")
# A batch function writes many pending items with set-based SQL and returns, in order, each
# item's result or the exception that refused it. A refused item must have written nothing;
# if the function itself raises, the whole batch is rolled back and retried item by item.
BatchFunction = Callable[[Connection, list[Any]], list[Any]]


@dataclass
class _Item:
    function: BatchFunction
    payload: Any
    future: Future[Any] | asyncio.Future[Any]


class BatchWriter:
    def __init__(self, engine: Engine, *, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, function: BatchFunction, payload: Any) -> Future[Any]:
        """Queue one item for `function`; the future resolves after its commit."""
        future: Future[Any] = Future()
        self._put(_Item(function, payload, future))
        return future

    def _put(self, item: _Item) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rag-loop-writer")
                self._thread.daemon = True
                self._thread.start()
            self._queue.put(item)

    def run(self, function: BatchFunction, payload: Any) -> Any:
        """Submit and wait (for callers that are not async)."""
        return self.submit(function, payload).result()

    async def arun(self, function: BatchFunction, payload: Any) -> Any:
        """Submit and await without occupying a thread of the pool. The answers of a batch
        reach the event loop in one hand-over, not one wake-up per item."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._put(_Item(function, payload, future))
        return await future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._write(batch)
            except Exception:
                # one transaction for everyone failed: give each item its own
                log.warning("a batch of %d writes failed; retrying one by one", len(batch))
                for item in batch:
                    try:
                        self._write([item])
                    except Exception as exc:
                        _answer([(item, exc)])
            if stop:
                return

    def _write(self, batch: list[_Item]) -> None:
        groups: dict[BatchFunction, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item.function, []).append(item)
        outcomes: list[tuple[_Item, Any]] = []
        with write_connection(self.engine) as conn:
            for function, items in groups.items():
                results = function(conn, [item.payload for item in items])
                outcomes.extend(zip(items, results, strict=True))
        _answer(outcomes)  # committed: now answer


def _answer(outcomes: list[tuple[_Item, Any]]) -> None:
    """Resolve each item's future with its result (or exception). Futures of an event loop
    are resolved on that loop, all of one loop in one callback."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Item, Any]]] = {}
    for item, result in outcomes:
        if isinstance(item.future, asyncio.Future):
            by_loop.setdefault(item.future.get_loop(), []).append((item, result))
        else:
            _resolve(item.future, result)
    for loop, answers in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_resolve_all, answers)


def _resolve_all(answers: list[tuple[_Item, Any]]) -> None:
    for item, result in answers:
        _resolve(item.future, result)


def _resolve(future: Future[Any] | asyncio.Future[Any], result: Any) -> None:
    if future.cancelled():  # e.g. the client went away
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
