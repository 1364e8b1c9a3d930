"""Row-wise vector helpers shared by evaluation, compression, verification and comparison."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[n, d]`` arrays."""
    return (unit_rows(a) * unit_rows(b)).sum(axis=1)
