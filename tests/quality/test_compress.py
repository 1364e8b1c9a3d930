"""``compress``: a Matryoshka projection after the concatenation that loads and verifies like any model."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer

from hub_export.folder import model_files
from hub_export.quality import compress
from hub_export.quality.compress import CompressOptions, compress_model, fit_pca, train_projection
from tests.tiny_models import WORDS, built_model_reference

TEXTS = ["what is snowflake?", "The quick brown fox jumps over the lazy dog.", "é ü 日本 text", ""]
DIMS = [48, 24, 12]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    words = [w for w in WORDS if w.isalpha()]
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 12))) for _ in range(120)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def compressed(built_model, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compressed") / "model"
    compress_model(built_model, out, CompressOptions(str(corpus), DIMS, method="pca"), progress=False)
    return out


def test_compressed_model_equals_parts_concatenated_and_projected(compressed, tiny_parts) -> None:
    model = SentenceTransformer(str(compressed), trust_remote_code=True)
    tensors = load_file(str(compressed / "1_Dense" / "model.safetensors"))
    weight, bias = tensors["linear.weight"].astype(np.float64), tensors["linear.bias"].astype(np.float64)
    for method, query in (("encode_query", True), ("encode_document", False)):
        projected = built_model_reference(tiny_parts, TEXTS, query).numpy() @ weight.T + bias
        expected = projected / np.linalg.norm(projected, axis=1, keepdims=True)
        ours = getattr(model, method)(TEXTS)
        assert ours.shape == (4, 48)
        assert np.abs(ours - expected).max() <= 1e-5
    short = SentenceTransformer(str(compressed), trust_remote_code=True, truncate_dim=12).encode_query(TEXTS)
    assert np.abs(short - model.encode_query(TEXTS)[:, :12]).max() <= 1e-6


def test_pca_is_orthonormal_and_ordered_by_variance() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 20)) * np.linspace(3, 0.1, 20)
    weight, bias = fit_pca(x, 8)
    assert np.abs(weight @ weight.T - np.eye(8)).max() <= 1e-5
    variances = ((x @ weight.T.astype(np.float64) + bias) ** 2).mean(axis=0)
    assert np.all(np.diff(variances) < 0) and abs(((x - x.mean(0)) @ weight.T + 0).mean()) < 1e-5


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def similarity_loss(docs: np.ndarray, weight: np.ndarray, bias: np.ndarray, dims: list[int]) -> float:
    """Mean squared error of all document-document cosines, summed over dims (numpy, float64)."""
    target = unit(docs) @ unit(docs).T
    return sum(float(((unit((docs @ weight.T + bias)[:, :k]) @ unit((docs @ weight.T + bias)[:, :k]).T - target) ** 2)
                     .mean()) for k in dims)  # fmt: skip


def ranking_loss(
    anchors: np.ndarray, docs: np.ndarray, weight: np.ndarray, bias: np.ndarray, dims: list[int], tau: float = 0.05
) -> float:
    """KL(full || projected) of each query anchor's softmax over all documents, summed over dims (numpy)."""

    def log_softmax(s: np.ndarray) -> np.ndarray:
        s = s / tau
        return s - s.max(axis=1, keepdims=True) - np.log(np.exp(s - s.max(axis=1, keepdims=True)).sum(1, keepdims=True))

    teacher = log_softmax(unit(anchors) @ unit(docs).T)
    total = 0.0
    for k in dims:
        student = log_softmax(unit((anchors @ weight.T + bias)[:, :k]) @ unit((docs @ weight.T + bias)[:, :k]).T)
        total += float((np.exp(teacher) * (teacher - student)).sum(axis=1).mean())
    return total


