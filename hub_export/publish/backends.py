"""``concat-embed export-backends``: each part's transformer as ONNX / OpenVINO files (fp32 and int8).

The files go where sentence-transformers' own backends put them, inside each part's folder
(``onnx/model.onnx``, ``onnx/model_quint8_avx2.onnx`` ..., ``openvino/openvino_model.xml`` + ``.bin``,
``openvino/openvino_model_qint8_quantized.xml``), so ``SentenceTransformer(MODEL, trust_remote_code=True,
backend="onnx", model_kwargs={"file_name": ...})`` runs every part on that runtime. Made with
``torch.onnx`` (dynamo exporter), OpenVINO's converter (from the ONNX graph), ONNX Runtime's dynamic
quantizer and NNCF's post-training quantizer; no optimum. Every file is checked against the torch
part before it is added, and ``backends.json`` records what was measured (the card shows it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from hub_export.data import load_sts, read_corpus_texts
from hub_export.folder import (
    BACKENDS_FILE,
    CONFIG_FILE,
    VERIFICATION_FILE,
    check_model_folder,
    exported_files,
    is_combined,
    load_model,
    read_json,
    write_json,
)
from hub_export.modeling import (
    BACKEND_DEFAULT_FILES,
    ONNX_INT8_FILES,
    OPENVINO_INT8_FILE,
    ExportedTransformer,
    cpu_family,
    parse_concat_config,
    replace_transformer_model,
)
from hub_export.outdir import add_files, check_addable, staging_folder
from hub_export.vectors import cosine_rows, unit_rows

logger = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
# Texts of every length class, incl. one past the token limit, for the fp32 check and the default calibration.
PROBES = [
    "what is a concatenated embedding?",
    "Snowflake",
    "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon.",
    "A résumé, naïve café owners and 東京 — mixed scripts and accents 123 456.",
    " ".join(["Long passages are truncated at the token limit of each part."] * 80),
    "Embedding models map text to vectors; cosine similarity compares them.",
    "How do I bake bread without yeast?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]


def _export_onnx(transformer: Any, path: Path) -> None:
    """Export a part's transformer (token ids in, ``last_hidden_state`` out) with dynamic batch and length."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
        ) -> torch.Tensor:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(**{key: value for key, value in inputs.items() if value is not None}).last_hidden_state

    example = transformer.tokenizer(PROBES[:2], padding=True, return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in example]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            Graph(transformer.auto_model).eval(),
            (),
            str(path),
            kwargs={name: example[name] for name in names},
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
            opset_version=18,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _quantize_onnx(source: Path, target: Path, family: str) -> None:
    """Dynamic int8 (per-channel weights of every MatMul); u8 weights for AVX2, s8 elsewhere."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    weight_type = QuantType.QUInt8 if family == "avx2" else QuantType.QInt8
    quantize_dynamic(source, target, per_channel=True, weight_type=weight_type, op_types_to_quantize=["MatMul"])


def _export_openvino(onnx_path: Path, target: Path, calibration: list[dict[str, np.ndarray]] | None) -> None:
    """Convert the ONNX graph to OpenVINO IR (fp32 weights); with ``calibration`` quantize it with NNCF (int8)."""
    import openvino

    model = openvino.convert_model(str(onnx_path))
    if calibration is not None:
        import nncf

        model = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    openvino.save_model(model, str(target), compress_to_fp16=False)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' and quantizers' own output (warnings, log lines, progress bars) unless ``-v``."""
    if logger.isEnabledFor(logging.INFO):
        yield
        return
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "torch.export", "nncf", "onnxscript")]
    levels = [log.level for log in loggers]
    sink = io.StringIO()
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def parts_of(model: Any) -> list[tuple[str, str, Any]]:
    """``(name, subfolder, Transformer module)`` of each part of a combined model; a plain model (a distilled
    student) is one part at the folder's root, as sentence-transformers lays out its own ``onnx/``."""
    if hasattr(model[0], "specs"):
        return [(spec.name, spec.subfolder, pipeline[0]) for spec, pipeline in zip(model[0].specs, model[0].pipelines)]
    return [("model", "", model[0])]


