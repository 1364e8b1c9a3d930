"""sentence-transformers 5.x + LangChain (langchain-huggingface pins huggingface-hub<2, so ST<6).

Runs in the second CI environment (``.venv-compat``). ``CONCAT_EMBED_ST6_MODEL`` may name a folder
built under sentence-transformers 6 so that cross-version loading is checked too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import sentence_transformers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub_export.publish.build import PartOptions, build_model  # noqa: E402
from tests.tiny_models import make_tiny_bert, reference_part  # noqa: E402

QUERY = "Represent this sentence for searching relevant passages: "
TEXTS = ["what is snowflake?", "Snowflake is a cloud data platform.", ""]


def test_running_on_sentence_transformers_5() -> None:
    assert sentence_transformers.__version__.startswith("5.")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("st5")
    a, b = make_tiny_bert(root / "a", 32, "a", 1), make_tiny_bert(root / "b", 40, "b", 3)
    parts = [PartOptions("a", str(a)), PartOptions("b", str(b), pooling="mean", prompts={"query": "find: "})]
    return build_model(parts, root / "model", prompts={"query": QUERY}), a, b


def expected(a: Path, b: Path, query: bool) -> torch.Tensor:
    return torch.cat(
        [
            reference_part(a, TEXTS, "cls", QUERY if query else ""),
            reference_part(b, TEXTS, "mean", "find: " if query else ""),
        ],
        dim=-1,
    )


def test_load_encode_with_prompts_save_reload(model_dir, tmp_path) -> None:
    from sentence_transformers import SentenceTransformer

    folder, a, b = model_dir
    model = SentenceTransformer(str(folder), trust_remote_code=True)
    for encoded in (model.encode_query(TEXTS), model.encode(TEXTS, prompt_name="query")):
        assert np.abs(encoded - expected(a, b, True).numpy()).max() <= 1e-5
    assert np.abs(model.encode_document(TEXTS) - expected(a, b, False).numpy()).max() <= 1e-5
    model.save(str(tmp_path / "saved"))
    again = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True)
    # <= 1e-6, not bitwise: torch's thread count follows the machine's load (CpuShare), and sums
    # split over other thread counts round differently (1.5e-8 measured beside a busy job)
    assert np.abs(again.encode_query(TEXTS) - model.encode_query(TEXTS)).max() <= 1e-6


def test_langchain_matches_encode_query_and_document(model_dir) -> None:
    from langchain_huggingface import HuggingFaceEmbeddings
    from sentence_transformers import SentenceTransformer

    folder, _, _ = model_dir
    embeddings = HuggingFaceEmbeddings(
        model_name=str(folder),
        model_kwargs={"trust_remote_code": True},
        encode_kwargs={"prompt_name": "document"},
        query_encode_kwargs={"prompt_name": "query"},
    )
    model = SentenceTransformer(str(folder), trust_remote_code=True)
    np.testing.assert_allclose(embeddings.embed_query(TEXTS[0]), model.encode_query(TEXTS[:1])[0], atol=1e-5)
    np.testing.assert_allclose(embeddings.embed_documents(TEXTS), model.encode_document(TEXTS), atol=1e-5)


@pytest.mark.skipif("CONCAT_EMBED_ST6_MODEL" not in os.environ, reason="set by .ci/run: a folder built under ST 6")
def test_folder_built_with_sentence_transformers_6_loads() -> None:
    from sentence_transformers import SentenceTransformer

    folder = Path(os.environ["CONCAT_EMBED_ST6_MODEL"])
    model = SentenceTransformer(str(folder), trust_remote_code=True)
    reference = np.load(folder.parent / "reference_query.npy")
    assert np.abs(model.encode_query(TEXTS) - reference).max() <= 1e-5
