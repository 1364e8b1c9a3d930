"""build: a part keeps the prompts its folder ships; names that collide with the folder's own files are refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer

from hub_export.publish.build import PartOptions, build_model
from tests.tiny_models import reference_part

TEXTS = ["what is snowflake?", "the quick brown fox"]


@pytest.fixture(scope="module")
def e5_style_part(tiny_parts, tmp_path_factory) -> Path:
    """A sentence-transformers folder (tiny part a, mean pooling) that ships its own prompts, as e5 models do."""
    from sentence_transformers import models

    transformer = models.Transformer(str(tiny_parts["a"]))
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    model = SentenceTransformer(modules=[transformer, pooling], prompts={"query": "query: ", "passage": "passage: "})
    path = tmp_path_factory.mktemp("e5") / "e5-style"
    model.save(str(path))
    return path


def test_a_part_keeps_the_prompts_its_folder_ships(e5_style_part, tiny_parts, tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="hub_export.publish.build"):
        folder = build_model(
            [PartOptions("e5", str(e5_style_part)), PartOptions("plain", str(tiny_parts["b"]))], tmp_path / "m"
        )
    config = json.loads((folder / "concat_config.json").read_text())
    assert config["parts"][0]["prompts"] == {"query": "query: "} and config["parts"][1]["prompts"] == {}
    assert "'passage': 'passage: '" in caplog.text and "--part-prompt e5.NAME=TEXT" in caplog.text
    model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    ours = torch.as_tensor(model.encode_query(TEXTS))
    expected = torch.cat(
        [reference_part(tiny_parts["a"], TEXTS, "mean", "query: "), reference_part(tiny_parts["b"], TEXTS, "cls")], -1
    )
    assert torch.max(torch.abs(ours - expected)).item() <= 1e-5
    documents = torch.as_tensor(model.encode_document(TEXTS))
    plain = torch.cat(
        [reference_part(tiny_parts["a"], TEXTS, "mean"), reference_part(tiny_parts["b"], TEXTS, "cls")], -1
    )
    assert torch.max(torch.abs(documents - plain)).item() <= 1e-5
    assert "| query='query: ' |" in (folder / "README.md").read_text()


def test_part_prompt_overrides_the_folders_own(e5_style_part, tiny_parts, tmp_path) -> None:
    parts = [
        PartOptions("e5", str(e5_style_part), prompts={"query": "search: "}),
        PartOptions("p", str(tiny_parts["b"])),
    ]
    folder = build_model(parts, tmp_path / "m")
    assert json.loads((folder / "concat_config.json").read_text())["parts"][0]["prompts"] == {"query": "search: "}


@pytest.mark.parametrize("name", ["modeling.py", "README.md", "concat_config.json", "modules.json", "1_Dense", "Onnx"])
def test_part_names_of_the_folders_own_files_are_refused(tiny_parts, tmp_path, name) -> None:
    with pytest.raises(ValueError, match=rf"part name '{name}' is the name of one of the model folder's own files"):
        build_model([PartOptions(name, str(tiny_parts["a"])), PartOptions("p", str(tiny_parts["b"]))], tmp_path / "m")
    assert not (tmp_path / "m").exists()
