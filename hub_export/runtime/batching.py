"""Token-budget batches: length-sorted batches whose padded size stays within a token budget."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


TOKEN_COUNT_SLICE = 1024  # texts tokenized at a time: bounded memory for any number of texts


def token_lengths(model: SentenceTransformer, texts: Sequence[str]) -> np.ndarray:
    """Token count of each text under the model's tokenizer and token limit (ids only, a slice at a time)."""
    texts = list(texts)
    counts: list[int] = []
    for start in range(0, len(texts), TOKEN_COUNT_SLICE):
        encoded = model.tokenizer(
            texts[start : start + TOKEN_COUNT_SLICE],
            truncation=True,
            max_length=model.max_seq_length,
            add_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        counts += [len(ids) for ids in encoded["input_ids"]]
    return np.array(counts, dtype=np.int64)


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_batch_size: int = 32) -> list[np.ndarray]:
    """Index batches, longest texts first, whose padded size (count x longest) stays within ``max_tokens``.

    Batches hold at most ``max_batch_size`` texts; a single text longer than the budget forms its own batch.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_batch_size, max_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


def encode_with_token_budget(
    model: SentenceTransformer,
    texts: Sequence[str],
    max_tokens: int = 2048,
    max_batch_size: int = 32,
    **encode_kwargs: Any,
) -> np.ndarray:
    """``model.encode`` with length-sorted batches of at most ``max_tokens`` padded tokens.

    Short texts go in large batches and long ones in small batches, which cuts padding and keeps
    memory flat. Returns embeddings in the input order; ``encode_kwargs`` (``prompt_name``,
    ``convert_to_numpy``...) are passed through.
    """
    texts = list(texts)
    if not texts:
        return np.empty((0,))
    result: list[np.ndarray | None] = [None] * len(texts)
    for batch in token_budget_batches(token_lengths(model, texts), max_tokens, max_batch_size):
        embeddings = model.encode(
            [texts[i] for i in batch], batch_size=len(batch), convert_to_numpy=True, **encode_kwargs
        )
        for i, embedding in zip(batch, embeddings):
            result[i] = embedding
    return np.stack(result)