def test_training_lowers_both_distillation_losses_from_pca(built_model, corpus) -> None:
    model = SentenceTransformer(str(built_model), trust_remote_code=True)
    texts = corpus.read_text().splitlines()
    docs, queries = model.encode_document(texts), model.encode_query([t.split()[0] for t in texts[:60]])
    weight, bias = fit_pca(docs, 24)
    trained_w, trained_b = train_projection(
        docs, weight, bias, [24, 12, 6], queries=queries, epochs=30, batch_size=64, progress=False
    )
    before = similarity_loss(docs, weight, bias, [24, 12, 6]), ranking_loss(queries, docs, weight, bias, [24, 12, 6])
    after = (
        similarity_loss(docs, trained_w, trained_b, [24, 12, 6]),
        ranking_loss(queries, docs, trained_w, trained_b, [24, 12, 6]),
    )
    assert after[0] < 0.9 * before[0] and after[1] < 0.9 * before[1], (before, after)


def test_sampled_candidates_still_lower_the_loss(built_model, corpus) -> None:
    model = SentenceTransformer(str(built_model), trust_remote_code=True)
    docs = model.encode_document(corpus.read_text().splitlines())
    weight, bias = fit_pca(docs, 24)
    sampled = train_projection(
        docs, weight, bias, [24, 12], epochs=20, batch_size=64, max_candidates=64, progress=False
    )
    before, after = similarity_loss(docs, weight, bias, [24, 12]), similarity_loss(docs, *sampled, [24, 12])
    assert after < 0.9 * before and np.isfinite(sampled[0]).all(), (before, after)


def test_orthogonality_penalty_keeps_the_rows_orthonormal(built_model, corpus) -> None:
    model = SentenceTransformer(str(built_model), trust_remote_code=True)
    docs = model.encode_document(corpus.read_text().splitlines())
    weight, bias = fit_pca(docs, 24)
    kept, free = (
        train_projection(docs, weight, bias, [24, 12], epochs=20, batch_size=64, orthogonality=o, progress=False)[0]
        for o in (1.0, 0.0)
    )
    drift = [float(np.abs(w.astype(np.float64) @ w.T - np.eye(24)).max()) for w in (kept, free)]
    assert drift[0] < 0.6 * drift[1], drift


WORDS_ONLY = [w for w in WORDS if w.isalpha()]  # no sentence ends inside a word


