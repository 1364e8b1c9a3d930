"""Vector codes: per-part truncation + scalar codes, calibration round trips, the old field name."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from hub_export.modeling import PartSpec
from hub_export.quality.calibrate import calibrate_folder
from hub_export.quality.codes import (
    PartLayout,
    bytes_per_vector,
    decode_codes,
    encode_codes,
    part_layouts,
    part_ranges,
    prepare_queries,
    score,
)

RNG = np.random.default_rng(0)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def two_part_embeddings(n: int = 64) -> tuple[np.ndarray, list[PartSpec]]:
    specs = [PartSpec("a", "a", 8, "cls"), PartSpec("b", "b", 7, "mean", weight=0.5)]
    return np.concatenate([unit(RNG.normal(size=(n, 8))), 0.5 * unit(RNG.normal(size=(n, 7)))], axis=1), specs


@pytest.mark.parametrize(("scheme", "levels"), [("int8", 256), ("int4", 16)])
def test_round_trip_error_is_within_half_a_step(scheme, levels) -> None:
    embeddings, specs = two_part_embeddings()
    layouts = [
        PartLayout(s.name, start, s.dimension, s.weight, s.dimension, -0.5, 0.6) for s, start in zip(specs, (0, 8))
    ]
    codes = encode_codes(embeddings, layouts, scheme)
    assert codes.dtype == (np.int8 if scheme == "int8" else np.uint8)
    assert codes.shape == (64, bytes_per_vector(layouts, scheme))
    restored = decode_codes(codes, layouts, scheme)
    expected = prepare_queries(embeddings, layouts)
    clipped = np.concatenate(
        [np.clip(expected[:, :8], -0.5, 0.6), 0.5 * np.clip(expected[:, 8:] / 0.5, -0.5, 0.6)], axis=1
    )
    step = 1.1 / (levels - 1)
    assert np.abs(restored - clipped).max() <= step / 2 + 1e-6


def test_int4_packs_two_codes_per_byte_and_pads_odd_parts() -> None:
    # encode_codes re-normalizes each part: choose the range so that this unit vector maps to codes 1, 2, 3
    unit_values = unit(np.array([[1.0, 2.0, 3.0]]))
    layout = [PartLayout("x", 0, 3, 1.0, 3, 0.0, float(unit_values.max()) * 15 / 3)]
    codes = encode_codes(unit_values, layout, "int4")
    assert codes.tolist() == [[0x12, 0x30]]
    assert bytes_per_vector(layout, "int4") == 2 and bytes_per_vector(layout, "int8") == 3
    assert bytes_per_vector(layout, None) == 12


def test_truncation_keeps_first_dims_and_renormalizes() -> None:
    embeddings, specs = two_part_embeddings(4)
    calibration = part_ranges(embeddings, specs, dims={"a": 4})
    assert calibration["a"]["int8"]["dims"] == 4 and calibration["b"]["int4"]["dims"] == 7
    specs[0].code_ranges, specs[1].code_ranges = calibration["a"], calibration["b"]
    layouts = part_layouts(specs, "int8")
    queries = prepare_queries(embeddings, layouts)
    assert queries.shape == (4, 11)
    np.testing.assert_allclose(queries[:, :4], unit(embeddings[:, :4]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(queries[:, 4:], axis=1), 0.5, atol=1e-6)
    assert bytes_per_vector(layouts, "int8") == 11 and bytes_per_vector(layouts, "int4") == 2 + 4


def test_coded_scores_track_float_cosines() -> None:
    embeddings, specs = two_part_embeddings(200)
    calibration = part_ranges(embeddings, specs)
    for spec in specs:
        spec.code_ranges = calibration[spec.name]
    float_scores = unit(embeddings) @ unit(embeddings).T
    for scheme, tolerance in (("int8", 0.02), ("int4", 0.15)):
        layouts = part_layouts(specs, scheme)
        approx = score(embeddings, encode_codes(embeddings, layouts, scheme), layouts, scheme)
        assert np.abs(approx - float_scores).max() <= tolerance


def test_layout_errors_name_valid_choices() -> None:
    _, specs = two_part_embeddings(2)
    with pytest.raises(ValueError, match=r"valid schemes: \['int8', 'int4'\]"):
        part_layouts(specs, "int2")
    with pytest.raises(ValueError, match="has no int8 calibration: run `concat-embed calibrate`"):
        part_layouts(specs, "int8")
    with pytest.raises(ValueError, match=r"valid parts: \['a', 'b'\]"):
        part_layouts(specs, None, ["c"])
    with pytest.raises(ValueError, match=r"dims for part 'a' must be in \[1, 8\]"):
        part_ranges(np.ones((2, 15)), specs, dims={"a": 9})


def test_calibration_round_trips_through_save_and_load(model_copy, tmp_path) -> None:
    folder = model_copy
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(40)))
    stored = calibrate_folder(folder, corpus, limit=30, dims={"alpha": 16})
    model = SentenceTransformer(str(folder), trust_remote_code=True)
    assert {s.name: s.code_ranges for s in model[0].specs} == stored
    assert stored["alpha"]["int8"]["dims"] == 16 and stored["alpha"]["int8"]["low"] < stored["alpha"]["int8"]["high"]
    model.save(str(tmp_path / "saved"))
    again = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True)
    assert {s.name: s.code_ranges for s in again[0].specs} == stored
    layouts = part_layouts(again[0].specs, "int4")
    assert bytes_per_vector(layouts, "int4") == 8 + 8 + 24
    config = json.loads((folder / "concat_config.json").read_text())
    config["parts"][0]["code_ranges"]["int8"]["dims"] = 999
    (folder / "concat_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"parts\[0\].code_ranges"):
        SentenceTransformer(str(folder), trust_remote_code=True)


def test_old_field_name_quantization_is_read_as_code_ranges_and_rewritten(model_copy, tmp_path) -> None:
    folder = model_copy
    ranges = {"int8": {"low": -0.25, "high": 0.5, "dims": 8}}
    config = json.loads((folder / "concat_config.json").read_text())
    del config["parts"][0]["code_ranges"]
    config["parts"][0]["quantization"] = ranges  # as calibrate wrote it before the rename
    (folder / "concat_config.json").write_text(json.dumps(config))
    model = SentenceTransformer(str(folder), trust_remote_code=True)
    assert model[0].specs[0].code_ranges == ranges
    assert part_layouts(model[0].specs, "int8", ["alpha"])[0] == PartLayout("alpha", 0, 32, 1.0, 8, -0.25, 0.5)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"text number {i}" for i in range(20)))
    stored = calibrate_folder(folder, corpus, limit=20)
    parts = json.loads((folder / "concat_config.json").read_text())["parts"]
    assert not any("quantization" in p for p in parts)
    assert {p["name"]: p["code_ranges"] for p in parts} == stored
    config["parts"][0]["code_ranges"] = ranges
    (folder / "concat_config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"parts\[0\]: both code_ranges and its old name 'quantization'; keep code_ranges"
    ):
        SentenceTransformer(str(folder), trust_remote_code=True)


def test_calibrate_refuses_a_folder_whose_modeling_py_predates_code_ranges(model_copy, tmp_path) -> None:
    folder = model_copy
    modeling = folder / "modeling.py"
    old = modeling.read_text().replace("code_ranges", "quantization").replace("MODELING_VERSION = 2\n", "")
    modeling.write_text(old)  # as modeling.py was before it read code_ranges (and had no version line)
    before = (folder / "concat_config.json").read_text()
    with pytest.raises(ValueError, match=r"modeling.py is from an older concat-embed .* rebuild the folder"):
        calibrate_folder(folder, tmp_path / "unused.txt", limit=5)
    assert (folder / "concat_config.json").read_text() == before


@pytest.mark.parametrize(
    ("precision", "dtype", "width"),
    [("int8", np.int8, 96), ("uint8", np.uint8, 96), ("binary", np.int8, 12), ("ubinary", np.uint8, 12)],
)
def test_sentence_transformers_precision_keeps_working(loaded_model, precision, dtype, width) -> None:
    codes = loaded_model.encode(["a cat", "a dog", "snow", "hello world"], precision=precision)
    assert codes.dtype == dtype and codes.shape == (4, width)
