"""The model card: the Parts table reads the parts whatever else the folder holds, escaped YAML, usable snippets."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hub_export.folder import BACKENDS_FILE, CONFIG_FILE, write_json
from hub_export.publish.card import render_card


def table(card: str, heading: str) -> list[list[str]]:
    """The cells of the Markdown table under ``heading`` (header and separator left out)."""
    lines = card.split(f"{heading}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_parts_table_lists_the_parts_when_the_folder_has_exported_runtimes(model_copy: Path) -> None:
    entry = {"backend": "onnx", "int8": True, "max_abs_diff": 0.01, "cpu": "avx2"}
    write_json(model_copy / BACKENDS_FILE, {"parts": ["alpha", "beta", "gamma"], "files": {"onnx/model_x.onnx": entry}})
    card = render_card(model_copy)
    parts = table(card, "## Parts")
    assert [row[0] for row in parts] == ["alpha", "beta", "gamma"]
    assert [row[3] for row in parts] == ["32", "40", "48"] and parts[1][7] == "16" and parts[1][6] == "0.5"
    exported = table(card, "## Exported runtimes")
    assert exported == [["onnx/model_x.onnx", "onnx", "yes (avx2)", "1.00e-02", "not measured", "not recorded"]]


def test_metadata_is_valid_yaml_whatever_the_licences_and_sources_say(model_copy: Path) -> None:
    config = json.loads((model_copy / CONFIG_FILE).read_text())
    for part in config["parts"]:
        part["license"] = "weird: 'licence' # not a comment"
        part["source"], part["revision"] = "org/name-" + part["name"], "0123456789abcdef"
    config["parts"][1]["prompts"] = {"query": "a | b"}
    (model_copy / CONFIG_FILE).write_text(json.dumps(config))
    card = render_card(model_copy, "me/combined")
    meta = front_matter(card)
    assert meta["license"] == "weird: 'licence' # not a comment"
    assert meta["base_model"] == ["org/name-alpha", "org/name-beta", "org/name-gamma"]
    assert meta["library_name"] == "sentence-transformers" and "concat-embed" in meta["tags"]
    assert table(card, "## Parts")[1][8] == "query='a \\| b'"  # a pipe in a prompt stays inside its cell


def test_snippets_pass_what_the_integrations_need(model_copy: Path) -> None:
    card = render_card(model_copy, "me/combined")
    assert 'encode_kwargs={"prompt_name": "document"}' in card
    assert 'query_encode_kwargs={"prompt_name": "query"}' in card
    assert "normalize=False" in card and "query_instruction='Represent this sentence" in card
