"""export-backends and loading with backend="onnx" / "openvino": parity, int8, CPU choices, refusals."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hub_export import modeling
from hub_export.folder import BUILD_RECORD as RECORD
from hub_export.folder import model_files
from hub_export.publish.backends import BACKENDS_FILE, export_backends
from tests.constants import DATA
from tests.tiny_models import built_model_reference

TEXTS = ["what is a snowflake?", "the quick brown fox", "hello world " * 30, "日本"]
STS = DATA / "stsb" / "test.tsv.gz"


@pytest.fixture(scope="module")
def exported(built_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the built model with ONNX fp32 + int8 (avx2 file) for every part."""
    folder = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(built_model, folder)
    return folder, export_backends(folder, onnx=True, int8=True, family="avx2")


def load(folder: Path, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), trust_remote_code=True, device="cpu", **kwargs)


def test_onnx_parts_match_the_independent_reference(exported, tiny_parts):
    folder, _ = exported
    model = load(folder, backend="onnx")
    assert model[0].backend == "onnx" and model[0].backend_file == "onnx/model.onnx"
    transformer = model[0].pipelines[0][0]
    assert type(transformer.auto_model).__name__ == "ExportedTransformer"
    for query in (True, False):
        ours = model.encode_query(TEXTS) if query else model.encode_document(TEXTS)
        reference = built_model_reference(tiny_parts, TEXTS, query=query).numpy()
        assert np.abs(ours - reference).max() <= 1e-5
    single = model.encode_query(TEXTS[:1])  # batch of one: the graph's batch axis is dynamic
    assert np.abs(single - model.encode_query(TEXTS)[:1]).max() <= 1e-5


def test_int8_file_is_used_and_stays_close(exported):
    folder, record = exported
    fp32 = load(folder).encode_document(TEXTS)
    int8 = load(folder, backend="onnx", model_kwargs={"file_name": "model_quint8_avx2.onnx"})
    assert int8[0].backend_file == "onnx/model_quint8_avx2.onnx"
    vectors = int8.encode_document(TEXTS)
    diff = np.abs(vectors - fp32).max()
    assert 0 < diff < 0.2  # quantized (not the fp32 graph), and still the same embedding
    entry = record["files"]["onnx/model_quint8_avx2.onnx"]
    assert entry["int8"] is True and entry["cpu"] == "avx2" and 0 < entry["max_abs_diff"] < 0.2
    assert record["files"]["onnx/model.onnx"]["max_abs_diff"] <= 1e-5


def test_export_adds_recorded_allowlisted_files_and_a_card_section(exported):
    folder, record = exported
    listed = model_files(folder)
    for part in ("alpha", "beta", "gamma"):
        assert f"{part}/onnx/model.onnx" in listed and f"{part}/onnx/model_quint8_avx2.onnx" in listed
    assert BACKENDS_FILE in listed
    recorded = json.loads((folder / RECORD).read_text())["files"]
    assert "alpha/onnx/model.onnx" in recorded and BACKENDS_FILE in recorded
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".partial")]  # staging removed
    from hub_export.publish.card import render_card

    card = render_card(folder)
    assert "## Exported runtimes" in card and "| onnx/model_quint8_avx2.onnx | onnx | yes (avx2) |" in card
    assert "| int8, other operations f32 |" in card and record["files"]["onnx/model.onnx"]["precision"] == "f32"


def test_auto_quantization_picks_the_int8_file_for_this_cpu(exported, monkeypatch):
    folder, _ = exported
    family = modeling.cpu_family()
    model = load(folder, backend="onnx", model_kwargs={"quantization": "auto"})
    expected = "onnx/model_quint8_avx2.onnx" if family == "avx2" else "onnx/model.onnx"  # only avx2 was exported
    assert model[0].backend_file == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "tensorrt"}, "backend = 'tensorrt': expected one of ['torch', 'onnx', 'openvino']"),
        (
            {"backend": "onnx", "model_kwargs": {"file_name": "../../etc/passwd.onnx"}},
            "model_kwargs file_name = '../../etc/passwd.onnx': expected a .onnx file inside the part",
        ),
        (
            {"backend": "onnx", "model_kwargs": {"file_name": "model.xml"}},
            "model_kwargs file_name = 'model.xml': expected a .onnx file inside the part",
        ),
        (
            {"backend": "onnx", "model_kwargs": {"file_name": "model_qint8_avx512_vnni.onnx"}},
            "part 'alpha': alpha/onnx/model_qint8_avx512_vnni.onnx not found; make it with "
            "`concat-embed export-backends MODEL --onnx`",
        ),
        (
            {"backend": "openvino"},
            "part 'alpha': alpha/openvino/openvino_model.xml not found; make it with "
            "`concat-embed export-backends MODEL --openvino`",
        ),
        (
            {"backend": "onnx", "model_kwargs": {"quantization": "int8-dynamic"}},
            "model_kwargs quantization = 'int8-dynamic' applies to backend='torch'; with backend='onnx' load an "
            "int8 file",
        ),
        ({"model_kwargs": {"file_name": "onnx/model.onnx"}}, "file_name / provider apply to backend='onnx'"),
        ({"backend": "onnx", "model_kwargs": {"export": True}}, "export the parts with `concat-embed export-backends"),
    ],
)
def test_bad_backend_options_are_refused(exported, kwargs, message):
    folder, _ = exported
    with pytest.raises(ValueError) as error:
        load(folder, **kwargs)
    assert message in str(error.value)


