"""Fast paths: int8 dynamic quantization, token-budget batching (the exact default is tested elsewhere)."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from hub_export.runtime.batching import encode_with_token_budget, token_budget_batches

TEXTS = ["what is snowflake?", "a", "The quick brown fox jumps over the lazy dog. " * 5, "", "hello world"]


def test_int8_dynamic_stays_close_and_cannot_be_saved(built_model, loaded_model, tmp_path) -> None:
    quantized = SentenceTransformer(
        str(built_model), trust_remote_code=True, model_kwargs={"quantization": "int8-dynamic"}
    )
    assert quantized[0].quantization == "int8-dynamic"
    exact, approx = loaded_model.encode_query(TEXTS), quantized.encode_query(TEXTS)
    cosines = (exact * approx).sum(1) / np.linalg.norm(exact, axis=1) / np.linalg.norm(approx, axis=1)
    assert cosines.min() >= 0.99 and not np.array_equal(exact, approx)
    with pytest.raises(ValueError, match="cannot save a model loaded with quantization='int8-dynamic'"):
        quantized.save(str(tmp_path / "q"))


def test_unknown_runtime_quantization_lists_valid_values(built_model) -> None:
    with pytest.raises(ValueError, match=r"quantization = 'int4': expected one of \[None, 'auto', 'int8-dynamic'\]"):
        SentenceTransformer(str(built_model), trust_remote_code=True, model_kwargs={"quantization": "int4"})


def test_token_budget_batches_hand_case() -> None:
    lengths = np.array([10, 100, 30, 100, 5])
    batches = token_budget_batches(lengths, max_tokens=200, max_batch_size=3)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 0, 4]]
    assert [b.tolist() for b in token_budget_batches(lengths, max_tokens=50)] == [[1], [3], [2], [0, 4]]
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        token_budget_batches(lengths, 0)


def test_token_budget_encoding_equals_plain_encode(loaded_model) -> None:
    ours = encode_with_token_budget(loaded_model, TEXTS, max_tokens=40, prompt_name="query")
    assert np.abs(ours - loaded_model.encode_query(TEXTS)).max() <= 1e-5
    assert encode_with_token_budget(loaded_model, []).shape == (0,)