@contextmanager
def _running(model: Any, backend: str, files: Sequence[Path]) -> Iterator[None]:
    """Run every part of a loaded model from ``files[i]`` (restored to torch afterwards)."""
    transformers = [transformer for _, _, transformer in parts_of(model)]
    originals = [transformer.auto_model for transformer in transformers]
    try:
        for transformer, original, path in zip(transformers, originals, files):
            exported = ExportedTransformer(backend, str(path), original.config)
            replace_transformer_model(transformer, exported)
        yield
    finally:
        for transformer, original in zip(transformers, originals):
            replace_transformer_model(transformer, original)


def _measure(model: Any, texts: list[str], sts: tuple[list[str], list[str], np.ndarray] | None) -> dict[str, Any]:
    """Embeddings of ``texts`` (query and document prompts) and, with STS pairs, Spearman x 100."""
    vectors = np.concatenate(
        [unit_rows(model.encode(texts, prompt_name=task, convert_to_numpy=True)) for task in ("query", "document")]
    )
    result: dict[str, Any] = {"vectors": vectors}
    if sts is not None:
        from scipy.stats import spearmanr

        left = model.encode(sts[0], batch_size=64, convert_to_numpy=True)
        right = model.encode(sts[1], batch_size=64, convert_to_numpy=True)
        result["sts"] = 100 * float(spearmanr(cosine_rows(left, right), sts[2]).statistic)
    return result


def check_family(family: str | None) -> str:
    """The CPU family an int8 ONNX file is made for (default: this machine's)."""
    family = family or cpu_family()
    if family not in ONNX_INT8_FILES:
        raise ValueError(
            f"int8 CPU family {family!r}: expected one of {list(ONNX_INT8_FILES)} (this CPU reports none; name one)"
        )
    return family


