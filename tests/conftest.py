"""Session fixtures: tiny random BERT parts built in-process, and an isolated HF cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="concat-embed-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from tests.tiny_models import make_tiny_bert  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """The default run (``-m 'not slow'``: tiny models only) runs torch, and the processes it starts, at one thread.

    The tiny models gain nothing from a second thread, and on a busy machine two OpenMP threads that wait for
    each other make a 2-second training fixture take 50 (measured beside a 2-thread job on 2 cores). ``slow``
    runs (real models) keep torch's default; tests of thread handling set the counts they check themselves.
    """
    if config.getoption("markexpr") == "not slow":
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Plain transformers folders: ``a`` (32d, tokenizer a), ``a2`` (48d, tokenizer a), ``b`` (40d, tokenizer b)."""
    root = tmp_path_factory.mktemp("tiny_parts")
    return {
        "a": make_tiny_bert(root / "a", hidden=32, tokenizer="a", seed=1),
        "a2": make_tiny_bert(root / "a2", hidden=48, tokenizer="a", seed=2),
        "b": make_tiny_bert(root / "b", hidden=40, tokenizer="b", seed=3),
    }


from tests.constants import QUERY_PROMPT  # noqa: E402


@pytest.fixture(scope="session")
def built_model(tiny_parts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-part model: a (cls), b (mean, truncate 16, weight 0.5, own query prompt), a2 (lasttoken)."""
    from hub_export.publish.build import PartOptions, build_model

    return build_model(
        [
            PartOptions("alpha", str(tiny_parts["a"])),
            PartOptions(
                "beta", str(tiny_parts["b"]), pooling="mean", truncate_dim=16, weight=0.5, prompts={"query": "find: "}
            ),
            PartOptions("gamma", str(tiny_parts["a2"]), pooling="lasttoken", max_seq_length=32),
        ],
        tmp_path_factory.mktemp("built") / "model",
        prompts={"query": QUERY_PROMPT, "document": ""},
    )


@pytest.fixture
def model_copy(built_model: Path, tmp_path: Path) -> Path:
    """A fresh copy of ``built_model`` in the test's own folder, for a test that changes files."""
    return Path(shutil.copytree(built_model, tmp_path / "model"))


@pytest.fixture(scope="session")
def loaded_model(built_model: Path):
    """``built_model`` loaded through sentence-transformers' remote-code route."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(built_model), trust_remote_code=True, device="cpu")
