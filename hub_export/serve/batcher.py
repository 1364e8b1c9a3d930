"""The local engine's dynamic batcher: concurrent requests merged into token-budget batches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hub_export.serve.requests import Embedder, ServerError

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    texts: Sequence[str]
    prompt_name: str | None
    future: asyncio.Future


class DynamicBatcher:
    """Merges concurrent requests into batches and splits the results back, in order.

    Requests wait in a queue bounded by ``limits.max_queue_texts`` texts (a request that would
    overflow it gets 503 with Retry-After instead of growing memory). One worker takes every
    waiting request, encodes them in one length-sorted token-budget pass per prompt on a
    single model thread, and resolves each request's future with its own rows.
    """

    def __init__(self, embedder: Embedder, on_batch: Callable[[int, int], None] | None = None) -> None:
        self.embedder = embedder
        self.on_batch = on_batch
        self.queued_texts = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; waiting requests get 503."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            pending.future.set_exception(ServerError(503, "server is shutting down", retry_after=1))

    async def __call__(self, texts: Sequence[str], prompt_name: str | None) -> np.ndarray:
        """Queue one request and wait for its vectors."""
        if self.queued_texts + len(texts) > self.embedder.limits.max_queue_texts:
            raise ServerError(
                503, f"server overloaded: {self.queued_texts} texts are waiting; retry later", retry_after=1
            )
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        await self._queue.put(_Pending(texts, prompt_name, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            count = sum(len(pending.texts) for pending in batch)
            self.queued_texts -= count
            if self.on_batch is not None:
                self.on_batch(count, self.queued_texts)
            try:
                requests = [(pending.texts, pending.prompt_name) for pending in batch]
                results = await loop.run_in_executor(None, self.embedder.embed_many, requests)
            except Exception as error:  # the model failed: every request of this batch learns why
                logger.exception("embedding a batch of %d texts failed", count)
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(ServerError(500, f"embedding failed: {error}"))
                continue
            for pending, result in zip(batch, results):
                if not pending.future.done():
                    pending.future.set_result(result)