def two_sentence_corpus(path: Path) -> Path:
    """80 documents of two sentences (8 and 7 words); every fourth has no title."""
    words, n = WORDS_ONLY, len(WORDS_ONLY)
    records = [{"_id": str(i), "title": f"{words[i % n]} {words[(i + 3) % n]}" if i % 4 else "",
                "text": " ".join(words[(i + j) % n] for j in range(8)) + ". "
                        + " ".join(words[(i + j) % n] for j in range(9, 16))} for i in range(80)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_corpus_sentences_or_titles_become_pseudo_queries_and_are_recorded(
    built_model, tmp_path, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(compress, "TRAINING_DRAWS", 1_200)  # the default's formula, at a test's size
    corpus = two_sentence_corpus(tmp_path / "corpus.jsonl")
    options = CompressOptions(str(corpus), [24, 12], limit=40)
    record = compress_model(built_model, tmp_path / "default", options, progress=False)
    # every sentence: two of 8 and 7 words per document; unset epochs: about TRAINING_DRAWS anchors (40 + 80 a pass)
    assert record["pseudo_queries"] == {"source": "sentences", "texts": 80, "per_document": None}
    assert record["epochs"] == round(1_200 / 120)
    assert "trained with 80 corpus sentences as pseudo queries" in (tmp_path / "default" / "README.md").read_text()
    options = CompressOptions(str(corpus), [24, 12], epochs=2, limit=40, sentences_per_doc=1)
    record = compress_model(built_model, tmp_path / "one", options, progress=False)
    assert record["pseudo_queries"] == {"source": "sentences", "texts": 40, "per_document": 1}
    assert record["epochs"] == 2
    options = CompressOptions(str(corpus), [24, 12], epochs=2, limit=40, pseudo_queries="titles")
    record = compress_model(built_model, tmp_path / "titled", options, progress=False)
    assert record["pseudo_queries"] == {"source": "titles", "texts": 30, "per_document": None}  # every 4th untitled
    card = (tmp_path / "titled" / "README.md").read_text()
    assert "trained with 30 corpus titles as pseudo queries" in card
    options = CompressOptions(str(corpus), [24, 12], epochs=2, pseudo_queries="none")
    assert compress_model(built_model, tmp_path / "plain", options, progress=False)["pseudo_queries"] == {
        "source": "none",
        "texts": 0,
        "per_document": None,
    }
    short = tmp_path / "short.txt"  # no sentence of six words: documents only, and the log says so
    words, n = WORDS_ONLY, len(WORDS_ONLY)
    short.write_text("".join(f"{words[i % n]} {words[(i + 1) % n]} {words[(i + 2) % n]}\n" for i in range(30)))
    with caplog.at_level(logging.WARNING, logger="hub_export.quality.compress"):
        record = compress_model(built_model, tmp_path / "short", CompressOptions(str(short), [24], epochs=1), False)
    assert record["pseudo_queries"] == {"source": "sentences", "texts": 0, "per_document": None}
    assert f"{short}: no sentences to use as pseudo queries; training on documents only" in caplog.messages
    with pytest.raises(ValueError, match=r"unknown pseudo_queries 'queries'; valid: \['sentences', 'titles', 'none'\]"):
        compress_model(built_model, tmp_path / "bad", CompressOptions(str(corpus), [24], pseudo_queries="queries"))
    assert not (tmp_path / "bad").exists()


def test_cli_passes_sentences_per_doc_and_epochs(built_model, tmp_path, capsys, monkeypatch) -> None:
    from hub_export.cli import main

    monkeypatch.setattr(compress, "TRAINING_DRAWS", 2_400)
    corpus = two_sentence_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "cli"
    argv = ["compress", str(built_model), "--corpus", str(corpus), "--out", str(out), "--dims", "24,12",
            "--sentences-per-doc", "1", "--epochs", "3", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "compression.json").read_text())
    assert record["pseudo_queries"] == {"source": "sentences", "texts": 80, "per_document": 1}
    assert record["epochs"] == 3 and record["dims"] == [24, 12]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out)
    assert [line.split()[0] for line in lines[1:]] == ["24", "12"]
    assert main(argv[:-5] + ["--sentences-per-doc", "0", "--no-progress"]) == 0  # 0: every sentence, again
    record = json.loads((out / "compression.json").read_text())
    assert record["pseudo_queries"]["texts"] == 160 and record["epochs"] == round(2_400 / 240)


def test_compressed_folder_verifies_publishes_and_documents_itself(compressed) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hub_export", "verify", str(compressed)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compressed" in done.stdout and "PASSED" in done.stdout
    files = model_files(compressed)
    assert {"compression.json", "1_Dense/config.json", "1_Dense/model.safetensors", "verification.json"} <= set(files)
    assert "config.json" not in files  # no AutoModel route: it would skip the projection
    record = json.loads((compressed / "compression.json").read_text())
    assert (record["method"], record["dims"], record["source_dimension"]) == ("pca", DIMS, 96)
    assert record["corpus"]["name"] == "corpus.txt" and record["corpus"]["texts"] == 120
    kept = [record["neighbours_kept_at_10"][str(k)] for k in DIMS]
    assert all(0.1 <= value <= 1.0 for value in kept) and kept == sorted(kept, reverse=True)
    card = (compressed / "README.md").read_text()
    assert "## Compression" in card and "**48 dimensions**" in card and "truncate_dim" in card
    assert f"| {DIMS[0]} | {100 * kept[0]:.1f}% |" in card and "the share it keeps among its 10 nearest" in card


