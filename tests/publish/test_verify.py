"""``verify``: a model whose outputs are NaN or inf never passes, whatever the reference gives."""

from __future__ import annotations

import json
import re

import torch
from safetensors.torch import load_file, save_file

from hub_export.cli import main
from hub_export.publish.verify import NON_FINITE, max_abs_diff, within


def test_non_finite_differences_never_pass() -> None:
    import numpy as np

    ours, expected = np.zeros((2, 3)), np.zeros((2, 3))
    assert max_abs_diff(ours, expected) == 0.0 and within(0.0, 1e-5)
    ours[0, 1] = np.nan
    assert max_abs_diff(ours, expected) == NON_FINITE and not within(NON_FINITE, 1e-5)
    assert max_abs_diff(expected, np.full((2, 3), np.inf)) == NON_FINITE
    assert not within(float("nan"), 1e-5) and not within(float("inf"), 1e-5) and within(1e-6, 1e-5)


def test_verify_fails_a_part_with_nan_weights(model_copy, tmp_path, capsys) -> None:
    folder = model_copy
    weights = load_file(folder / "alpha" / "model.safetensors")
    name = next(key for key in weights if "word_embeddings" in key)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, folder / "alpha" / "model.safetensors")
    assert main(["verify", str(folder)]) == 1  # the CLI in this process; verify itself runs a fresh child
    out = capsys.readouterr().out
    assert "FAILED" in out and re.search(rf"^alpha\s+{NON_FINITE}\s+FAIL$", out, re.MULTILINE)
    record = json.loads((folder / "verification.json").read_text())
    assert record["passed"] is False and record["max_abs_diff"]["concat"] == NON_FINITE
    assert "non-finite" in (folder / "README.md").read_text()
