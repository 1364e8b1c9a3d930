"""Encoding a list of texts in stages that a progress bar names (sentence-transformers' own bar says "Batches")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

STAGE_TEXTS = 2048  # texts per encode call: long enough for length-sorted batches, short enough to move the bar


def encode_stage(
    encode: Callable[..., np.ndarray], texts: Sequence[str], stage: str, progress: bool = False, **kwargs: Any
) -> np.ndarray:
    """``encode(texts, **kwargs)`` (e.g. ``model.encode_query``) under a progress bar named ``stage``.

    The texts go in calls of :data:`STAGE_TEXTS`, each length-sorted into batches by
    sentence-transformers as one call would be; the rows come back in the input order.
    """
    from tqdm.auto import tqdm

    texts = list(texts)
    chunks = []
    with tqdm(total=len(texts), desc=stage, unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), STAGE_TEXTS):
            chunk = encode(texts[start : start + STAGE_TEXTS], show_progress_bar=False, convert_to_numpy=True, **kwargs)
            chunks.append(np.asarray(chunk))
            bar.update(len(chunks[-1]))
    if not chunks:
        return np.asarray(encode([], show_progress_bar=False, convert_to_numpy=True, **kwargs))
    return np.concatenate(chunks)
