"""Encoding lists of texts: in stages a progress bar names (sentence-transformers' own bar says "Batches"), and
into a cache saved chunk by chunk, so that an interrupted run resumes."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hub_export.vectors import unit_rows

STAGE_TEXTS = 2048  # texts per encode call: long enough for length-sorted batches, short enough to move the bar
CHUNK = 2048  # texts encoded (and saved) at a time into a cache


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


def _save(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` whole or not at all (a temporary name, then a rename)."""
    temporary = path.with_name(path.name + ".tmp.npy")
    np.save(temporary, array)
    os.replace(temporary, path)


def _load(path: Path, rows: int) -> np.ndarray:
    """A cached array with ``rows`` finite rows (else the cache is not what this tool wrote)."""
    array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or len(array) != rows or not np.isfinite(array).all():
        raise ValueError(f"{path}: holds {array.shape} (expected {rows} finite rows); delete the cache folder")
    return array


def cached_vectors(
    work: Path,
    key: str,
    texts: Sequence[str],
    encode: Callable[..., np.ndarray],
    label: str,
    progress: bool = False,
) -> np.ndarray:
    """Unit vectors of ``texts`` by ``encode``, cached as ``<key>.npy`` in ``work`` and saved chunk by chunk while
    encoding, so that a killed run resumes at its last chunk. Whoever owns ``work`` pins what the texts and the
    model are (the file holds only vectors).

    Raises:
        ValueError: If the model's outputs are not finite, or a cached file has the wrong shape.
    """
    from tqdm.auto import tqdm

    final = work / f"{key}.npy"
    if final.is_file():
        return _load(final, len(texts))
    chunks = []
    with tqdm(total=len(texts), desc=label, unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), CHUNK):
            part = work / f"{key}.{start:08d}.npy"
            count = len(texts[start : start + CHUNK])
            if part.is_file():
                chunks.append(_load(part, count))
            else:
                vectors = np.asarray(encode(list(texts[start : start + CHUNK]), show_progress_bar=False))
                if not np.isfinite(vectors).all():
                    raise ValueError(f"the vectors of {label} are not finite; run `concat-embed verify` on the model")
                chunks.append(unit_rows(vectors.astype(np.float32)))
                _save(part, chunks[-1])
            bar.update(count)
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    _save(final, vectors)
    for start in range(0, len(texts), CHUNK):
        (work / f"{key}.{start:08d}.npy").unlink(missing_ok=True)
    return vectors
