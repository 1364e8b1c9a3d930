"""The local engine's dynamic batcher: concurrent requests merged into token-budget batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hub_export.serve.requests import Embedder, ServerError

logger = logging.getLogger(__name__)
SHUTTING_DOWN = "server is shutting down; retry on another replica or later"


@dataclass
class _Pending:
    texts: Sequence[str]
    prompt_name: str | None
    future: asyncio.Future


class DynamicBatcher:
    """Merges concurrent requests into batches and splits the results back, in order.

    Requests wait in a queue bounded by ``limits.max_queue_texts`` texts (a request that would
    overflow it gets 503 with Retry-After instead of growing memory). One worker takes every
    waiting request and encodes them in length-sorted token-budget batches per prompt on a single
    model thread; each request's future gets its own rows.

    - A batch that fails is retried request by request, so one request's bad input fails only
      that request.
    - A request whose client went away (its future cancelled) is left out of the token-budget
      batches that have not run yet.
    - :meth:`begin_shutdown` (on SIGTERM) answers waiting and new requests 503 at once and stops the
      running batch after the token-budget batch in progress; requests it completed get their rows.
    """

    def __init__(self, embedder: Embedder, on_batch: Callable[[int, int], None] | None = None) -> None:
        self.embedder = embedder
        self.on_batch = on_batch
        self.queued_texts = 0
        self.closing = False
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    def begin_shutdown(self) -> None:
        """Answer waiting and new requests 503 now; the batch being encoded stops at its next token-budget batch."""
        self.closing = True
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            self.queued_texts -= len(pending.texts)
            if not pending.future.done():
                pending.future.set_exception(ServerError(503, SHUTTING_DOWN, retry_after=1))

    async def stop(self) -> None:
        """Stop the worker; waiting requests get 503."""
        self.begin_shutdown()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def __call__(self, texts: Sequence[str], prompt_name: str | None) -> np.ndarray:
        """Queue one request and wait for its vectors."""
        if self.closing:
            raise ServerError(503, SHUTTING_DOWN, retry_after=1)
        if self.queued_texts + len(texts) > self.embedder.limits.max_queue_texts:
            raise ServerError(
                503, f"server overloaded: {self.queued_texts} texts are waiting; retry later", retry_after=1
            )
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        await self._queue.put(_Pending(texts, prompt_name, future))
        return await future

    def _wanted(self, batch: list[_Pending]) -> Callable[[int], bool]:
        """Whether request ``i`` of ``batch`` still needs its rows (read from the model thread: flags only)."""
        return lambda index: not self.closing and not batch[index].future.done()

    async def _embed(self, batch: list[_Pending]) -> list[np.ndarray | BaseException | None]:
        """The rows of every request of ``batch``; if the merged batch fails, each request alone."""
        loop = asyncio.get_running_loop()
        requests = [(pending.texts, pending.prompt_name) for pending in batch]
        try:
            return await loop.run_in_executor(None, self.embedder.embed_many, requests, self._wanted(batch))
        except Exception as error:
            if len(batch) == 1:
                return [error]
            logger.warning("a batch of %d requests failed (%r); encoding them one by one", len(batch), error)
        results: list[np.ndarray | BaseException | None] = []
        for index, request in enumerate(requests):
            try:
                wanted = self._wanted(batch[index : index + 1])
                results += await loop.run_in_executor(None, self.embedder.embed_many, [request], wanted)
            except Exception as error:  # this request's own failure, answered to it alone
                results.append(error)
        return results

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            count = sum(len(pending.texts) for pending in batch)
            self.queued_texts -= count
            if self.on_batch is not None:
                self.on_batch(count, self.queued_texts)
            results = await self._embed(batch)
            for pending, result in zip(batch, results):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    logger.error("embedding a request of %d texts failed: %r", len(pending.texts), result)
                    pending.future.set_exception(ServerError(500, f"embedding failed: {result}"))
                elif result is None:  # left out: the server began shutting down
                    pending.future.set_exception(ServerError(503, SHUTTING_DOWN, retry_after=1))
                else:
                    pending.future.set_result(result)
