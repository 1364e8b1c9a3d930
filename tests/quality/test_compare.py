"""Model similarity measures by hand, and `compare` end to end (in-process CLI)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from hub_export.cli import main
from hub_export.quality.compare import jaccard_at_k, linear_cka, rank_correlation
from tests.constants import DATA

RNG = np.random.default_rng(0)


def test_hand_checked_similarity_measures() -> None:
    x = RNG.normal(size=(50, 6))
    rotation, _ = np.linalg.qr(RNG.normal(size=(6, 6)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ rotation) == pytest.approx(1.0)
    assert linear_cka(x, RNG.normal(size=(50, 6))) < 0.5
    a = np.array([[5.0, 4, 3, 2, 1]])
    b = np.array([[5.0, 1, 4, 3, 2]])
    assert jaccard_at_k(a, b, 2) == pytest.approx(1 / 3)  # {0,1} vs {0,2}
    assert rank_correlation(a, a) == pytest.approx(1.0)


def test_compare_writes_pairs_cka_and_a_heat_map(built_model, tmp_path) -> None:
    code = main(
        ["compare", *(str(built_model / p) for p in ("alpha", "beta", "gamma")),
         "--beir", str(DATA / "scifact"), "--max-queries", "10", "--max-docs", "60",
         "--png", str(tmp_path / "h.png"), "--json", str(tmp_path / "c.json")]
    )  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert len(result["pairs"]) == 3 and np.allclose(np.diag(result["cka"]), 1.0)
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FakeModel:
    """Stands in for SentenceTransformer: unit vectors from a shared signal per text plus noise of its own, so
    the models agree in part and rankings are not float noise (the tiny test parts' cosines differ by 1e-7)."""

    DIM = 16

    def __init__(self, path: str, **kwargs) -> None:
        self.own = {"m0": 0.5, "m1": 1.0, "m2": 2.0}[path]
        self.seed = int(path[1:])

    def vector(self, text: str) -> np.ndarray:
        shared = np.random.default_rng(zlib.crc32(text.encode())).normal(size=self.DIM)
        noise = np.random.default_rng([zlib.crc32(text.encode()), self.seed]).normal(size=self.DIM)
        return (shared + self.own * noise).astype(np.float32)

    def encode_document(self, texts: list[str], **kwargs) -> np.ndarray:
        return np.stack([self.vector(text) for text in texts])

    def encode_query(self, texts: list[str], **kwargs) -> np.ndarray:
        return np.stack([self.vector(" ".join(text.split()[:3])) for text in texts])  # queries share a prefix signal


def test_compare_reports_what_its_measures_define(monkeypatch) -> None:
    import sentence_transformers

    from hub_export.quality.compare import compare_models

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", FakeModel)
    result = compare_models(["m0", "m1", "m2"], DATA / "scifact", max_queries=10, max_docs=60, k=10)
    expected = independent_comparison(["m0", "m1", "m2"], 10, 60)
    assert np.allclose(result["ndcg@10"], expected["ndcg"], atol=1e-6)
    assert result["concat ndcg@10"] == pytest.approx(expected["concat"], abs=1e-6)
    assert len(result["pairs"]) == 3
    for pair in result["pairs"]:
        i, j = int(pair["a"][1:]), int(pair["b"][1:])
        assert pair["cka"] == pytest.approx(expected["cka"][i, j], abs=1e-6)
        assert pair["jaccard@10"] == pytest.approx(expected["jaccard"][i, j], abs=1e-9)
        assert pair["spearman"] == pytest.approx(expected["spearman"][i, j], abs=1e-6)
        assert pair["concat ndcg@10"] == pytest.approx(expected["pair"][i, j], abs=1e-6)
        assert pair["gain over a"] == pytest.approx(expected["pair"][i, j] - expected["ndcg"][i], abs=1e-6)
        assert pair["gain over b"] == pytest.approx(expected["pair"][i, j] - expected["ndcg"][j], abs=1e-6)
    assert 0 < min(expected["jaccard"][0, 1], expected["cka"][1, 2]) and max(expected["ndcg"]) > 0  # not all zero


def ndcg_at_10(scores: np.ndarray, relevant: list[set[int]], doc_ids: list[str]) -> float:
    """Mean binary nDCG@10 from the definition (no pytrec_eval); ties go as trec_eval breaks them (higher id first)."""
    values = []
    for row, rel in zip(scores, relevant):
        ranked = sorted(range(len(row)), key=lambda d: (-float(row[d]), [-ord(c) for c in doc_ids[d]]))[:10]
        dcg = sum(1 / np.log2(rank + 2) for rank, doc in enumerate(ranked) if doc in rel)
        ideal = sum(1 / np.log2(rank + 2) for rank in range(min(len(rel), 10)))
        values.append(dcg / ideal)
    return 100 * float(np.mean(values))


def independent_comparison(names: list[str], max_queries: int, max_docs: int) -> dict:
    """What compare reports, from the definitions of the measures, in float64."""
    from scipy.stats import spearmanr

    from hub_export.data import document_text, load_beir

    corpus, queries, qrels = load_beir(DATA / "scifact", max_queries=max_queries, max_docs=max_docs)
    doc_ids, query_ids = list(corpus), list(queries)
    relevant = [{doc_ids.index(d) for d in qrels[q] if d in corpus} for q in query_ids]
    docs, scores = [], []
    for name in names:
        model = FakeModel(name)
        d = model.encode_document([document_text(corpus[i]) for i in doc_ids]).astype(np.float64)
        q = model.encode_query([queries[i] for i in query_ids]).astype(np.float64)
        d, q = d / np.linalg.norm(d, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
        docs.append(d)
        scores.append(q @ d.T)
    n = len(names)
    centering = np.eye(len(doc_ids)) - 1 / len(doc_ids)
    cka, jaccard, spearman, pair = (np.zeros((n, n)) for _ in range(4))
    for i in range(n):
        for j in range(n):
            k_i, k_j = centering @ docs[i] @ docs[i].T @ centering, centering @ docs[j] @ docs[j].T @ centering
            cka[i, j] = np.sum(k_i * k_j) / np.sqrt(np.sum(k_i * k_i) * np.sum(k_j * k_j))  # HSIC form
            tops = [[set(np.argsort(-row)[:10]) for row in s] for s in (scores[i], scores[j])]
            jaccard[i, j] = np.mean([len(a & b) / len(a | b) for a, b in zip(*tops)])
            spearman[i, j] = np.mean([spearmanr(a, b).statistic for a, b in zip(scores[i], scores[j])])
            pair[i, j] = ndcg_at_10((scores[i] + scores[j]) / 2, relevant, doc_ids)
    return {
        "ndcg": [ndcg_at_10(s, relevant, doc_ids) for s in scores],
        "concat": ndcg_at_10(np.mean(scores, axis=0), relevant, doc_ids),
        "cka": cka,
        "jaccard": jaccard,
        "spearman": spearman,
        "pair": pair,
    }
