"""Retrieval metrics by hand, and `calibrate` + `eval` end to end (in-process CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hub_export.cli import main
from hub_export.quality.evaluation import format_table, retrieval_metrics, sts_score
from tests.constants import DATA


def test_sts_score_by_hand_and_undefined_spearman_is_none_not_nan(caplog) -> None:
    gold = np.array([1.0, 2.0, 3.0, 4.0])
    assert sts_score(np.array([0.1, 0.4, 0.2, 0.9]), gold, "x") == pytest.approx(100 * (1 - 6 * 2 / (4 * 15)))
    for broken in (np.full(4, 0.5), np.array([0.1, np.nan, 0.2, 0.3])):  # equal codes at a tiny size; a NaN vector
        assert sts_score(broken, gold, "48d binary") is None
    assert caplog.messages[-1] == (
        "48d binary: STS Spearman is undefined (constant or non-finite similarities); reported as n/a"
    )
    row = {"view": "48d", "setting": "binary", "sts": None, "bytes": 6}
    assert format_table([row]).splitlines()[1].split() == ["48d", "binary", "n/a", "6"]
    assert json.loads(json.dumps([row]))[0]["sts"] is None  # --json stays valid JSON (no NaN)


def test_hand_checked_metrics() -> None:
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.7]])
    qrels = {"q1": {"d2": 1}, "q2": {"d3": 1}}
    metrics = retrieval_metrics(scores, ["q1", "q2"], ["d1", "d2", "d3"], qrels)
    assert metrics["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1) / 2)
    assert metrics["recall@100"] == pytest.approx(1.0)


def test_calibrate_then_eval_rows_per_part_and_setting(model_copy, tmp_path, capsys) -> None:
    folder = model_copy
    assert main(["calibrate", str(folder), "--corpus", str(DATA / "scifact" / "corpus.jsonl.gz"), "--limit", "50"]) == 0
    calibrated = capsys.readouterr().out
    assert "alpha" in calibrated and "int4" in calibrated
    code = main(
        ["eval", str(folder), "--sts", str(DATA / "stsb" / "test.tsv.gz"), "--beir", str(DATA / "scifact"),
         "--limit", "10", "--json", str(tmp_path / "eval.json")]
    )  # fmt: skip
    assert code == 0
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert [(r["view"], r["setting"]) for r in rows[:3]] == [("alpha", "float32"), ("alpha", "int8"), ("alpha", "int4")]
    assert {r["view"] for r in rows} == {"alpha", "beta", "gamma", "concat"} and len(rows) == 12
    concat_bytes = {r["setting"]: r["bytes"] for r in rows if r["view"] == "concat"}
    assert concat_bytes == {"float32": 4 * 96, "int8": 96, "int4": 16 + 8 + 24}
    assert all(0 <= r[m] <= 100 for r in rows for m in ("ndcg@10", "recall@100"))
    assert "ndcg@10" in capsys.readouterr().out


def test_matryoshka_int8_codes_use_calibrated_ranges_and_clip() -> None:
    from hub_export.quality.evaluation import stored_prefix_vectors

    docs = np.random.default_rng(0).normal(scale=0.2, size=(50, 8))
    low, high = np.full(8, -0.1), np.full(8, 0.1)
    stored, size = stored_prefix_vectors(docs, "int8", (low, high))
    assert size == 8 and stored.min() >= -0.1 - 1e-9 and stored.max() <= 0.1 + 1e-9
    inside = np.abs(docs) <= 0.1
    assert np.abs(stored - docs)[inside].max() <= 0.2 / 255 / 2 + 1e-9
    own, _ = stored_prefix_vectors(docs, "int8")  # no calibration: the documents' own min / max
    assert np.abs(own - docs).max() <= (docs.max(axis=0) - docs.min(axis=0)).max() / 255 / 2 + 1e-9


def test_progress_bars_name_their_stage_and_no_future_warnings(built_model, capsys) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # e.g. get_sentence_embedding_dimension's rename in ST 6.3
        code = main(["eval", str(built_model), "--sts", str(DATA / "stsb" / "test.tsv.gz"), "--limit", "20",
                     "--beir", str(DATA / "scifact")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "Batches" not in err
    for stage in (
        "STS pairs, first sentences (test.tsv.gz)",
        "STS pairs, second sentences (test.tsv.gz)",
        "documents",
        "queries",
    ):
        assert f"{stage}: 100%" in err, stage