def export_backends(
    model_dir: str | Path,
    onnx: bool = True,
    openvino: bool = False,
    int8: bool = False,
    family: str | None = None,
    calibration: str | Path | None = None,
    sts: str | Path | None = None,
    sts_limit: int | None = None,
) -> dict[str, Any]:
    """Export, check and add the backend files of every part of a built model; write ``backends.json``.

    Args:
        model_dir: A folder written by ``concat-embed build`` (or ``compress``).
        onnx: Write ``onnx/model.onnx`` (and with ``int8`` the file for ``family``).
        openvino: Write ``openvino/openvino_model.xml`` (and with ``int8`` the NNCF-quantized one).
        int8: Also write the int8 files.
        family: CPU family of the int8 ONNX file (``avx2``, ``avx512``, ``avx512_vnni``, ``arm64``); default this CPU's.
        calibration: Texts (lines or JSONL) for OpenVINO's static int8; default the built-in probe texts.
        sts: An STS-B style file: each file's Spearman change against torch is measured on it.
        sts_limit: Use only the first pairs of ``sts``.

    Returns:
        The ``backends.json`` record: per file, the backend, whether int8, the max |diff| of the
        vectors against torch and the STS change.

    Raises:
        ValueError: When nothing is asked for, an fp32 file differs from torch by more than
            :data:`FP32_TOLERANCE`, or a file to write exists and was not written by this tool.
    """
    if not onnx and not openvino:
        raise ValueError("nothing to export: give onnx and/or openvino")
    model_dir = Path(model_dir)
    check_model_folder(model_dir, students=True)
    family = check_family(family) if int8 and onnx else None
    sts_pairs = load_sts(sts, sts_limit) if sts else None
    texts = read_corpus_texts(calibration, 300) if calibration else PROBES
    wanted = planned_files(model_dir, onnx, openvino, int8, family)
    model = load_model(model_dir, device="cpu")
    model.eval()
    reference = _measure(model, PROBES, sts_pairs)
    staging = staging_folder(model_dir)
    try:
        for name, subfolder, transformer in parts_of(model):
            logger.info("part %s: exporting", name)
            _export_part(transformer, staging / subfolder, onnx, openvino, int8, family, texts)
        record = {"parts": [name for name, _, _ in parts_of(model)], "reference_sts": reference.get("sts")}
        record["files"] = exported_files(model_dir) | {
            name: _check_file(model, staging, name, reference, sts_pairs, family) for name in wanted
        }
        write_json(staging / BACKENDS_FILE, record)
        add_files(model_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if (model_dir / VERIFICATION_FILE).is_file():
        logger.warning("export-backends added files to %s: run `concat-embed verify` again before push", model_dir)
    return record


def planned_files(model_dir: Path, onnx: bool, openvino: bool, int8: bool, family: str | None) -> list[str]:
    """The files each part will get (relative to the part), after checking that none is in the way.

    Raises:
        ValueError: If a file to write (or its ``.bin`` companion) exists and was not written by this tool.
    """
    wanted = ([BACKEND_DEFAULT_FILES["onnx"]] if onnx else []) + ([ONNX_INT8_FILES[family]] if family else [])
    wanted += [BACKEND_DEFAULT_FILES["openvino"]] if openvino else []
    wanted += [OPENVINO_INT8_FILE] if openvino and int8 else []
    if is_combined(model_dir):
        specs, _ = parse_concat_config(read_json(model_dir / CONFIG_FILE), CONFIG_FILE)
        subfolders = [spec.subfolder for spec in specs]
    else:  # a distilled student: one part at the root
        subfolders = [""]
    companions = [name[: -len(".xml")] + ".bin" for name in wanted if name.endswith(".xml")]
    files = [Path(sub, name).as_posix() for sub in subfolders for name in wanted + companions]
    check_addable(model_dir, [BACKENDS_FILE, *files])
    return wanted


def _export_part(
    transformer: Any, part: Path, onnx: bool, openvino: bool, int8: bool, family: str | None, texts: list[str]
) -> None:
    """Write one part's files into its staging folder ``part`` (the fp32 ONNX graph is the source of the others)."""
    fp32 = part / BACKEND_DEFAULT_FILES["onnx"]
    with _quiet():
        _export_onnx(transformer, fp32)
        if family:
            _quantize_onnx(fp32, part / ONNX_INT8_FILES[family], family)
        if openvino:
            _export_openvino(fp32, part / BACKEND_DEFAULT_FILES["openvino"], None)
        if openvino and int8:
            encoded = transformer.tokenizer(texts, truncation=True, max_length=transformer.max_seq_length)
            names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in encoded]
            feeds = [{n: np.array([encoded[n][i]], dtype=np.int64) for n in names} for i in range(len(texts))]
            _export_openvino(fp32, part / OPENVINO_INT8_FILE, feeds)
    if not onnx:
        shutil.rmtree(part / "onnx")


def _check_file(
    model: Any,
    staging: Path,
    name: str,
    reference: dict[str, Any],
    sts_pairs: tuple[list[str], list[str], np.ndarray] | None,
    family: str | None,
) -> dict[str, Any]:
    """Run the whole model with every part on ``name`` and compare with torch: the file's ``backends.json`` entry.

    Raises:
        ValueError: If an fp32 file differs from torch by more than :data:`FP32_TOLERANCE` (nothing is added).
    """
    backend = "onnx" if name.startswith("onnx/") else "openvino"
    with _running(model, backend, [staging / subfolder / name for _, subfolder, _ in parts_of(model)]):
        measured = _measure(model, PROBES, sts_pairs)
    diff = float(np.abs(measured["vectors"] - reference["vectors"]).max())
    is_int8 = name not in BACKEND_DEFAULT_FILES.values()
    if not is_int8 and not (math.isfinite(diff) and diff <= FP32_TOLERANCE):
        raise ValueError(f"{name}: max |diff| vs torch = {diff:.2e} exceeds {FP32_TOLERANCE:g}; not added")
    precision = "int8, other operations f32" if is_int8 else "f32"  # OpenVINO's pinned (OPENVINO_PRECISION)
    entry = {"backend": backend, "int8": is_int8, "precision": precision, "max_abs_diff": diff}
    if family and name == ONNX_INT8_FILES[family]:
        entry["cpu"] = family
    if sts_pairs is not None:
        entry["sts_spearman"] = measured["sts"]
        entry["sts_change"] = measured["sts"] - reference["sts"]
    logger.info("%s: max |diff| %.2e%s", name, diff, f", STS {entry.get('sts_change', 0):+.2f}")
    return entry
