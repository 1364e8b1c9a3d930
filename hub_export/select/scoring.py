"""Scoring combinations of candidates from their cached similarities, without building or encoding anything.

A weight scales a part's unit vector, so the cosine of two combined vectors is ``sum(w_i^2 cos_i) / sum(w_i^2)``:
every combination and weight is scored from each candidate's cosines (checked against a model actually built
with those weights in the tests). STS: Spearman of the pairs' similarities with the gold scores. Retrieval:
nDCG@10 with the judged relevant documents; for a corpus without labels, with each pseudo query's own document
(see :mod:`hub_export.select.devset`) or, with ``reference="concat"``, the top 10 documents of the equal-weight
concatenation of every candidate.

Weights: for STS a coordinate search of Spearman; for retrieval the weights under which the relevant documents
are most likely (:func:`likelihood_weights`), which uses each relevant document's place among all documents
rather than the top 10 only, and so varies less from one set of queries to another than a search of nDCG@10.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hub_export.select.candidates import Candidate
from hub_export.select.devset import DevSet
from hub_export.vectors import ranks

GRID = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)  # STS: squared weights tried, relative to the first part's
SCALES = (1e-3, 1e3)  # retrieval: bounds of each part's fitted scale (squared weight / softmax temperature)
FLOOR = 0.01  # the smallest squared weight kept, relative to the largest (weights stay > 0)
DEPTH = 10


def ndcg_at_10(scores: np.ndarray, relevant: Sequence[set[int]]) -> float:
    """Mean binary nDCG@10 x 100 of a ``[queries, documents]`` score matrix."""
    k = min(DEPTH, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    discounts = 1 / np.log2(np.arange(2, k + 2))
    values = []
    for row, wanted in zip(order, relevant):
        gain = sum(discount for doc, discount in zip(row, discounts) if doc in wanted)
        ideal = discounts[: min(len(wanted), k)].sum()
        values.append(gain / ideal if ideal else 0.0)
    return 100 * float(np.mean(values))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation x 100 (tied values share their mean rank, as in ``scipy.stats.spearmanr``)."""
    return 100 * float(np.corrcoef(ranks(a), ranks(b))[0, 1])


@dataclass
class Row:
    """One combination: its parts and weights, cost, scores on both halves and its parts' diversity."""

    parts: tuple[str, ...]
    weights: tuple[float, ...]
    dims: int
    parameters: int
    ms_per_text: float
    choose: float
    held_out: float
    cka: float | None
    jaccard: float | None

    @property
    def label(self) -> str:
        if len(self.parts) == 1:
            return self.parts[0]
        if all(w == 1.0 for w in self.weights):
            return " + ".join(self.parts)
        return " + ".join(f"{w:.2f}*{p}" for p, w in zip(self.parts, self.weights))


class Scorer:
    """Scores any weighted combination of ``candidates`` on the choosing or the held-out half of ``devset``."""

    def __init__(self, devset: DevSet, candidates: list[Candidate]) -> None:
        self.devset = devset
        self.candidates = {c.name: c for c in candidates}
        self.similarities = {c.name: c.similarities(devset).astype(np.float64) for c in candidates}
        self.relevant = devset.relevant
        self.reference: tuple[str, ...] = ()
        if devset.kind == "corpus" and devset.reference == "concat":
            self.reference = tuple(self.candidates)
            reference = sum(self.similarities[name] for name in self.reference)
            k = min(DEPTH, reference.shape[1])
            self.relevant = [set(row) for row in np.argpartition(-reference, k - 1, axis=1)[:, :k]]

    def score(self, parts: Sequence[str], weights: Sequence[float], units: np.ndarray) -> float:
        """STS Spearman or nDCG@10 (x 100) of the combination on ``units`` (indices of pairs or queries)."""
        combined = sum(w * w * self.similarities[name][units] for name, w in zip(parts, weights))
        if self.devset.kind == "sts":
            return spearman(combined, self.devset.gold[units])
        return ndcg_at_10(combined, [self.relevant[i] for i in units])

    def best_weights(self, parts: Sequence[str]) -> tuple[float, ...]:
        """Weights chosen on the choosing half, returned with the largest 1 (bounded, finite, > 0): for retrieval
        those of :func:`likelihood_weights` (squared weights below :data:`FLOOR` of the largest raised to it), for
        STS a coordinate search of Spearman (:meth:`searched_squares`).

        Raises:
            ValueError: If the weights come out non-finite or not positive.
        """
        if self.devset.kind == "sts":
            squared = self.searched_squares(parts)
        else:
            units = self.devset.choose
            fitted = likelihood_weights(
                [self.similarities[name][units] for name in parts], [self.relevant[i] for i in units]
            )
            squared = [max(value / max(fitted), FLOOR) for value in fitted]  # fitted: within SCALES, > 0
        weights = [math.sqrt(v) for v in squared]
        top = max(weights)
        weights = tuple(round(w / top, 2) for w in weights)  # as the report shows them; finer is noise
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights of {list(parts)} came out {weights}: expected finite numbers > 0")
        return weights

    def searched_squares(self, parts: Sequence[str]) -> list[float]:
        """Coordinate search over :data:`GRID` for each part's squared weight relative to the first part's, a few
        rounds, on the choosing half's score."""
        squared = [1.0] * len(parts)
        best = self.score(parts, squared, self.devset.choose)
        for _ in range(3):
            improved = False
            for index in range(1, len(parts)):
                for value in GRID:
                    trial = squared[:index] + [value] + squared[index + 1 :]
                    score = self.score(parts, [math.sqrt(v) for v in trial], self.devset.choose)
                    if score > best + 1e-9:
                        best, squared, improved = score, trial, True
            if not improved:
                break
        return squared

    def row(self, parts: Sequence[str], weights: Sequence[float]) -> Row:
        members = [self.candidates[name] for name in parts]
        cka, jaccard = self.diversity(parts)
        return Row(
            parts=tuple(parts),
            weights=tuple(weights),
            dims=sum(c.dims for c in members),
            parameters=sum(c.parameters for c in members),
            ms_per_text=sum(c.ms_per_text for c in members),
            choose=self.score(parts, weights, self.devset.choose),
            held_out=self.score(parts, weights, self.devset.held_out),
            cka=cka,
            jaccard=jaccard,
        )

    def diversity(self, parts: Sequence[str]) -> tuple[float | None, float | None]:
        """Mean pairwise linear CKA of the parts' vectors and Jaccard@10 of their rankings (None for one part)."""
        from hub_export.quality.compare import linear_cka

        if len(parts) < 2:
            return None, None
        key = "first" if self.devset.kind == "sts" else "documents"
        ckas, jaccards = [], []
        for a, b in itertools.combinations(parts, 2):
            ckas.append(linear_cka(self.candidates[a].vectors[key], self.candidates[b].vectors[key]))
            if self.devset.kind != "sts":
                units = self.devset.choose
                k = min(DEPTH, self.similarities[a].shape[1])
                jaccards.append(_jaccard(self.similarities[a][units], self.similarities[b][units], k))
        return float(np.mean(ckas)), float(np.mean(jaccards)) if jaccards else None