def test_server_accepts_the_recorded_matryoshka_dims(compressed) -> None:
    from hub_export.serve.app import load_embedder
    from hub_export.serve.requests import ServerError

    embedder = load_embedder(str(compressed))
    assert embedder.matryoshka_dims == DIMS
    assert embedder.check_dimensions(24) == 24
    with pytest.raises(ServerError, match=r"dimensions = 30: this model supports \[48, 24, 12\]"):
        embedder.check_dimensions(30)


def test_eval_of_a_compressed_model_has_rows_per_dimension_and_storage(compressed, tmp_path) -> None:
    from hub_export.quality.evaluation import evaluate_model, retrieval_metrics

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": "", "text": f"{w} snow flake {w} dog"} for i, w in enumerate(WORDS[:30])]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": f"q{i}", "text": f"{WORDS[i]} snow"} for i in range(6)]
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6))
    )
    model = SentenceTransformer(str(compressed), trust_remote_code=True)
    rows = evaluate_model(model, beir=beir, matryoshka_dims=DIMS)
    assert [(r["view"], r["setting"], r["bytes"]) for r in rows[:3]] == [
        ("48d", "float32", 192),
        ("48d", "int8", 48),
        ("48d", "binary", 6),
    ]
    assert [r["view"] for r in rows[::3]] == ["48d", "24d", "12d"]
    q = model.encode_query([q["text"] for q in queries])[:, :24]
    d = model.encode_document([d["text"] for d in docs])[:, :24]
    q, d = q / np.linalg.norm(q, axis=1, keepdims=True), d / np.linalg.norm(d, axis=1, keepdims=True)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(6)}
    direct = retrieval_metrics(q @ d.T, [f"q{i}" for i in range(6)], [f"d{i}" for i in range(30)], qrels)
    assert abs(rows[3]["ndcg@10"] - 100 * direct["ndcg@10"]) <= 1e-6


