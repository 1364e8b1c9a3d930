"""Model similarity measures by hand, and `compare` end to end (in-process CLI)."""

from __future__ import annotations

import json

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
