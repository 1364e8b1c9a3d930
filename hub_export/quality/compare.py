"""``concat-embed compare``: how alike embedding models are, and what concatenating them gains.

After "Beyond Benchmarks: Evaluating Embedding Model Similarity for Retrieval Augmented
Generation Systems" (arXiv 2407.08275): linear CKA between the models' document embeddings,
top-k retrieval overlap (Jaccard@k) and the per-query rank correlation of the scores, plus each
model's nDCG@10 and that of their concatenation. Low similarity with similar quality marks a
good pair to combine.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from hub_export.data import document_text, load_beir
from hub_export.encoding import encode_stage
from hub_export.quality.evaluation import retrieval_metrics
from hub_export.vectors import unit_rows


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centered kernel alignment of two ``[n, d]`` representations of the same n items."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x, "fro") ** 2
    return float(cross / (np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro")))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best-scored documents per query (unordered)."""
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def jaccard_at_k(scores_a: np.ndarray, scores_b: np.ndarray, k: int) -> float:
    """Mean Jaccard overlap of the two models' top-k document sets per query."""
    overlaps = [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b in zip(top_k(scores_a, k), top_k(scores_b, k))]
    return float(np.mean(overlaps))


def rank_correlation(scores_a: np.ndarray, scores_b: np.ndarray) -> float:
    """Mean per-query Spearman correlation of the two models' scores over all documents."""
    return float(np.mean([spearmanr(a, b).statistic for a, b in zip(scores_a, scores_b)]))


def compare_models(
    model_paths: list[str],
    beir: str | Path,
    max_queries: int | None = None,
    max_docs: int | None = None,
    k: int = 10,
    trust_remote_code: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Encode a BEIR sample with each model and compute pairwise similarity and concatenation gains.

    Args:
        model_paths: sentence-transformers models (folders or Hub ids); a combined model's part
            subfolders qualify. Each model uses its own saved query/document prompts.
        beir: BEIR folder.
        max_queries, max_docs: Subsample sizes (see :func:`hub_export.quality.evaluation.load_beir`).
        k: Depth of the retrieval overlap.
        trust_remote_code: Passed to ``SentenceTransformer``.
        progress: Show a progress bar per encoded set.

    Returns:
        ``{"models", "ndcg@10", "concat ndcg@10", "pairs": [...], "cka" and "jaccard" matrices}``.
    """
    from hub_export.folder import load_model

    if len(model_paths) < 2:
        raise ValueError(f"compare needs at least 2 models, got {len(model_paths)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k = {k!r}: expected a positive integer (the retrieval depth)")
    corpus, queries, qrels = load_beir(beir, max_queries=max_queries, max_docs=max_docs)
    doc_ids, query_ids = list(corpus), list(queries)
    docs, scores, ndcg = [], [], []
    for path in model_paths:
        model = load_model(path, trust_remote_code=trust_remote_code, device="cpu")
        name = Path(path).name
        texts = [document_text(corpus[i]) for i in doc_ids]
        d = unit_rows(encode_stage(model.encode_document, texts, f"{name}: documents", progress))
        q = unit_rows(encode_stage(model.encode_query, [queries[i] for i in query_ids], f"{name}: queries", progress))
        docs.append(d)
        scores.append(q @ d.T)
        ndcg.append(100 * retrieval_metrics(scores[-1], query_ids, doc_ids, qrels)["ndcg@10"])
    concat_scores = np.mean(scores, axis=0)  # cosine of concatenated unit vectors = mean of cosines
    concat_ndcg = 100 * retrieval_metrics(concat_scores, query_ids, doc_ids, qrels)["ndcg@10"]
    n = len(model_paths)
    cka, jaccard = np.eye(n), np.eye(n)
    pairs = []
    for i, j in combinations(range(n), 2):
        cka[i, j] = cka[j, i] = linear_cka(docs[i], docs[j])
        jaccard[i, j] = jaccard[j, i] = jaccard_at_k(scores[i], scores[j], k)
        pair_ndcg = 100 * retrieval_metrics((scores[i] + scores[j]) / 2, query_ids, doc_ids, qrels)["ndcg@10"]
        pairs.append(
            {
                "a": model_paths[i],
                "b": model_paths[j],
                "cka": cka[i, j],
                f"jaccard@{k}": jaccard[i, j],
                "spearman": rank_correlation(scores[i], scores[j]),
                "concat ndcg@10": pair_ndcg,
                "gain over a": pair_ndcg - ndcg[i],
                "gain over b": pair_ndcg - ndcg[j],
            }
        )
    return {
        "models": model_paths,
        "ndcg@10": ndcg,
        "concat ndcg@10": concat_ndcg,
        "k": k,
        "pairs": pairs,
        "cka": cka.tolist(),
        "jaccard": jaccard.tolist(),
        "queries": len(query_ids),
        "documents": len(doc_ids),
    }


def format_comparison(result: dict[str, Any]) -> str:
    """The text report of :func:`compare_models`."""
    lines = [f"{result['queries']} queries x {result['documents']} documents"]
    for path, score in zip(result["models"], result["ndcg@10"]):
        lines.append(f"nDCG@10 {score:6.2f}  {path}")
    lines.append(f"nDCG@10 {result['concat ndcg@10']:6.2f}  concatenation of all")
    k = result["k"]
    lines.append(f"{'a':<28} {'b':<28} {'CKA':>6} {f'J@{k}':>6} {'rho':>6} {'concat':>7} {'+a':>6} {'+b':>6}")
    for p in result["pairs"]:
        lines.append(
            f"{Path(p['a']).name[:28]:<28} {Path(p['b']).name[:28]:<28} {p['cka']:6.3f} {p[f'jaccard@{k}']:6.3f} "
            f"{p['spearman']:6.3f} {p['concat ndcg@10']:7.2f} {p['gain over a']:+6.2f} {p['gain over b']:+6.2f}"
        )
    return "\n".join(lines)


def write_heatmap(result: dict[str, Any], path: str | Path) -> Path:
    """A PNG with the pairwise CKA and Jaccard@k matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [Path(m).name for m in result["models"]]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(labels), 2.5 + 0.8 * len(labels)))
    for ax, key, title in ((axes[0], "cka", "linear CKA"), (axes[1], "jaccard", f"Jaccard@{result['k']}")):
        matrix = np.array(result[key])
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
