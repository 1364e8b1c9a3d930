"""The dynamic batcher: one request's failure stays its own, abandoned requests cost nothing, shutdown drains.

A stub embedder stands in for the model where a test needs to hold a batch at a known point; every wait has a
generous bound that only a hang would reach.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from hub_export.serve.batcher import SHUTTING_DOWN, DynamicBatcher
from hub_export.serve.requests import Embedder, Limits, ServerError

HANG = 300  # seconds: only a deadlock gets there


class StubEmbedder:
    """``embed_many`` on a model thread: one row per text (its length), failing on texts that say "poison"."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.limits = Limits()
        self.hold = hold
        self.entered = threading.Event()
        self.seen: list[list[str]] = []
        self.wanted: list[list[bool]] = []  # what the batcher answered "wanted?" for each request, after the hold

    def embed_many(self, requests, wanted=None):
        self.seen.append([text for texts, _ in requests for text in texts])
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(HANG)
        if any("poison" in text for texts, _ in requests for text in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        wanted = wanted or (lambda index: True)
        self.wanted.append([wanted(i) for i in range(len(requests))])
        return [
            np.array([[len(t)] for t in texts], dtype=np.float32) if wanted(i) else None
            for i, (texts, _) in enumerate(requests)
        ]


def test_one_requests_bad_text_fails_only_that_request() -> None:
    stub = StubEmbedder()

    async def run():
        batcher = DynamicBatcher(stub)
        await batcher.start()
        try:
            return await asyncio.gather(
                batcher(["ok"], None),
                batcher(["poison"], None),
                batcher(["fine text"], "query"),
                return_exceptions=True,
            )
        finally:
            await batcher.stop()

    first, bad, third = asyncio.run(run())
    assert first.tolist() == [[2.0]] and third.tolist() == [[9.0]]
    assert isinstance(bad, ServerError) and bad.status == 500 and "TextEncodeInput" in bad.message
    assert stub.seen[0] == ["ok", "poison", "fine text"]  # merged first, then one by one
    assert stub.seen[1:] == [["ok"], ["poison"], ["fine text"]]


def test_an_abandoned_request_is_left_out_of_the_batches_still_to_run() -> None:
    hold = threading.Event()
    stub = StubEmbedder(hold)

    async def run():
        batcher = DynamicBatcher(stub)
        await batcher.start()
        try:
            busy = asyncio.ensure_future(batcher(["busy"], None))
            await asyncio.get_running_loop().run_in_executor(None, stub.entered.wait, HANG)  # the model is busy
            abandoned = asyncio.ensure_future(batcher(["abandoned"] * 3, None))
            kept = asyncio.ensure_future(batcher(["kept"], None))
            await asyncio.sleep(0)  # both are queued
            abandoned.cancel()  # its client went away
            hold.set()
            return await busy, await kept, await asyncio.gather(abandoned, return_exceptions=True)
        finally:
            await batcher.stop()

    busy, kept, (abandoned,) = asyncio.run(run())
    assert busy.tolist() == [[4.0]] and kept.tolist() == [[4.0]] and isinstance(abandoned, asyncio.CancelledError)
    assert stub.seen == [["busy"], ["abandoned", "abandoned", "abandoned", "kept"]]  # queued together, and
    assert stub.wanted == [[True], [False, True]]  # embed_many is told to leave the abandoned texts out


def test_embed_many_leaves_out_texts_of_requests_no_longer_wanted(loaded_model, monkeypatch) -> None:
    embedder = Embedder(loaded_model, "m", Limits(max_batch_tokens=16))  # small budget: one text per batch
    encoded: list[str] = []
    original = loaded_model.encode
    monkeypatch.setattr(loaded_model, "encode", lambda texts, **kw: encoded.extend(texts) or original(texts, **kw))
    requests = [(["a cat sat", "the dog"], None), (["gone away", "never encoded"], None), (["kept", "too"], "query")]
    results = embedder.embed_many(requests, wanted=lambda index: index != 1)
    assert results[1] is None and "gone away" not in encoded and "never encoded" not in encoded
    assert sorted(encoded) == sorted(["a cat sat", "the dog", "kept", "too"])
    np.testing.assert_allclose(results[0], original(["a cat sat", "the dog"]), atol=1e-5)
    np.testing.assert_allclose(results[2], original(["kept", "too"], prompt_name="query"), atol=1e-5)


def test_shutdown_answers_waiting_requests_503_and_finishes_the_running_one() -> None:
    hold = threading.Event()
    stub = StubEmbedder(hold)

    async def run():
        batcher = DynamicBatcher(stub)
        await batcher.start()
        try:
            running = asyncio.ensure_future(batcher(["running"], None))
            await asyncio.get_running_loop().run_in_executor(None, stub.entered.wait, HANG)
            waiting = asyncio.ensure_future(batcher(["waiting"], None))
            await asyncio.sleep(0)
            batcher.begin_shutdown()  # SIGTERM
            late = await asyncio.gather(batcher(["late"], None), return_exceptions=True)
            waited = await asyncio.gather(waiting, return_exceptions=True)
            hold.set()
            return await asyncio.gather(running, return_exceptions=True), waited, late
        finally:
            await batcher.stop()

    (running,), (waiting,), (late,) = asyncio.run(run())
    for error in (waiting, late):
        assert isinstance(error, ServerError) and (error.status, error.retry_after, error.message) == (
            503,
            1,
            SHUTTING_DOWN,
        )
    # the batch that was running stops at its next token-budget batch: this request had none left to run, and
    # the stub (asked "wanted?" after shutdown began) leaves it out, so it too is answered 503, not cut off
    assert isinstance(running, ServerError) and running.status == 503
    assert stub.seen == [["running"]]


def test_a_request_that_completes_before_shutdown_gets_its_rows() -> None:
    stub = StubEmbedder()

    async def run():
        batcher = DynamicBatcher(stub)
        await batcher.start()
        try:
            done = await batcher(["done"], None)
            batcher.begin_shutdown()
            with pytest.raises(ServerError, match="shutting down"):
                await batcher(["after"], None)
            return done
        finally:
            await batcher.stop()

    assert asyncio.run(run()).tolist() == [[4.0]]
