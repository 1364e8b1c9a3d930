"""Offline evaluation: STS Spearman, nDCG@10 and Recall@100 for each part and the concatenation.

``concat-embed eval`` prints one row per view (each part alone, the concatenation) and
compression setting (float32, and int8 / int4 where ``concat-embed calibrate`` stored ranges).
Retrieval metrics come from pytrec_eval; compressed retrieval scores float queries against
decoded documents (vector codes).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import spearmanr

from hub_export.data import document_text, load_beir, load_sts
from hub_export.encoding import encode_stage
from hub_export.folder import has_projection
from hub_export.modeling import embedding_dimension_of
from hub_export.quality.codes import (
    PartLayout,
    bytes_per_vector,
    decode_codes,
    decode_dimension_codes,
    dimension_codes,
    encode_codes,
    part_layouts,
    prepare_queries,
)
from hub_export.vectors import cosine_rows, unit_rows

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from torch import nn

logger = logging.getLogger(__name__)

SETTINGS = (None, "int8", "int4")


def part_views(model: SentenceTransformer) -> dict[str, slice]:
    """Column ranges of each part in the concatenated vector, plus ``"concat"`` for all of it."""
    layouts = part_layouts(model[0].specs)
    views = {layout.name: slice(layout.start, layout.start + layout.width) for layout in layouts}
    return views | {"concat": slice(0, sum(layout.width for layout in layouts))}


def sts_score(similarity: np.ndarray, gold: np.ndarray, label: str) -> float | None:
    """Spearman x 100 of pair similarities against gold scores; ``None`` (logged) where it is undefined.

    Undefined when the similarities are constant (say every pair's codes are equal at a tiny size)
    or not finite: the table shows ``n/a`` and ``--json`` writes ``null`` instead of ``NaN``.
    """
    if np.isfinite(similarity).all() and np.ptp(similarity) > 0:
        value = float(spearmanr(similarity, gold).statistic)
        if math.isfinite(value):
            return 100 * value
    logger.warning("%s: STS Spearman is undefined (constant or non-finite similarities); reported as n/a", label)
    return None


def sts_spearman(
    model: SentenceTransformer, path: str | Path, limit: int | None = None, batch_size: int = 64
) -> dict[str, float | None]:
    """Spearman x 100 between cosine similarity and gold scores, for each part and the concatenation."""
    first, second, gold = load_sts(path, limit)
    left = model.encode(first, batch_size=batch_size, convert_to_numpy=True)
    right = model.encode(second, batch_size=batch_size, convert_to_numpy=True)
    return {
        view: sts_score(cosine_rows(left[:, cols], right[:, cols]), gold, view)
        for view, cols in part_views(model).items()
    }


def retrieval_metrics(
    scores: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: dict[str, dict[str, int]],
    depth: int = 100,
) -> dict[str, float]:
    """Mean nDCG@10 and Recall@100 (pytrec_eval) of a ``[queries, docs]`` score matrix."""
    import pytrec_eval

    run = {}
    for row, qid in enumerate(query_ids):
        top = np.argsort(-scores[row])[:depth]
        run[qid] = {doc_ids[j]: float(scores[row, j]) for j in top}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    return {
        "ndcg@10": float(np.mean([m["ndcg_cut_10"] for m in per_query.values()])),
        "recall@100": float(np.mean([m["recall_100"] for m in per_query.values()])),
    }


class PartTimer:
    """Accumulates each part pipeline's forward time through torch hooks (tokenization excluded)."""

    def __init__(self, concat: nn.Module) -> None:
        self.seconds = {spec.name: 0.0 for spec in concat.specs}
        self._handles = []
        for spec, pipeline in zip(concat.specs, concat.pipelines):
            self._handles.append(pipeline.register_forward_pre_hook(self._start))
            self._handles.append(pipeline.register_forward_hook(self._stop(spec.name)))

    def _start(self, module, args) -> None:
        module._timer_start = time.perf_counter()

    def _stop(self, name: str):
        def hook(module, args, output) -> None:
            self.seconds[name] += time.perf_counter() - module._timer_start

        return hook

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()


def _as_stored(embeddings: np.ndarray, layouts: Sequence[PartLayout], scheme: str | None) -> np.ndarray:
    """The vectors as a store holds and reads them back: float (shaped per part) or decoded codes."""
    if scheme is None:
        return prepare_queries(embeddings, layouts)
    return decode_codes(encode_codes(embeddings, layouts, scheme), layouts, scheme)


def evaluate_model(
    model: SentenceTransformer,
    sts: str | Path | None = None,
    beir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    matryoshka_dims: Sequence[int] | None = None,
    progress: bool = False,
    int8_ranges: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{view, setting, sts, ndcg@10, recall@100, bytes, encode_s}`` (scores x 100).

    For an uncompressed model: each part alone and the concatenation, at float32 and each
    calibrated scheme. For a compressed model (modules after the concatenation) or a plain model (a
    distilled student): one view per Matryoshka dimension (``matryoshka_dims``, default the output
    size) at float32, int8 and binary.

    Args:
        model: A loaded combined model (``SentenceTransformer`` with a ``ConcatEmbedding``) or a plain one.
        sts: STS-B style TSV (gzip or plain).
        beir: BEIR folder (``corpus.jsonl*``, ``queries.jsonl*``, ``qrels/test.tsv``).
        limit: Subsample: STS pairs, and BEIR queries (their relevant documents plus up to
            ``10 * limit`` documents in all).
        batch_size: Encoding batch size.
        matryoshka_dims: The dimensions a compressed model records (``compression.json``).
        progress: Show a progress bar per encoded set (texts/s, ETA).
        int8_ranges: A compressed model's calibrated per-dimension int8 ranges by Matryoshka dimension
            (``concat-embed calibrate``); dimensions without them are coded with ranges taken
            from the evaluated documents themselves.
    """
    if sts is None and beir is None:
        raise ValueError("nothing to evaluate: pass --sts FILE and/or --beir DIR")
    concat = model[0]
    combined = hasattr(concat, "specs")  # else a plain model (a distilled student): one vector, no parts
    timer = PartTimer(concat) if combined else None
    started = time.perf_counter()
    encoded: dict[str, Any] = {}
    if sts is not None:
        first, second, gold = load_sts(sts, limit)
        kwargs = {"batch_size": batch_size, "progress": progress}
        left = encode_stage(model.encode, first, f"STS pairs, first sentences ({Path(sts).name})", **kwargs)
        right = encode_stage(model.encode, second, f"STS pairs, second sentences ({Path(sts).name})", **kwargs)
        encoded["sts"] = (left, right, gold)
    if beir is not None:
        corpus, queries, qrels = load_beir(beir, max_queries=limit, max_docs=10 * limit if limit else None)
        doc_ids, query_ids = list(corpus), list(queries)
        kwargs = {"batch_size": batch_size, "progress": progress}
        docs = encode_stage(model.encode_document, [document_text(corpus[d]) for d in doc_ids], "documents", **kwargs)
        queries_ = encode_stage(model.encode_query, [queries[q] for q in query_ids], "queries", **kwargs)
        encoded["beir"] = (queries_, docs)
    total_seconds = time.perf_counter() - started
    if timer is not None:
        timer.remove()
    if has_projection(model) or not combined:  # one vector: its (Matryoshka) prefixes are the views
        dims = list(matryoshka_dims or [embedding_dimension_of(model)])
        return matryoshka_rows(
            encoded, dims, total_seconds, query_ids if beir else [], doc_ids if beir else [], qrels if beir else {},
            int8_ranges,
        )  # fmt: skip

    names = [spec.name for spec in concat.specs]
    rows = []
    for view in [*names, "concat"]:
        view_names = names if view == "concat" else [view]
        for scheme in SETTINGS:
            try:
                layouts = part_layouts(concat.specs, scheme, view_names)
            except ValueError:
                continue  # no calibration for this scheme
            row: dict[str, Any] = {"view": view, "setting": scheme or "float32"}
            if "sts" in encoded:
                left, right, gold = encoded["sts"]
                similarity = cosine_rows(_as_stored(left, layouts, scheme), _as_stored(right, layouts, scheme))
                row["sts"] = sts_score(similarity, gold, f"{view} {row['setting']}")
            if "beir" in encoded:
                q, d = encoded["beir"]
                scores = unit_rows(prepare_queries(q, layouts)) @ unit_rows(_as_stored(d, layouts, scheme)).T
                row |= {k: 100 * v for k, v in retrieval_metrics(scores, query_ids, doc_ids, qrels).items()}
            row["bytes"] = bytes_per_vector(layouts, scheme)
            row["encode_s"] = total_seconds if view == "concat" else timer.seconds[view]
            rows.append(row)
    return rows


MATRYOSHKA_SETTINGS = ("float32", "int8", "binary")
RESCORE_MULTIPLIER = 4  # binary search keeps 4 x the needed candidates for float rescoring


def stored_prefix_vectors(
    docs: np.ndarray, setting: str, ranges: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, int]:
    """Documents as a store holds and reads them back for ``setting`` (decoded vectors), and the bytes per vector.

    int8: per-dimension ranges (calibrated ``ranges``, else these documents' own min / max, as
    sentence-transformers' ``quantize_embeddings`` calibrates), 256 levels; binary: the sign
    bits, read back as +1 / -1.
    """
    if setting == "float32":
        return docs, 4 * docs.shape[1]
    if setting == "int8":
        low, high = ranges if ranges is not None else (docs.min(axis=0), docs.max(axis=0))
        return decode_dimension_codes(dimension_codes(docs, low, high), low, high), docs.shape[1]
    return np.where(docs > 0, 1.0, -1.0), (docs.shape[1] + 7) // 8


def binary_rescored(queries: np.ndarray, doc_signs: np.ndarray, depth: int) -> np.ndarray:
    """Scores of a binary search with float rescoring: Hamming-nearest ``RESCORE_MULTIPLIER * depth``
    candidates by binary query, rescored by the float query (others score -inf)."""
    hamming = np.where(queries > 0, 1.0, -1.0) @ doc_signs.T
    keep = min(doc_signs.shape[0], RESCORE_MULTIPLIER * depth)
    candidates = np.argpartition(-hamming, keep - 1, axis=1)[:, :keep]
    scores = np.full(hamming.shape, -np.inf)
    rows = np.arange(len(queries))[:, None]
    scores[rows, candidates] = (queries[:, None, :] * doc_signs[candidates]).sum(axis=-1)
    return scores


def matryoshka_rows(
    encoded: dict[str, Any],
    dims: Sequence[int],
    seconds: float,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    qrels: dict[str, dict[str, int]],
    int8_ranges: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[dict[str, Any]]:
    """Rows of a compressed model: per Matryoshka dimension, float32 / int8 / binary (float-rescored)."""
    int8_ranges = int8_ranges or {}
    rows = []
    for dim in dims:
        for setting in MATRYOSHKA_SETTINGS:
            row: dict[str, Any] = {"view": f"{dim}d", "setting": setting}
            if "sts" in encoded:
                left, right, gold = encoded["sts"]
                a, _ = stored_prefix_vectors(unit_rows(left[:, :dim]), setting, int8_ranges.get(dim))
                b, _ = stored_prefix_vectors(unit_rows(right[:, :dim]), setting, int8_ranges.get(dim))
                row["sts"] = sts_score(cosine_rows(a, b), gold, f"{dim}d {setting}")
            if "beir" in encoded:
                q, d = (unit_rows(x[:, :dim]) for x in encoded["beir"])
                stored, _ = stored_prefix_vectors(d, setting, int8_ranges.get(dim))
                scores = binary_rescored(q, stored, 100) if setting == "binary" else q @ unit_rows(stored).T
                row |= {k: 100 * v for k, v in retrieval_metrics(scores, query_ids, doc_ids, qrels).items()}
            row["bytes"] = stored_prefix_vectors(np.zeros((1, dim)), setting)[1]
            row["encode_s"] = seconds
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of :func:`evaluate_model` rows."""
    columns = [c for c in ("view", "setting", "sts", "ndcg@10", "recall@100", "bytes", "encode_s") if c in rows[0]]
    widths = {c: max(len(c), *(len(_cell(r[c])) for r in rows)) for c in columns}

    def line(cells: dict[str, str]) -> str:
        return "  ".join(
            cells[c].ljust(widths[c]) if c in ("view", "setting") else cells[c].rjust(widths[c]) for c in columns
        )

    return "\n".join([line({c: c for c in columns})] + [line({c: _cell(row[c]) for c in columns}) for row in rows])


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
