"""Concatenate the L2-normalized embeddings of several sentence-transformers models.

This file ships to the Hugging Face Hub as remote code next to ``modules.json``
(``"type": "modeling.ConcatEmbedding"``). It imports only the standard library, torch,
transformers and sentence-transformers, and works with sentence-transformers 5.x and 6.x.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import json
import logging
import math
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

try:  # sentence-transformers >= 6
    from sentence_transformers.base.modules import InputModule
except ImportError:  # sentence-transformers 5.x
    from sentence_transformers.models import InputModule

logger = logging.getLogger(__name__)

# --- Constants and the configuration schema (concat_config.json) ---

# This file's format version, read by concat-embed from a folder's copy (its text, never run):
# 2 = parts[i].code_ranges is read (files without this line are older).
MODELING_VERSION = 2
CONFIG_FILE = "concat_config.json"
POOLING_MODES = ("cls", "mean", "max", "lasttoken", "weightedmean", "mean_sqrt_len_tokens")
PART_MODULE_TYPES = ("Transformer", "Pooling", "Dense", "Normalize")
CODE_SCHEMES = ("int8", "int4")  # vector codes: how stored embeddings are packed (calibrated ranges)
LEGACY_CODE_RANGES = "quantization"  # the old name of PartSpec.code_ranges in concat_config.json
WEIGHT_QUANTIZATION = (None, "auto", "int8-dynamic")  # model_kwargs quantization: how the weights run
# Where each part's exported runtimes live, in sentence-transformers' own layout (relative to the part).
BACKENDS = ("torch", "onnx", "openvino")
BACKEND_DEFAULT_FILES = {"onnx": "onnx/model.onnx", "openvino": "openvino/openvino_model.xml"}
# Dynamic-int8 ONNX files by CPU family (sentence-transformers' names): u8 weights on AVX2, whose
# u8s8 instruction can saturate, s8 where the CPU has VNNI or AVX-512.
ONNX_INT8_FILES = {
    "avx512_vnni": "onnx/model_qint8_avx512_vnni.onnx",
    "avx512": "onnx/model_qint8_avx512.onnx",
    "avx2": "onnx/model_quint8_avx2.onnx",
    "arm64": "onnx/model_qint8_arm64.onnx",
}
OPENVINO_INT8_FILE = "openvino/openvino_model_qint8_quantized.xml"
# OpenVINO's CPU plugin runs bf16 by itself on CPUs with native bf16 (AVX-512 BF16, AMX): 1e-2 off the
# fp32 file. Every file runs in f32 (an int8 file: its quantized operations in int8, the rest in f32).
OPENVINO_PRECISION = "f32"
# Part names become folder names and Hub paths: letters, digits, "_", "-" and "." (not first).
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")  # used with fullmatch
SAFE_NAME_RULE = "1-64 letters, digits, '_', '-' or '.' ('.' not first; no '/', '|' or glob characters)"
# Architectures whose position ids start after the padding index, so fewer tokens fit than positions.
_LOADER_KWARGS = (
    "model_kwargs",
    "processor_kwargs",
    "config_kwargs",
    "tokenizer_kwargs",
    "model_args",
    "tokenizer_args",
    "config_args",
)
# The JSON files a part's module folder may hold (read again here, so that an invalid one is named).
_MODULE_CONFIG_FILES = ("config.json", "sentence_bert_config.json", "tokenizer_config.json")
_OFFSET_POSITION_TYPES = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text", "xmod")
# On CPU a batch runs in row chunks whose widest activation stays below this many bytes, which
# bounds activation memory and drops each chunk's trailing padding. 12 MiB (2048 tokens of a
# 1536-wide feed-forward) was as fast as any size tried on 2 cores; glibc may still return freed
# memory between passes (concat-embed's embedding processes turn that off with mallopt).
CPU_CHUNK_BYTES = 12 * 2**20
_CLASSIC_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


@dataclass
class PartSpec:
    """One entry of ``concat_config.json``: where a part lives and how its vector is shaped.

    Args:
        name: Unique name of the part (used in feature keys, errors and the model card).
        subfolder: Folder, relative to the model root, holding the part as a complete
            sentence-transformers model (Transformer + Pooling + Normalize).
        dimension: Output dimension of the part before truncation; checked at load time.
        pooling: Pooling mode of the part; checked against the part's Pooling module.
        max_seq_length: Token limit applied to this part; ``None`` keeps the part's own.
        prompts: Per-part overrides of the model-wide prompt texts, by prompt name.
        weight: Factor applied to the part's unit vector before concatenation.
        truncate_dim: Matryoshka truncation: keep the first ``truncate_dim`` dimensions of this
            part, then re-normalize. ``None`` keeps all dimensions.
        source: Where the part was built from (a Hub id or a folder), for provenance.
        revision: Resolved commit of ``source`` on the Hub, for provenance.
        license: Licence of the source, for the model card.
        code_ranges: Calibrated ranges for storing this part's vectors as codes, by scheme
            (``int8``, ``int4``), each ``{"low": float, "high": float, "dims": int}``: the first
            ``dims`` dimensions of this part (re-normalized) are stored, values clipped to
            ``[low, high]``. Written by ``concat-embed calibrate``; not used by ``encode``. (Vector
            codes, not weight quantization; files written before the rename call the field
            ``quantization``, which is read as ``code_ranges``.)
        trust_remote_code: Whether this part's own code (``auto_map`` in its ``config.json``) may
            run. Recorded at build time; ``trust_remote_code=True`` given to the combined model
            does not reach parts that were not built with it.
    """

    name: str
    subfolder: str
    dimension: int
    pooling: str
    max_seq_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    weight: float = 1.0
    truncate_dim: int | None = None
    source: str | None = None
    revision: str | None = None
    license: str | None = None
    code_ranges: dict[str, dict[str, float]] = field(default_factory=dict)
    trust_remote_code: bool = False

    @property
    def output_dimension(self) -> int:
        """Number of dimensions this part contributes to the concatenation."""
        return self.truncate_dim or self.dimension

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PartSpec:
        """Validate one ``parts[i]`` entry of ``concat_config.json``.

        Args:
            data: The decoded JSON object.
            where: Location used in error messages, e.g. ``"concat_config.json: parts[1]"``.

        Raises:
            ValueError: Naming the file and field for every unknown, missing or invalid field.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
        if LEGACY_CODE_RANGES in data:  # written before vector-code ranges had their own name
            if "code_ranges" in data:
                raise ValueError(f"{where}: both code_ranges and its old name {LEGACY_CODE_RANGES!r}; keep code_ranges")
            data = {("code_ranges" if k == LEGACY_CODE_RANGES else k): v for k, v in data.items()}
        known = [f.name for f in fields(cls)]
        if unknown := sorted(set(data) - set(known)):
            raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields: {known}")
        for required in ("name", "subfolder", "dimension", "pooling"):
            if required not in data:
                raise ValueError(f"{where}: missing required field {required!r}")
        spec = cls(**data)
        spec._validate(where)
        return spec

    def _validate(self, where: str) -> None:
        def bad(field_name: str, expected: str) -> ValueError:
            return ValueError(f"{where}.{field_name} = {getattr(self, field_name)!r}: expected {expected}")

        if not isinstance(self.name, str) or not SAFE_NAME.fullmatch(self.name):
            raise bad("name", SAFE_NAME_RULE)
        if not isinstance(self.subfolder, str) or not all(SAFE_NAME.fullmatch(p) for p in self.subfolder.split("/")):
            raise bad("subfolder", f"a relative folder inside the model whose names are {SAFE_NAME_RULE}")
        if not _is_positive_int(self.dimension):
            raise bad("dimension", "a positive integer")
        if self.pooling not in POOLING_MODES:
            raise bad("pooling", f"one of {list(POOLING_MODES)}")
        if self.max_seq_length is not None and not _is_positive_int(self.max_seq_length):
            raise bad("max_seq_length", "a positive integer or null")
        if not isinstance(self.prompts, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.prompts.items()
        ):
            raise bad("prompts", "an object mapping prompt names to prompt texts")
        if not _is_finite_number(self.weight) or not self.weight > 0:
            raise bad("weight", "a finite number > 0")
        if self.truncate_dim is not None and not (
            _is_positive_int(self.truncate_dim) and self.truncate_dim <= self.dimension
        ):
            raise bad("truncate_dim", f"null or an integer in [1, {self.dimension}] (the part's dimension)")
        for scheme, entry in self.code_ranges.items() if isinstance(self.code_ranges, dict) else [(None, None)]:
            if scheme not in CODE_SCHEMES:
                raise bad("code_ranges", f"an object keyed by schemes {list(CODE_SCHEMES)}")
            if (
                not isinstance(entry, dict)
                or set(entry) != {"low", "high", "dims"}
                or not all(_is_finite_number(entry[k]) for k in ("low", "high"))
                or not entry["low"] < entry["high"]
                or not (_is_positive_int(entry["dims"]) and entry["dims"] <= self.output_dimension)
            ):
                raise bad("code_ranges", f"{{scheme: {{finite low < high, dims in [1, {self.output_dimension}]}}}}")
        if not isinstance(self.trust_remote_code, bool):
            raise bad("trust_remote_code", "true or false")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_json(path: str | os.PathLike, where: str | None = None) -> Any:
    """Decode a JSON file; invalid JSON raises ``ValueError`` naming the file, line and column."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{where or path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None


def position_limit(transformer: nn.Module) -> int | None:
    """How many tokens a part's transformer can take (its position table), or None when unbounded."""
    config = getattr(getattr(transformer, "auto_model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if not _is_positive_int(positions):
        return None
    if getattr(config, "model_type", None) in _OFFSET_POSITION_TYPES:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


def check_token_limit(transformer: nn.Module, value: Any, where: str) -> None:
    """Refuse a ``max_seq_length`` that is not a positive int or exceeds the part's position limit."""
    if not _is_positive_int(value):
        raise ValueError(f"{where}.max_seq_length = {value!r}: expected a positive integer")
    limit = position_limit(transformer)
    if limit is not None and value > limit:
        raise ValueError(f"{where}.max_seq_length = {value}: exceeds the part's position limit of {limit} tokens")


def parse_concat_config(data: Any, where: str = CONFIG_FILE) -> tuple[list[PartSpec], bool]:
    """Validate a decoded ``concat_config.json``.

    Args:
        data: The decoded JSON document.
        where: File name used in error messages.

    Returns:
        The part specs, in concatenation order, and the ``normalize_output`` flag.

    Raises:
        ValueError: Naming the file and field of the first problem found.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object with 'parts', got {type(data).__name__}")
    if unknown := sorted(set(data) - set(ConcatEmbedding.config_keys)):
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields: {ConcatEmbedding.config_keys}")
    parts = data.get("parts")
    if not isinstance(parts, list) or len(parts) < 2:
        raise ValueError(f"{where}: 'parts' must be a list of at least 2 parts, got {parts!r}")
    specs = [PartSpec.from_dict(part, f"{where}: parts[{i}]") for i, part in enumerate(parts)]
    for key in ("name", "subfolder"):
        values = [getattr(spec, key) for spec in specs]
        if len(set(values)) != len(values):
            raise ValueError(f"{where}: parts[*].{key} must be unique, got {values}")
    normalize_output = data.get("normalize_output", False)
    if not isinstance(normalize_output, bool):
        raise ValueError(f"{where}: normalize_output = {normalize_output!r}: expected true or false")
    return specs, normalize_output


# --- sentence-transformers 5.x / 6.x compatibility ---


def _st_module_class(type_ref: str, where: str) -> type[nn.Module]:
    """Resolve a standard sentence-transformers module type named in a part's ``modules.json``."""
    class_name = type_ref.rsplit(".", 1)[-1]
    if not type_ref.startswith("sentence_transformers.") or class_name not in PART_MODULE_TYPES:
        raise ValueError(
            f"{where}: module type {type_ref!r} is not supported in a part; "
            f"valid types: sentence_transformers.models.{{{', '.join(PART_MODULE_TYPES)}}}"
        )
    for home in ("sentence_transformers.sentence_transformer.modules", "sentence_transformers.models"):
        try:
            return getattr(importlib.import_module(home), class_name)
        except (ImportError, AttributeError):
            continue
    raise ValueError(f"{where}: cannot import {type_ref!r} from the installed sentence-transformers")


def pooling_mode_of(pooling: nn.Module) -> str:
    """The pooling mode of a sentence-transformers Pooling module, on 5.x and 6.x."""
    mode = getattr(pooling, "pooling_mode", None)
    if isinstance(mode, str):
        return mode
    return pooling.get_pooling_mode_str()


def embedding_dimension_of(module: nn.Module) -> int | None:
    """The output dimension of a module, through whichever method name this version has."""
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension", "get_word_embedding_dimension"):
        if hasattr(module, name):
            return getattr(module, name)()
    return None


# --- Tokenization and CPU row chunks ---


def tokenize_texts(transformer: nn.Module, texts: list[str], prompt: str | None) -> dict[str, Tensor]:
    """Tokenize ``prompt + text`` for each text with a part's Transformer module (5.x and 6.x)."""
    if prompt:
        texts = [prompt + text for text in texts]
    tokenize = getattr(type(transformer), "preprocess", None)
    if tokenize is None or tokenize is InputModule.preprocess:
        features = transformer.tokenize(texts)
    else:
        features = transformer.preprocess(texts)
    return {key: value for key, value in features.items() if isinstance(value, Tensor)}


def activation_width(transformer: nn.Module) -> int:
    """Widest per-token activation of a part's transformer (its feed-forward width)."""
    config = getattr(getattr(transformer, "auto_model", None), "config", None)
    hidden = getattr(config, "hidden_size", None) or 1024
    return getattr(config, "intermediate_size", None) or 4 * hidden


def row_chunks(features: dict[str, Tensor], max_tokens: int) -> Iterator[dict[str, Tensor]]:
    """Split a tokenized batch into row chunks of at most ``max_tokens`` padded tokens.

    Each chunk drops the trailing columns that are padding in all of its rows, which leaves
    right-padded inputs unchanged; left-padded batches keep their width.
    """
    mask = features.get("attention_mask")
    rows, width = mask.shape if mask is not None else (0, 0)
    step = max(1, max_tokens // max(width, 1))
    if mask is None or rows <= step:
        yield features
        return
    for start in range(0, rows, step):
        used = mask[start : start + step].any(dim=0).nonzero()
        length = int(used.max()) + 1 if len(used) else width
        chunk = {}
        for name, value in features.items():
            if value.dim() > 0 and value.shape[0] == rows:
                value = value[start : start + step]
                value = value[:, :length] if value.dim() > 1 and value.shape[1] == width else value
            chunk[name] = value
        yield chunk


def _tokenizer_fingerprint(transformer: nn.Module) -> str:
    """What decides a part's token ids apart from its token limit (the backend's call state left out)."""
    tokenizer = transformer.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend = json.loads(backend.to_str()) | {"truncation": None, "padding": None}
    return json.dumps(
        [
            type(tokenizer).__name__,
            backend if backend is not None else repr(tokenizer),
            list(getattr(tokenizer, "model_input_names", [])),
            getattr(tokenizer, "padding_side", None),
            getattr(tokenizer, "truncation_side", None),
            getattr(transformer, "do_lower_case", False),
        ]
    )


# --- CPU capabilities and exported runtimes (ONNX Runtime, OpenVINO) ---


def cpu_flags() -> set[str]:
    """ISA flags of this CPU as the OS reports them (``/proc/cpuinfo`` on Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_family(flags: set[str] | None = None) -> str | None:
    """This CPU's int8 instruction family (a key of :data:`ONNX_INT8_FILES`), or None when it has none.

    Read from torch's own dispatch level (``torch.backends.cpu.get_cpu_capability()``) and the ISA flags.
    """
    flags = cpu_flags() if flags is None else flags
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    capability = torch.backends.cpu.get_cpu_capability().upper()
    if {"avx512_vnni", "avx512vnni"} & flags:
        return "avx512_vnni"
    if capability.startswith("AVX512") or "avx512f" in flags:
        return "avx512"
    if capability == "AVX2" or "avx2" in flags:
        return "avx2"
    return None


def native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this CPU computes bf16 matrix products natively (else torch emulates them, several times slower)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


def auto_quantization(family: str | None, cuda: bool) -> str | None:
    """The torch weight quantization ``quantization="auto"`` picks: int8 on a CPU with an int8 family, else none.

    Measured with concat-embed's benchmarks: dynamic int8 beat fp32 on AVX2-only and on AVX-512 VNNI CPUs; on
    CUDA the model keeps its weights (the GPU paths are fp32 / fp16).
    """
    engines = set(torch.backends.quantized.supported_engines)
    if cuda or family is None or not {"x86", "fbgemm", "qnnpack"} & engines:
        return None
    return "int8-dynamic"


class CpuShare:
    """How many cores other processes leave free, from ``/proc/stat`` (Linux; elsewhere: all of them).

    torch's OpenMP threads wait for each other at every operator; when another process holds a
    core, a descheduled thread stalls the whole team (measured on 2 cores: 2 threads with two
    busy-loop processes ran 6x slower than idle, 1 thread 1.6x). ``threads(ceiling)`` returns the
    ceiling on an idle machine and fewer threads while other processes keep cores busy, judged
    from the CPU time the machine spent outside this process since the last sample.
    """

    MIN_INTERVAL_S = 0.5  # shorter samples are noise; keep the previous answer

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None
        self._others = 0.0

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
        own = sum(os.times()[:2])
        return time.monotonic(), busy / ticks, own

    def threads(self, ceiling: int) -> int:
        """Threads to use now: ``ceiling`` minus the cores other processes used lately (at least 1)."""
        sample = self._sample()
        if sample is None:
            return ceiling
        if self._last is not None and sample[0] - self._last[0] >= self.MIN_INTERVAL_S:
            elapsed = sample[0] - self._last[0]
            others = (sample[1] - self._last[1]) - (sample[2] - self._last[2])
            self._others = max(0.0, others / elapsed)
            self._last = sample
        elif self._last is None:
            self._last = sample
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(ceiling, round(cores - self._others)))


class ThreadBudget:
    """Lowers torch's thread count for the forward passes that run now, and puts it back after each.

    ``torch.set_num_threads`` sets the calling thread's OpenMP count and the process-wide default
    that other threads take when they first run torch, so two models running in two threads of
    one process share one setting: a pass that starts while another has lowered it would read the
    lowered count as the one to restore, and leave its thread (and threads started later) with
    fewer threads for good. Here the first pass to start records the count it finds (the ceiling);
    every pass, also one that starts while others run, lowers its own thread's count below that
    ceiling and restores the ceiling when it ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._ceiling = 1

    @contextlib.contextmanager
    def lowered(self, threads_for: Callable[[int], int]) -> Iterator[None]:
        """Run the body with ``threads_for(ceiling)`` torch threads (at most the ceiling)."""
        with self._lock:
            if self._active == 0:
                self._ceiling = torch.get_num_threads()
            self._active += 1
            threads = max(1, min(self._ceiling, threads_for(self._ceiling)))
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if torch.get_num_threads() != self._ceiling:
                    torch.set_num_threads(self._ceiling)


THREAD_BUDGET = ThreadBudget()  # one per process: the setting it guards is one per process


def backend_file(backend: str, file_name: Any) -> str:
    """Check a backend file name (``model_kwargs["file_name"]``) and return it relative to a part's folder.

    A bare name is looked up in the backend's folder (``model_quint8_avx2.onnx`` is ``onnx/model_quint8_avx2.onnx``).
    """
    if file_name is None:
        return BACKEND_DEFAULT_FILES[backend]
    suffix = Path(BACKEND_DEFAULT_FILES[backend]).suffix
    folder = Path(BACKEND_DEFAULT_FILES[backend]).parent.as_posix()
    parts = file_name.split("/") if isinstance(file_name, str) else []
    if not parts or not all(SAFE_NAME.fullmatch(part) for part in parts) or not file_name.endswith(suffix):
        raise ValueError(
            f"model_kwargs file_name = {file_name!r}: expected a {suffix} file inside the part, e.g. "
            f"{BACKEND_DEFAULT_FILES[backend]!r}"
        )
    return file_name if len(parts) > 1 else f"{folder}/{file_name}"


class ExportedTransformer(nn.Module):
    """A part's transformer run by ONNX Runtime or OpenVINO; called like the torch model, returns ``last_hidden_state``.

    The runtime is imported here, only when a backend asks for it, through ``importlib``:
    transformers imports every ``import`` statement of a remote-code file before loading it,
    so a statement would make onnxruntime and openvino required for everyone. Threads follow torch's
    setting (``torch.set_num_threads``); ONNX Runtime's idle threads sleep instead of spinning,
    so parts (and other processes) do not fight over the cores, and OpenVINO runs fewer threads
    while other processes keep cores busy (:class:`CpuShare`).

    Args:
        backend: ``"onnx"`` or ``"openvino"``.
        path: The local ``.onnx`` or OpenVINO ``.xml`` file.
        config: The part's transformers configuration (what ``Transformer.auto_model.config`` reports).
        provider: ONNX Runtime execution provider (default ``CPUExecutionProvider``).
    """

    def __init__(self, backend: str, path: str, config: PretrainedConfig, provider: str | None = None) -> None:
        super().__init__()
        self.backend, self.path, self.config = backend, path, config
        threads = torch.get_num_threads()
        if backend == "onnx":
            onnxruntime = importlib.import_module("onnxruntime")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = onnxruntime.InferenceSession(path, options, providers=[provider or "CPUExecutionProvider"])
            self.input_names = [port.name for port in self.session.get_inputs()]
            self.output_name = self.session.get_outputs()[0].name
        else:
            openvino = importlib.import_module("openvino")
            self._core = openvino.Core()
            self._model = self._core.read_model(path)
            self._compiled: dict[int, Any] = {}
            self._cpu_share = CpuShare()
            self.input_names = [port.any_name for port in self._model.inputs]
            self._openvino_session(threads)  # compile now: a broken file fails at load, not at the first call

    def _openvino_session(self, threads: int) -> Any:
        """The OpenVINO model compiled for ``threads`` threads (compiled on first use, then kept).

        Compiled in f32 (:data:`OPENVINO_PRECISION`), whatever the CPU offers. OpenVINO's thread count is fixed
        at compile time; on a busy machine one thread kept more
        of its idle rate than two (measured: 1 thread kept 50% of the idle rate, 2 threads 30-35%), so a 1-thread
        copy is compiled when CpuShare asks.
        """
        if threads not in self._compiled:
            properties = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
            properties["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISION  # not the CPU's bf16, which it picks itself
            self._compiled[threads] = self._core.compile_model(self._model, "CPU", properties)
        return self._compiled[threads]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs) -> BaseModelOutput:
        """Run the exported graph on the token ids (missing ``token_type_ids`` are zeros)."""
        features = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if features["attention_mask"] is None:
            features["attention_mask"] = torch.ones_like(input_ids)
        if features.get("token_type_ids") is None:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        feeds = {name: features[name].detach().to("cpu", torch.int64).numpy() for name in self.input_names}
        if self.backend == "onnx":
            hidden = self.session.run([self.output_name], feeds)[0]
        else:
            session = self._openvino_session(self._cpu_share.threads(torch.get_num_threads()))
            hidden = session(feeds)[session.output(0)]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden).to(input_ids.device))


def replace_transformer_model(transformer: nn.Module, model: nn.Module) -> None:
    """Put ``model`` where a Transformer module keeps its model (``model`` in 6.x, ``auto_model`` in 5.x)."""
    setattr(transformer, "model" if "model" in transformer._modules else "auto_model", model)


# --- Part IO: saving and loading one part ---


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def save_part(pipeline: nn.Sequential, output_path: str, prompts: dict[str, str] | None = None) -> None:
    """Save one part as a complete sentence-transformers model that also loads on its own.

    The modules are written with the classic ``sentence_transformers.models.*`` type names and
    classic configuration files, which sentence-transformers 5.x and 6.x both read.

    Args:
        pipeline: The part's Transformer, Pooling, (Dense...) and Normalize modules.
        output_path: The part's folder.
        prompts: Effective prompts of the part, written to its ``config_sentence_transformers.json``.
    """
    os.makedirs(output_path, exist_ok=True)
    modules_config = []
    for idx, module in enumerate(pipeline):
        class_name = type(module).__name__
        path = "" if idx == 0 else f"{idx}_{class_name}"
        module_path = os.path.join(output_path, path)
        os.makedirs(module_path, exist_ok=True)
        module.save(module_path)
        if class_name == "Transformer":
            _write_json(
                os.path.join(module_path, "sentence_bert_config.json"),
                {"max_seq_length": module.max_seq_length, "do_lower_case": False},
            )
        elif class_name == "Pooling":
            mode = pooling_mode_of(module)
            config = {"word_embedding_dimension": embedding_dimension_of(module)}
            config |= {key: mode == name for name, key in _CLASSIC_POOLING_KEYS.items()}
            config["include_prompt"] = getattr(module, "include_prompt", True)
            _write_json(os.path.join(module_path, "config.json"), config)
        modules_config.append(
            {"idx": idx, "name": str(idx), "path": path, "type": f"sentence_transformers.models.{class_name}"}
        )
    _write_json(os.path.join(output_path, "modules.json"), modules_config)
    _write_json(
        os.path.join(output_path, "config_sentence_transformers.json"),
        {"prompts": prompts or {}, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )


@contextlib.contextmanager
def _quiet_weight_loading() -> Iterator[None]:
    """transformers draws a "Loading weights" bar for every model it loads (one per part): none while parts load."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    if enabled:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def load_part(
    model_name_or_path: str,
    subfolder: str,
    spec: PartSpec,
    where: str,
    hub_kwargs: dict[str, Any],
    module_kwargs: dict[str, Any],
    runtime: dict[str, Any] | None = None,
) -> nn.Sequential:
    """Load one part (Transformer + Pooling + Normalize) from its subfolder, locally or from the Hub.

    Args:
        model_name_or_path: The combined model's folder or Hub repo id.
        subfolder: The part's folder inside it.
        spec: The part's entry in ``concat_config.json``.
        where: Location of that entry, for error messages.
        hub_kwargs: ``token``, ``cache_folder``, ``revision`` and ``local_files_only``.
        module_kwargs: Loading options for the modules, e.g. ``model_kwargs`` or ``trust_remote_code``.
        runtime: ``backend`` (``onnx`` | ``openvino``), ``file_name`` (relative to the part) and
            ``provider``: run the part's transformer from that exported file instead of torch.

    Raises:
        ValueError: If the subfolder is missing, holds an unsupported pipeline, or disagrees with ``spec``.
    """
    modules_path = InputModule.load_file_path(model_name_or_path, "modules.json", subfolder=subfolder, **hub_kwargs)
    if modules_path is None:
        raise ValueError(f"{where}.subfolder = {spec.subfolder!r}: no modules.json found in that folder")
    modules_where = f"{subfolder}/modules.json"
    modules_config = read_json(modules_path, modules_where)
    if not isinstance(modules_config, list) or not all(isinstance(entry, dict) for entry in modules_config):
        raise ValueError(f"{modules_where}: expected a list of module objects")
    # A part runs its own code only when it was built so: the combined model's trust_remote_code
    # (also inside model/processor/config kwargs) is replaced by the part's recorded choice.
    transformer_kwargs = {
        key: {k: v for k, v in value.items() if k != "trust_remote_code"} if key in _LOADER_KWARGS and value else value
        for key, value in module_kwargs.items()
    } | {"trust_remote_code": spec.trust_remote_code}
    modules = []
    for entry in modules_config:
        module_class = _st_module_class(entry.get("type", ""), modules_where)
        module_path = entry.get("path", "")
        if not isinstance(module_path, str) or not all(SAFE_NAME.fullmatch(p) for p in module_path.split("/") if p):
            raise ValueError(f"{modules_where}: path {module_path!r} must be a folder inside the part")
        module_subfolder = Path(subfolder, module_path).as_posix()
        for name in _MODULE_CONFIG_FILES:  # sentence-transformers' own readers name no file in a JSON error
            config_path = InputModule.load_file_path(model_name_or_path, name, subfolder=module_subfolder, **hub_kwargs)
            if config_path is not None:
                read_json(config_path, Path(module_subfolder, name).as_posix())
        kwargs = transformer_kwargs if module_class.__name__ == "Transformer" else {}
        with _quiet_weight_loading():
            modules.append(module_class.load(model_name_or_path, subfolder=module_subfolder, **hub_kwargs, **kwargs))
    names = [type(module).__name__ for module in modules]
    if len(names) < 3 or names[0] != "Transformer" or names[1] != "Pooling" or names[-1] != "Normalize":
        raise ValueError(f"{modules_where}: expected Transformer, Pooling, [Dense...], Normalize; got {names}")
    mode = pooling_mode_of(modules[1])
    if mode != spec.pooling:
        raise ValueError(
            f"{where}.pooling = {spec.pooling!r} but {subfolder}/{modules_config[1]['path']} uses {mode!r}"
        )
    dimension = next(d for d in map(embedding_dimension_of, reversed(modules)) if d is not None)
    if dimension != spec.dimension:
        raise ValueError(f"{where}.dimension = {spec.dimension} but the model in {subfolder!r} outputs {dimension}")
    if spec.max_seq_length is not None:
        check_token_limit(modules[0], spec.max_seq_length, where)
        modules[0].max_seq_length = spec.max_seq_length
    if runtime and runtime["backend"] != "torch":
        backend, file_name = runtime["backend"], runtime["file_name"]
        path = InputModule.load_file_path(model_name_or_path, file_name, subfolder=subfolder, **hub_kwargs)
        weights = file_name[: -len(".xml")] + ".bin" if backend == "openvino" else None
        if path is None or (
            weights and not InputModule.load_file_path(model_name_or_path, weights, subfolder=subfolder, **hub_kwargs)
        ):
            raise ValueError(
                f"part {spec.name!r}: {subfolder}/{weights if path else file_name} not found; "
                f"make it with `concat-embed export-backends MODEL --{backend}`"
            )
        transformer = modules[0]
        exported = ExportedTransformer(backend, path, transformer.auto_model.config, runtime.get("provider"))
        replace_transformer_model(transformer, exported)
    return nn.Sequential(*modules)


def runtime_options(model_kwargs: dict[str, Any], backend: Any) -> dict[str, Any]:
    """Take this module's runtime options out of ``model_kwargs`` (in place) and check them.

    ``quantization`` (``None`` | ``"auto"`` | ``"int8-dynamic"``), and for ``backend="onnx"`` /
    ``"openvino"`` sentence-transformers' ``file_name`` and ``provider``. ``"auto"`` resolves
    from this CPU's capabilities; bf16 weights on a CPU-only machine without native bf16
    are refused with a warning (they would run several times slower) and fp32 is kept.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend = {backend!r}: expected one of {list(BACKENDS)}")
    quantization = model_kwargs.pop("quantization", None)
    if quantization not in WEIGHT_QUANTIZATION:
        valid = list(WEIGHT_QUANTIZATION)
        raise ValueError(f"model_kwargs quantization = {quantization!r}: expected one of {valid}")
    file_name, provider = model_kwargs.pop("file_name", None), model_kwargs.pop("provider", None)
    if model_kwargs.pop("export", False):
        raise ValueError("model_kwargs export = True: export the parts with `concat-embed export-backends MODEL`")
    cuda = torch.cuda.is_available()
    if backend == "torch":
        if file_name is not None or provider is not None:
            raise ValueError("model_kwargs file_name / provider apply to backend='onnx' or 'openvino'")
        if quantization == "auto":
            quantization = auto_quantization(cpu_family(), cuda)
            logger.info("quantization='auto' on this machine: %s", quantization)
        dtype_key = next((key for key in ("dtype", "torch_dtype") if key in model_kwargs), None)
        dtype = model_kwargs.get(dtype_key) if dtype_key else None
        if dtype in (torch.bfloat16, "bfloat16") and not cuda and not native_bf16():
            logger.warning(
                "bf16 weights asked for, but this CPU has no native bf16 (no avx512_bf16 / amx_bf16): every "
                "matrix product would be emulated, several times slower; keeping float32. Ask for "
                "model_kwargs={'quantization': 'auto'} for this CPU's fast path."
            )
            model_kwargs.pop(dtype_key)
    else:
        if quantization == "int8-dynamic":
            example = OPENVINO_INT8_FILE if backend == "openvino" else ONNX_INT8_FILES["avx2"]
            raise ValueError(
                f"model_kwargs quantization = 'int8-dynamic' applies to backend='torch'; with backend={backend!r} "
                f"load an int8 file (model_kwargs file_name, e.g. {example!r}) or quantization='auto'"
            )
        if file_name is not None:
            file_name = backend_file(backend, file_name)
    return {"backend": backend, "quantization": quantization, "file_name": file_name, "provider": provider}


def auto_backend_file(
    model_name_or_path: str,
    subfolder: str,
    specs: list[PartSpec],
    hub_kwargs: dict[str, Any],
    backend: str,
    auto: bool,
) -> str:
    """The file a backend loads when none is named: with ``quantization="auto"`` the int8 file for
    this CPU when every part has one (ONNX: by CPU family; OpenVINO: on CPUs with VNNI), else fp32."""
    family = cpu_family()
    if backend == "onnx":
        candidate = ONNX_INT8_FILES.get(family or "")
    else:
        candidate = OPENVINO_INT8_FILE if family == "avx512_vnni" else None
    if (
        auto
        and candidate
        and all(
            InputModule.load_file_path(
                model_name_or_path, candidate, subfolder=Path(subfolder, spec.subfolder).as_posix(), **hub_kwargs
            )
            for spec in specs
        )
    ):
        return candidate
    return BACKEND_DEFAULT_FILES[backend]


# --- The sentence-transformers module ---


class ConcatEmbedding(InputModule):
    """Runs N sentence-transformers models side by side and concatenates their unit vectors.

    Each part is a complete pipeline (Transformer + Pooling + Normalize) saved in its own
    subfolder, so it also loads on its own. The output of part ``i`` is its normalized
    embedding, optionally cut to ``truncate_dim`` and re-normalized, times ``weight``.

    Use ``normalize_output=False`` (the default) to reproduce published concatenations: the
    vector has norm sqrt(sum of squared weights), and with unit weights cosine similarity equals
    the mean of the parts' cosines. Use ``normalize_output=True`` when a downstream store
    expects unit vectors for dot-product search; cosine similarities are unchanged.

    Prompts: the model-wide prompts of ``config_sentence_transformers.json`` reach every
    part; ``PartSpec.prompts`` overrides the text of a prompt name for one part. Parts with an
    identical tokenizer and prompt share one tokenization of the batch, made at the largest of
    their token limits; a part with a smaller limit reuses it only when no text exceeds that
    limit (so the result is exact) and tokenizes on its own otherwise.

    Args:
        pipelines: One ``nn.Sequential`` per part, in concatenation order.
        parts: The matching :class:`PartSpec` entries (or their dicts).
        normalize_output: L2-normalize the concatenated vector.
    """

    config_file_name: str = CONFIG_FILE
    config_keys: list[str] = ["parts", "normalize_output"]
    save_in_root: bool = True

    def __init__(
        self,
        pipelines: Sequence[nn.Sequential],
        parts: Sequence[PartSpec | dict[str, Any]],
        normalize_output: bool = False,
    ) -> None:
        super().__init__()
        specs, normalize_output = parse_concat_config(
            {
                "parts": [asdict(p) if isinstance(p, PartSpec) else p for p in parts],
                "normalize_output": normalize_output,
            },
            where="ConcatEmbedding",
        )
        if len(pipelines) != len(specs):
            raise ValueError(f"ConcatEmbedding: got {len(pipelines)} pipelines for {len(specs)} parts")
        for spec, pipeline in zip(specs, pipelines):
            check_token_limit(pipeline[0], pipeline[0].max_seq_length, f"part {spec.name!r}")
        self.pipelines = nn.ModuleList(pipelines)
        self.specs = specs
        self.normalize_output = normalize_output
        self.model_prompts: dict[str, str] = {}
        self._ambiguous_prompts: set[tuple[str, int]] = set()
        self.quantization: str | None = None
        self.backend, self.backend_file = "torch", None
        # On CPU, run with fewer torch threads while other processes keep cores busy (CpuShare).
        self.adaptive_threads = True
        self._cpu_share = CpuShare()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.cpu_chunk_bytes = CPU_CHUNK_BYTES
        self._fingerprints = [_tokenizer_fingerprint(pipeline[0]) for pipeline in self.pipelines]

    @property
    def parts(self) -> list[dict[str, Any]]:
        """The saved form of the part specs, with each part's current ``max_seq_length``."""
        return [
            asdict(spec) | {"max_seq_length": pipeline[0].max_seq_length}
            for spec, pipeline in zip(self.specs, self.pipelines)
        ]

    @property
    def shares_tokenizer(self) -> bool:
        """Whether every part tokenizes identically (same tokenizer and token limit)."""
        limits = {pipeline[0].max_seq_length for pipeline in self.pipelines}
        return len(set(self._fingerprints)) == 1 and len(limits) == 1

    @property
    def tokenizer(self) -> Any:
        """The first part's tokenizer (what ``SentenceTransformer.tokenizer`` reports)."""
        return self.pipelines[0][0].tokenizer

    @property
    def max_seq_length(self) -> int:
        """The largest token limit of the parts; setting it applies to every part."""
        return max(pipeline[0].max_seq_length for pipeline in self.pipelines)

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        for spec, pipeline in zip(self.specs, self.pipelines):
            check_token_limit(pipeline[0], value, f"part {spec.name!r}")
        for pipeline in self.pipelines:
            pipeline[0].max_seq_length = value

    @property
    def cpu_chunk_bytes(self) -> int | None:
        """Byte budget of the widest activation per CPU chunk; ``None`` runs whole batches."""
        return self._cpu_chunk_bytes

    @cpu_chunk_bytes.setter
    def cpu_chunk_bytes(self, value: int | None) -> None:
        if value is not None and not _is_positive_int(value):
            raise ValueError(f"cpu_chunk_bytes = {value!r}: expected a positive int (bytes) or None")
        self._cpu_chunk_bytes = value

    def on_model_ready(self, model: nn.Module) -> None:
        """Keep the model-wide prompts so that per-part prompt overrides can be resolved."""
        self.model_prompts = model.prompts

    def get_embedding_dimension(self) -> int:
        """Total dimension of the concatenated vector."""
        return sum(spec.output_dimension for spec in self.specs)

    get_sentence_embedding_dimension = get_embedding_dimension

    def __repr__(self) -> str:
        parts = ", ".join(f"{spec.name}={spec.output_dimension}d/{spec.pooling}" for spec in self.specs)
        return f"ConcatEmbedding({parts}, normalize_output={self.normalize_output})"

    def prompt_text_for_part(self, index: int, prompt: str | None, task: str | None = None) -> str | None:
        """The prompt text that part ``index`` receives for a resolved model-wide ``prompt``.

        sentence-transformers hands modules only the prompt text; the prompt name is recovered
        from ``task`` (``encode_query`` / ``encode_document``) or from the model-wide prompts.
        """
        if prompt is None:
            return None
        overrides = self.specs[index].prompts
        if task is not None and self.model_prompts.get(task, prompt) == prompt:
            return overrides.get(task, prompt)
        names = [name for name, text in self.model_prompts.items() if text == prompt]
        texts = {overrides.get(name, prompt) for name in names}
        if len(texts) > 1 and (prompt, index) not in self._ambiguous_prompts:
            self._ambiguous_prompts.add((prompt, index))
            logger.warning(
                "Prompt %r is the text of prompt names %s, which part %r overrides differently; using it unchanged "
                "(encode_query / encode_document name the prompt).",
                prompt,
                names,
                self.specs[index].name,
            )
        return texts.pop() if len(texts) == 1 else prompt

    def preprocess(
        self,
        inputs: Sequence[str],
        prompt: str | None = None,
        task: str | None = None,
        **kwargs,
    ) -> dict[str, Tensor]:
        """Tokenize the texts for every part, as flat ``part{i}.<feature>`` tensors.

        Raises:
            TypeError: If an input is not a string (the message names its position in the batch).
            ValueError: If a string is not valid Unicode (a lone surrogate, which no tokenizer takes).
        """
        texts = list(inputs)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"ConcatEmbedding accepts only str inputs; batch item {position} is "
                    f"{type(text).__name__}: {text!r:.80}"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(
                    f"ConcatEmbedding accepts only valid Unicode text; batch item {position} holds a lone surrogate "
                    f"at character {error.start}"
                ) from None
        tokenized: dict[tuple[str, str | None], dict[str, Tensor]] = {}
        per_part: dict[int, dict[str, Tensor]] = {}
        for index in sorted(range(len(self.pipelines)), key=lambda i: -self.pipelines[i][0].max_seq_length):
            transformer, part_prompt = self.pipelines[index][0], self.prompt_text_for_part(index, prompt, task)
            key = (self._fingerprints[index], part_prompt)
            shared = tokenized.get(key)
            if shared is None or shared["input_ids"].shape[-1] > transformer.max_seq_length:
                shared = tokenize_texts(transformer, texts, part_prompt)
                tokenized.setdefault(key, shared)
            per_part[index] = shared
        return {f"part{index}.{name}": value for index in sorted(per_part) for name, value in per_part[index].items()}

    def tokenize(self, texts: list[str], **kwargs) -> dict[str, Tensor]:
        """Alias of :meth:`preprocess` for sentence-transformers 5.x."""
        return self.preprocess(texts, **kwargs)

    def _embed_part(self, index: int, features: dict[str, Tensor]) -> Tensor:
        """Part ``index``'s shaped vector: its unit embedding, truncated and re-normalized, times its weight."""
        spec, prefix = self.specs[index], f"part{index}."
        part_features = {key[len(prefix) :]: value for key, value in features.items() if key.startswith(prefix)}
        pipeline = self.pipelines[index]
        if self.cpu_chunk_bytes is None or part_features["input_ids"].device.type != "cpu":
            embedding = pipeline(part_features)["sentence_embedding"]
        else:
            max_tokens = self.cpu_chunk_bytes // (4 * activation_width(pipeline[0]))
            chunks = row_chunks(part_features, max_tokens)
            embedding = torch.cat([pipeline(chunk)["sentence_embedding"] for chunk in chunks])
        if spec.truncate_dim is not None:
            embedding = F.normalize(embedding[..., : spec.truncate_dim], p=2, dim=-1)
        if spec.weight != 1.0:
            embedding = embedding * spec.weight
        return embedding

    def _embed_parts_on_streams(self, features: dict[str, Tensor], streams_of: Any = torch.cuda) -> list[Tensor]:
        """On CUDA, run each part on its own stream so that small parts overlap with large ones.

        ``streams_of`` is the device module that makes the streams: ``torch.cuda`` here, and
        ``torch.cpu`` (whose streams do nothing) to run the same steps on CPU.
        """
        current = streams_of.current_stream()
        streams = [streams_of.Stream() for _ in self.pipelines]
        outputs = []
        for index, stream in enumerate(streams):
            stream.wait_stream(current)
            with streams_of.stream(stream):
                outputs.append(self._embed_part(index, features))
        for stream, output in zip(streams, outputs):
            current.wait_stream(stream)
            if output.is_cuda:  # side-stream memory is not reused before the current stream is done with it
                output.record_stream(current)
        return outputs

    def forward(self, features: dict[str, Tensor], **kwargs) -> dict[str, Tensor]:
        """Run every part, shape its unit vector and write the concatenation to ``sentence_embedding``.

        On CPU with torch, the pass runs with as many torch threads as other processes leave cores
        free (:class:`CpuShare`): torch's OpenMP threads wait for each other at every operator, so a
        thread descheduled by another process stalls the whole team (measured on 2 cores with two
        busy-loop processes: 2 threads ran 6x slower than idle, 1 thread 1.6x). torch's thread count
        is shared by the threads of a process; :data:`THREAD_BUDGET` lowers it for each pass and puts
        back the count the first running pass found, also when models run in several threads at once.
        ``adaptive_threads = False`` keeps torch's setting as it is.
        """
        on_cuda = features["part0.input_ids"].is_cuda and len(self.pipelines) > 1
        if on_cuda:
            outputs = self._embed_parts_on_streams(features)
        elif self.adaptive_threads and self.backend == "torch" and not features["part0.input_ids"].is_cuda:
            with THREAD_BUDGET.lowered(self._cpu_share.threads):
                outputs = self._embed_parts_on_cpu(features)
        else:
            outputs = self._embed_parts_on_cpu(features)
        for index, output in enumerate(outputs):
            features[f"part{index}.sentence_embedding"] = output
        embedding = torch.cat(outputs, dim=-1)
        if self.normalize_output:
            embedding = F.normalize(embedding, p=2, dim=-1)
        features["sentence_embedding"] = embedding
        return features

    def _embed_parts_on_cpu(self, features: dict[str, Tensor]) -> list[Tensor]:
        """Every part's shaped vector; an exported runtime's parts run side by side (the runtimes release the GIL)."""
        if self.backend != "torch" and len(self.pipelines) > 1:
            return list(
                self._part_pool().map(lambda index: self._embed_part(index, features), range(len(self.pipelines)))
            )
        return [self._embed_part(index, features) for index in range(len(self.pipelines))]

    def _part_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """Threads that run the parts of an exported backend side by side (made on first use)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(len(self.pipelines), thread_name_prefix="concat-part")
        return self._pool

    def quantize_int8(self) -> None:
        """CPU fast path: dynamic int8 quantization (per-channel weights) of every part's Linear layers, in place.

        Chosen at load time with ``model_kwargs={"quantization": "int8-dynamic"}``. Outputs move
        slightly (STS-B Spearman -0.4 on the MiniLM pair measured by concat-embed); a quantized model cannot be saved.
        """
        if self.backend != "torch":
            raise ValueError(f"int8-dynamic quantizes torch weights; this model runs backend={self.backend!r}")
        for pipeline in self.pipelines:
            torch.ao.quantization.quantize_dynamic(
                pipeline[0].auto_model,
                {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
                dtype=torch.qint8,
                inplace=True,
            )
        self.quantization = "int8-dynamic"

    def prompts_of_part(self, index: int) -> dict[str, str]:
        """Effective prompts of part ``index``: the model-wide prompts with its overrides applied."""
        return dict(self.model_prompts) | self.specs[index].prompts

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        """Save every part into its subfolder and the part specs into ``concat_config.json``."""
        if self.quantization is not None or self.backend != "torch":
            loaded = f"quantization={self.quantization!r}" if self.quantization else f"backend={self.backend!r}"
            raise ValueError(f"cannot save a model loaded with {loaded}; load it without")
        for index, (spec, pipeline) in enumerate(zip(self.specs, self.pipelines)):
            save_part(pipeline, os.path.join(output_path, spec.subfolder), self.prompts_of_part(index))
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs,
    ) -> ConcatEmbedding:
        """Load the parts named in ``concat_config.json`` from a folder or a Hub repo.

        ``token``, ``cache_folder``, ``revision`` and ``local_files_only`` reach every part;
        so do the Transformer options sentence-transformers passes (``model_kwargs``,
        ``trust_remote_code``, ``backend``, ...).
        """
        hub_kwargs = {
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        where = Path(subfolder, CONFIG_FILE).as_posix()
        config_path = cls.load_file_path(model_name_or_path, CONFIG_FILE, subfolder=subfolder, **hub_kwargs)
        if config_path is None:
            raise ValueError(f"{where}: not found in {model_name_or_path!r}")
        specs, normalize_output = parse_concat_config(read_json(config_path, where), where)
        st_config_path = cls.load_file_path(
            model_name_or_path, "config_sentence_transformers.json", subfolder=subfolder, **hub_kwargs
        )
        module_kwargs = {key: value for key, value in kwargs.items() if key != "init_defaults"}
        model_kwargs = dict(module_kwargs.get("model_kwargs") or {})
        runtime = runtime_options(model_kwargs, module_kwargs.get("backend") or "torch")
        if "backend" in module_kwargs:
            module_kwargs["backend"] = (
                "torch"  # the parts' Transformer modules load torch; an exported graph replaces it
            )
        if "model_kwargs" in module_kwargs:
            module_kwargs["model_kwargs"] = model_kwargs
        if runtime["backend"] != "torch" and runtime["file_name"] is None:
            runtime["file_name"] = auto_backend_file(
                model_name_or_path, subfolder, specs, hub_kwargs, runtime["backend"], runtime["quantization"] == "auto"
            )
        pipelines = [
            load_part(
                model_name_or_path,
                Path(subfolder, spec.subfolder).as_posix(),
                spec,
                f"{where}: parts[{index}]",
                hub_kwargs,
                module_kwargs,
                runtime,
            )
            for index, spec in enumerate(specs)
        ]
        module = cls(pipelines, specs, normalize_output=normalize_output)
        module.backend = runtime["backend"]
        module.backend_file = runtime["file_name"]
        if runtime["quantization"] == "int8-dynamic":
            module.quantize_int8()
        if st_config_path is not None:  # until on_model_ready (sentence-transformers >= 6) hands over the live ones
            st_config = read_json(st_config_path, "config_sentence_transformers.json")
            prompts = st_config.get("prompts") if isinstance(st_config, dict) else None
            module.model_prompts = dict(prompts) if isinstance(prompts, dict) else {}
        return module


# --- The transformers AutoModel route ---


class ConcatConfig(PretrainedConfig):
    """transformers configuration of the ``AutoModel`` route; the parts stay in their subfolders."""

    model_type = "concat-embedding"


class ConcatModel(PreTrainedModel):
    """``AutoModel`` route: ``model(**tokenizer(texts, ...))`` returns the concatenated embeddings.

    Available when all parts share one tokenizer (saved at the model root). Loading assembles
    the parts from their subfolders through :class:`ConcatEmbedding`; prompts are the caller's job.
    """

    config_class = ConcatConfig
    base_model_prefix = "concat"

    def __init__(self, config: ConcatConfig, concat: ConcatEmbedding | None = None) -> None:
        super().__init__(config)
        self.concat = concat

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *args, **kwargs) -> ConcatModel:
        """Assemble the model from the parts of a sentence-transformers folder or Hub repo."""
        hub_keys = ("token", "cache_dir", "revision", "local_files_only")
        hub = {key: kwargs[key] for key in hub_keys if key in kwargs}
        config = kwargs.pop("config", None) or ConcatConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        model_kwargs = {key: kwargs[key] for key in ("torch_dtype", "dtype") if key in kwargs}
        concat = ConcatEmbedding.load(
            str(pretrained_model_name_or_path),
            token=hub.get("token"),
            cache_folder=hub.get("cache_dir"),
            revision=hub.get("revision"),
            local_files_only=hub.get("local_files_only", False),
            model_kwargs=model_kwargs,
        )
        return cls(config, concat).eval()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        **kwargs,
    ) -> Tensor:
        """Return the ``[batch, total_dimension]`` concatenated embeddings."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {key: value for key, value in inputs.items() if value is not None}
        if "attention_mask" not in inputs:
            inputs["attention_mask"] = torch.ones_like(input_ids)
        features = {
            f"part{index}.{key}": value
            for index, pipeline in enumerate(self.concat.pipelines)
            for key, value in inputs.items()
            if key != "token_type_ids" or "token_type_ids" in pipeline[0].tokenizer.model_input_names
        }
        return self.concat(features)["sentence_embedding"]