def test_calibrate_stores_whole_vector_ranges_per_matryoshka_dim(compressed, corpus, tmp_path) -> None:
    import shutil

    from hub_export.data import read_corpus_texts
    from hub_export.folder import int8_ranges
    from hub_export.quality.calibrate import calibrate_folder
    from hub_export.quality.codes import decode_dimension_codes
    from hub_export.runtime.embed import EmbedJob, run_embed

    folder = Path(shutil.copytree(compressed, tmp_path / "model"))
    with pytest.raises(ValueError, match="is compressed: dims do not apply"):
        calibrate_folder(folder, corpus, dims={"alpha": 4})
    records = tmp_path / "docs.jsonl"
    records.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[:3])))
    job = EmbedJob(str(folder), str(records), str(tmp_path / "refused"), dtype="int8", quantization=None)
    with pytest.raises(ValueError, match="is compressed and has no int8 ranges: run `concat-embed calibrate`"):
        run_embed(job, progress=False)
    summary = calibrate_folder(folder, corpus, limit=None)
    assert list(summary) == ["48d", "24d", "12d"] and summary["24d"]["int8"]["dims"] == 24
    model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    sample = model.encode_document(read_corpus_texts(corpus))
    cut = sample[:, :24] / np.linalg.norm(sample[:, :24], axis=1, keepdims=True)
    low, high = int8_ranges(folder, 24)
    assert np.allclose(low, np.quantile(cut, 1e-4, axis=0), atol=1e-6)
    assert np.allclose(high, np.quantile(cut, 1 - 1e-4, axis=0), atol=1e-6)
    assert json.loads((folder / "compression.json").read_text())["int8_ranges"]["texts"] == len(sample)
    run_embed(
        EmbedJob(str(folder), str(records), str(tmp_path / "int8"), dtype="int8", quantization=None), progress=False
    )
    import pyarrow.parquet as pq

    table = pq.read_table(next((tmp_path / "int8").glob("shard-*.parquet")))
    codes = np.array(table.column("vector").to_pylist(), dtype=np.int8)
    floats = model.encode_document(TEXTS[:3])
    full_low, full_high = int8_ranges(folder, 48)
    step = (full_high - full_low) / 255
    inside = (floats >= full_low) & (floats <= full_high)
    assert codes.shape == (3, 48)
    assert (np.abs(decode_dimension_codes(codes, full_low, full_high) - floats)[inside] <= step.max() / 2 + 1e-6).all()
    record = json.loads((folder / "compression.json").read_text())
    record["int8_ranges"]["24"]["low"][0] = float("nan")
    (folder / "compression.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"int8_ranges\[24\] must hold 24 finite low <= high values"):
        int8_ranges(folder, 24)


def test_diverged_training_is_refused_and_writes_nothing(built_model, corpus, tmp_path, monkeypatch) -> None:
    import hub_export.quality.compress as compress

    monkeypatch.setattr(compress, "train_projection", lambda docs, w, b, *a, **k: (w * np.nan, b))
    with pytest.raises(ValueError, match=r"corpus.txt: training diverged \(non-finite weights\); use the pca method"):
        compress_model(built_model, tmp_path / "out", CompressOptions(str(corpus), [24], epochs=1), progress=False)
    assert not (tmp_path / "out").exists()


def test_neighbours_kept_by_hand() -> None:
    from hub_export.quality.compress import neighbours_kept

    points = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.4], [0.0, 1.0, 0.0], [0.1, 0.9, -0.4], [0.0, 0.0, 1.0]])
    identity = neighbours_kept(points, np.eye(3), np.zeros(3), [3], np.arange(5), k=1)
    assert identity == {"3": 1.0}
    # keeping only the first coordinate: point 1's nearest is point 0 in both; point 4 (all zero) loses its own
    first = neighbours_kept(points, np.eye(3)[:1], np.zeros(1), [1], np.array([1]), k=1)
    assert first == {"1": 1.0}
    mixed = neighbours_kept(points, np.eye(3)[[2]], np.zeros(1), [1], np.array([0, 2]), k=1)
    assert 0.0 <= mixed["1"] < 1.0


def test_a_corpus_too_small_or_all_alike_is_refused_before_the_model_loads(built_model, tmp_path, monkeypatch) -> None:
    from hub_export import folder
    from hub_export.quality import compress

    monkeypatch.setattr(compress, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    small = tmp_path / "small.txt"
    small.write_text("\n".join(f"text number {i}" for i in range(10)))
    with pytest.raises(ValueError, match=r"small.txt: 10 texts are fewer than the largest dimension 48"):
        compress_model(built_model, tmp_path / "out", CompressOptions(str(small), [48]), progress=False)
    same = tmp_path / "same.jsonl"
    same.write_text('{"text": "the same text"}\n' * 400)
    with pytest.raises(ValueError, match=r"same.jsonl: 400 texts but only 1 different ones, fewer than the largest"):
        compress_model(built_model, tmp_path / "out", CompressOptions(str(same), [48]), progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n' * 400)
    with pytest.raises(ValueError, match=r"400 texts but only 1 different ones"):
        compress_model(built_model, tmp_path / "out", CompressOptions(str(empty), [48]), progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    with pytest.raises(ValueError, match=r"refusing to write a non-finite number"):
        folder.write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()


def test_vectors_that_barely_differ_are_refused(built_model, tmp_path, monkeypatch) -> None:
    from hub_export.quality import compress

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"text number {i}" for i in range(60)))
    monkeypatch.setattr(compress, "encode_stage", lambda encode, texts, *a, **k: np.ones((len(texts), 96)) / 96**0.5)
    with pytest.raises(ValueError, match=r"corpus.txt: the model's vectors of these 60 texts barely differ"):
        compress_model(built_model, tmp_path / "out", CompressOptions(str(corpus), [24]), progress=False)
    assert not (tmp_path / "out").exists()
