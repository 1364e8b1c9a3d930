"""Row-wise vector helpers shared by evaluation, compression, verification, comparison and selection."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def project(vectors: np.ndarray, weight: np.ndarray, bias: np.ndarray, dim: int | None = None) -> np.ndarray:
    """What a compressed model outputs: ``normalize(W x + b)``, cut to ``dim`` and re-normalized."""
    out = unit_rows(np.asarray(vectors, dtype=np.float64) @ weight.T.astype(np.float64) + bias)
    return unit_rows(out[:, :dim]) if dim is not None else out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[n, d]`` arrays."""
    return (unit_rows(a) * unit_rows(b)).sum(axis=1)
