"""Offline evaluation helpers: STS Spearman for each part and for the concatenation."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr


def load_sts(path: str | Path, limit: int | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """Read an STS-B style ``score<TAB>sentence1<TAB>sentence2`` file (gzip or plain)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([float(r["score"]) for r in rows])


def part_views(model) -> dict[str, slice]:
    """Column ranges of each part in the concatenated vector, plus ``"concat"`` for all of it."""
    views, start = {}, 0
    for spec in model[0].specs:
        views[spec.name] = slice(start, start + spec.output_dimension)
        start += spec.output_dimension
    views["concat"] = slice(0, start)
    return views


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(axis=1)


def sts_spearman(model, path: str | Path, limit: int | None = None, batch_size: int = 64) -> dict[str, float]:
    """Spearman x 100 between cosine similarity and gold scores, for each part and the concatenation."""
    first, second, gold = load_sts(path, limit)
    left = model.encode(first, batch_size=batch_size, convert_to_numpy=True)
    right = model.encode(second, batch_size=batch_size, convert_to_numpy=True)
    return {
        view: 100 * float(spearmanr(cosine_rows(left[:, cols], right[:, cols]), gold).statistic)
        for view, cols in part_views(model).items()
    }
