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


def ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks of a 1-d array, tied values sharing their mean rank (as ``scipy.stats.rankdata``: the ranks of
    Spearman's correlation, where gold scores such as STS-B's repeat)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1])
    ends = np.concatenate([starts[1:], [len(values)]])
    result = np.empty(len(values), dtype=np.float64)
    result[order] = np.repeat((starts + ends - 1) / 2, ends - starts)
    return result


def similarity_fidelity(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """How closely ``student`` vectors follow ``teacher`` vectors of the same texts (rows).

    ``mse``: mean squared difference of the unit vectors (what distillation minimizes); ``spearman``: rank
    correlation of the two models' pairwise cosine similarities over every pair of texts (1.0: the student
    orders every pair as the teacher does).
    """
    a, b = unit_rows(np.asarray(student, dtype=np.float64)), unit_rows(np.asarray(teacher, dtype=np.float64))
    upper = np.triu_indices(len(a), k=1)
    ours, theirs = (a @ a.T)[upper], (b @ b.T)[upper]
    spearman = float(np.corrcoef(ranks(ours), ranks(theirs))[0, 1]) if len(ours) > 1 else float("nan")
    return {"mse": float(((a - b) ** 2).mean()), "spearman": spearman}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[n, d]`` arrays."""
    return (unit_rows(a) * unit_rows(b)).sum(axis=1)