def likelihood_weights(similarities: Sequence[np.ndarray], relevant: Sequence[set[int]]) -> list[float]:
    """Each part's scale ``s_i`` under which the relevant documents are most likely: the mean over (query, relevant
    document) of ``log softmax(sum_i s_i cos_i)`` over all documents, maximized by L-BFGS-B within :data:`SCALES`.

    ``s_i`` is a part's squared weight divided by a temperature, so only the ratios are weights. The objective is
    smooth (unlike nDCG@10) and concave in ``s``; it starts from equal scales of 20.

    Args:
        similarities: Per part, the ``[queries, documents]`` cosines.
        relevant: Per query, the positions of its relevant documents.

    Returns:
        The fitted ``s_i`` (equal ones when no query has a relevant document).
    """
    from scipy.optimize import minimize

    pairs = [(query, document) for query, documents in enumerate(relevant) for document in sorted(documents)]
    if not pairs:
        return [1.0] * len(similarities)
    rows, columns = np.array(pairs).T

    def loss(log_scales: np.ndarray) -> tuple[float, np.ndarray]:
        scales = np.exp(log_scales)
        logits = sum(scale * cosines for scale, cosines in zip(scales, similarities))
        top = logits.max(axis=1, keepdims=True)
        weights = np.exp(logits - top)
        total = weights.sum(axis=1, keepdims=True)
        weights /= total
        normalizer = top[:, 0] + np.log(total[:, 0])
        value = float(np.mean(normalizer[rows] - logits[rows, columns]))
        gradient = [
            scale * float(np.mean((weights * cosines).sum(axis=1)[rows] - cosines[rows, columns]))
            for scale, cosines in zip(scales, similarities)
        ]
        return value, np.array(gradient)

    bounds = [(math.log(SCALES[0]), math.log(SCALES[1]))] * len(similarities)
    fitted = minimize(loss, np.full(len(similarities), math.log(20.0)), jac=True, method="L-BFGS-B", bounds=bounds)
    return [float(value) for value in np.exp(fitted.x)]


def _jaccard(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean Jaccard overlap of the top-``k`` sets of two score matrices."""
    top_a = np.argpartition(-a, k - 1, axis=1)[:, :k]
    top_b = np.argpartition(-b, k - 1, axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(top_a, top_b)]))


def combinations(scorer: Scorer, max_parts: int, auto: bool) -> list[Row]:
    """Every candidate alone, every pair, and larger sets up to ``max_parts`` by greedy forward selection (on the
    choosing half); each set of two or more with equal weights and, with ``auto``, with searched weights."""
    names = list(scorer.candidates)
    rows: list[Row] = []

    def add(parts: tuple[str, ...]) -> Row:
        equal = scorer.row(parts, (1.0,) * len(parts))
        rows.append(equal)
        weights = scorer.best_weights(parts) if auto and len(parts) > 1 else equal.weights
        if weights != equal.weights:  # the search found better weights: a row of their own
            rows.append(scorer.row(parts, weights))
        return max([equal, rows[-1]], key=lambda row: row.choose)

    for name in names:
        add((name,))
    if max_parts >= 2:
        best = max((add(pair) for pair in itertools.combinations(names, 2)), key=lambda row: row.choose)
        for _ in range(3, max_parts + 1):
            rest = [name for name in names if name not in best.parts]
            if not rest:
                break
            best = max((add((*best.parts, name)) for name in rest), key=lambda row: row.choose)
    return rows


SAME = 0.1  # points of the score within which two rows count as equally good: the cheaper one is recommended


def recommend(rows: list[Row]) -> Row:
    """The cheapest row (ms per text) among those within :data:`SAME` points of the best on the choosing half: a part
    that adds noise, or less than that, is not worth its cost."""
    best = max(row.choose for row in rows)
    return min((row for row in rows if row.choose >= best - SAME), key=lambda row: (row.ms_per_text, -row.choose))


def pareto(rows: list[Row]) -> list[Row]:
    """Rows no other row beats on both cost (ms per text) and quality (choosing half)."""
    return [
        row
        for row in rows
        if not any(
            other.ms_per_text <= row.ms_per_text
            and other.choose >= row.choose
            and (other.ms_per_text < row.ms_per_text or other.choose > row.choose)
            for other in rows
        )
    ]