def test_a_backend_model_cannot_be_saved(exported, tmp_path):
    folder, _ = exported
    with pytest.raises(ValueError, match="cannot save a model loaded with backend='onnx'; load it without"):
        load(folder, backend="onnx").save(str(tmp_path / "copy"))


def test_export_refuses_to_replace_a_file_it_did_not_write(model_copy, tmp_path):
    folder = model_copy
    mine = folder / "beta" / "onnx" / "model.onnx"
    mine.parent.mkdir()
    mine.write_bytes(b"user's own graph")
    with pytest.raises(ValueError, match=r"already holds \['beta/onnx/model.onnx'\], which concat-embed did not write"):
        export_backends(folder, onnx=True)
    assert mine.read_bytes() == b"user's own graph"
    assert not (folder / "alpha" / "onnx").exists() and not (folder / BACKENDS_FILE).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"onnx": False, "openvino": False}, "nothing to export: give onnx and/or openvino"),
        (
            {"int8": True, "family": "sse2"},
            "int8 CPU family 'sse2': expected one of ['avx512_vnni', 'avx512', 'avx2', 'arm64']",
        ),
    ],
)
def test_bad_export_options_are_refused(built_model, kwargs, message):
    with pytest.raises(ValueError) as error:
        export_backends(built_model, **kwargs)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("flags", "machine", "capability", "family"),
    [
        ({"avx2", "fma"}, "x86_64", "AVX2", "avx2"),
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "AVX512", "avx512_vnni"),
        ({"avx2", "avx512f"}, "x86_64", "AVX512", "avx512"),
        ({"sse4_2"}, "x86_64", "DEFAULT", None),
        ({"asimd", "bf16"}, "aarch64", "DEFAULT", "arm64"),
    ],
)
def test_cpu_family_follows_the_reported_capabilities(monkeypatch, flags, machine, capability, family):
    monkeypatch.setattr(modeling.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert modeling.cpu_family(flags) == family
    expected = "int8-dynamic" if family else None
    assert modeling.auto_quantization(family, cuda=False) == expected
    assert modeling.auto_quantization(family, cuda=True) is None


def test_bf16_on_a_cpu_without_native_bf16_keeps_float32(monkeypatch, caplog):
    monkeypatch.setattr(modeling, "native_bf16", lambda flags=None: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model_kwargs = {"dtype": torch.bfloat16}
    with caplog.at_level(logging.WARNING, logger=modeling.__name__):
        runtime = modeling.runtime_options(model_kwargs, "torch")
    assert model_kwargs == {} and runtime["quantization"] is None
    assert "this CPU has no native bf16" in caplog.text and "keeping float32" in caplog.text
    monkeypatch.setattr(modeling, "native_bf16", lambda flags=None: True)
    kept = {"torch_dtype": torch.bfloat16}
    modeling.runtime_options(kept, "torch")
    assert kept == {"torch_dtype": torch.bfloat16}


@pytest.mark.slow
def test_openvino_fp32_matches_and_int8_is_reported(model_copy, tiny_parts, tmp_path):
    folder = model_copy
    record = export_backends(folder, onnx=False, openvino=True, int8=True, sts=STS, sts_limit=200)
    assert not (folder / "alpha" / "onnx").exists()  # the ONNX step stays in staging
    model = load(folder, backend="openvino")
    reference = built_model_reference(tiny_parts, TEXTS, query=True).numpy()
    assert np.abs(model.encode_query(TEXTS) - reference).max() <= 1e-5
    entry = record["files"]["openvino/openvino_model_qint8_quantized.xml"]
    assert entry["int8"] is True and entry["max_abs_diff"] > 0
    assert entry["sts_change"] == pytest.approx(entry["sts_spearman"] - record["reference_sts"])
    int8 = load(folder, backend="openvino", model_kwargs={"file_name": "openvino/openvino_model_qint8_quantized.xml"})
    assert 0 < np.abs(int8.encode_query(TEXTS) - reference).max() < 0.5
    # a second export adds ONNX and keeps the OpenVINO entries
    record = export_backends(folder, onnx=True)
    assert set(record["files"]) == {
        "onnx/model.onnx",
        "openvino/openvino_model.xml",
        "openvino/openvino_model_qint8_quantized.xml",
    }


def test_openvino_runs_f32_whatever_the_cpu_offers(tmp_path) -> None:
    """OpenVINO's CPU plugin picks bf16 by itself where the CPU has it (AVX-512 BF16, AMX): the precision is pinned."""
    import openvino
    from openvino import opset13

    source = opset13.parameter([1, 4], openvino.Type.i64, name="input_ids")
    hidden = opset13.convert(source, "f32")
    path = tmp_path / "openvino_model.xml"
    openvino.save_model(openvino.Model([hidden], [source], "tiny"), str(path))
    exported = modeling.ExportedTransformer("openvino", str(path), config=None)
    for threads in (1, 2):
        assert exported._openvino_session(threads).get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
