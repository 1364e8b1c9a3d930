"""The model-folder format: its file names, JSON read and written one way, and what a folder is.

Every command that reads a folder written by another one imports this module, not the command
that wrote the file (so nothing loads a trainer to read a record). It is torch-free.

- Names: :data:`CONFIG_FILE` (the parts), :data:`COMPRESSION_FILE` (a projection after them),
  :data:`VERIFICATION_FILE`, :data:`BACKENDS_FILE` (exported runtimes), :data:`DISTILLATION_FILE`
  (a plain model distilled from a combined one), the card and the build record.
- JSON: :func:`read_json` (errors name the file, line and column) and :func:`write_json` (UTF-8,
  indent 2, a final newline, never a non-finite number).
- Questions about a folder: :func:`is_combined`, :func:`is_compressed`, :func:`is_distilled`, :func:`has_projection`,
  :func:`compressed_dims`, :func:`read_projection`, :func:`int8_ranges`, :func:`check_verified`,
  :func:`exported_files`, :func:`part_folders`, :func:`modeling_version`.
- Publishing: the allowlist of model files (:func:`model_files`) and their :func:`content_hash`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

MODULES_FILE = "modules.json"
REMOTE_CODE_FILE = "modeling.py"
CONFIG_FILE = "concat_config.json"
ST_CONFIG_FILE = "config_sentence_transformers.json"
CARD_FILE = "README.md"
VERIFICATION_FILE = "verification.json"
COMPRESSION_FILE = "compression.json"
BACKENDS_FILE = "backends.json"
DISTILLATION_FILE = "distillation.json"
# A distilled folder's held-out texts and teacher vectors, for `verify` on the machine that distilled it: never
# published (not on the allowlist), never hashed.
HELD_OUT_FILE = "distillation-heldout.npz"
BUILD_RECORD = ".concat-embed-build.json"
DENSE_DIR, NORMALIZE_DIR = "1_Dense", "2_Normalize"
# Written into a built folder later by other commands of this tool (and so replaced by a rebuild).
LATER_FILES = (VERIFICATION_FILE, CARD_FILE)
# The AutoModel route's root files; it returns the concatenation without a projection, so a
# compressed folder leaves them out.
AUTO_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# Names a part folder may not take: the folder's own files and folders (compared case-insensitively).
RESERVED_NAMES = frozenset(
    name.casefold()
    for name in (
        MODULES_FILE, REMOTE_CODE_FILE, CONFIG_FILE, ST_CONFIG_FILE, CARD_FILE, VERIFICATION_FILE, COMPRESSION_FILE,
        BACKENDS_FILE, DISTILLATION_FILE, BUILD_RECORD, DENSE_DIR, NORMALIZE_DIR, "config.json", "onnx", "openvino",
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
        "sentence_bert_config.json", "model.safetensors", "1_Pooling", "2_Dense", "3_Normalize",
    )
)  # fmt: skip
# The remote code's format version (``MODELING_VERSION = N`` in modeling.py). Version 2 reads
# ``parts[i].code_ranges``; a modeling.py without the marker predates it.
MODELING_VERSION_LINE = re.compile(r"^MODELING_VERSION = (\d+)$", re.MULTILINE)

ALLOWED = [
    MODULES_FILE,
    REMOTE_CODE_FILE,
    CONFIG_FILE,
    COMPRESSION_FILE,
    DISTILLATION_FILE,
    ST_CONFIG_FILE,
    "config.json",
    CARD_FILE,
    VERIFICATION_FILE,
    "sentence_bert_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    # Exported runtimes in each part's onnx/ and openvino/ folders (concat-embed export-backends)
    BACKENDS_FILE,
    "model.onnx",
    "model_q*.onnx",
    "openvino_model.xml",
    "openvino_model.bin",
    "openvino_model_q*.xml",
    "openvino_model_q*.bin",
]
# The one list of pickle weight files: never downloaded, accepted or published unless --allow-pickle.
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]
PICKLE_INDEX = "pytorch_model.bin.index.json"
UNHASHED = {CARD_FILE, VERIFICATION_FILE}


def read_json(path: str | os.PathLike, where: str | None = None) -> Any:
    """Decode a JSON file; invalid JSON raises ``ValueError`` naming the file, line and column.

    The package's one reader of JSON files (``modeling.py`` keeps its own copy: it ships alone as remote code).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{where or path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as UTF-8 JSON (indent 2, a final newline): the package's one JSON writer.

    Raises:
        ValueError: If ``data`` holds a NaN or an infinity (JSON has none; nothing is written).
    """
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError(f"{path}: refusing to write a non-finite number (NaN or inf) as JSON") from None
    path = Path(path)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def check_model_folder(model_dir: str | Path, students: bool = False) -> None:
    """Refuse a path that is not a combined model folder (no ``concat_config.json``), or, with ``students``,
    not a plain model distilled from one either (no ``distillation.json``).

    Raises:
        ValueError: Naming the folder.
    """
    if not is_combined(model_dir) and not (students and is_distilled(model_dir)):
        also = f" or a distilled model folder (no {DISTILLATION_FILE})" if students else ""
        raise ValueError(f"{model_dir}: not a combined model folder (no {CONFIG_FILE}){also}")


def is_combined(model_dir: str | Path) -> bool:
    """Whether a local folder is a combined model (it has ``concat_config.json``)."""
    return (Path(model_dir) / CONFIG_FILE).is_file()


def is_compressed(model_dir: str | Path) -> bool:
    """Whether a local folder is a compressed combined model (a projection after the parts)."""
    return (Path(model_dir) / COMPRESSION_FILE).is_file()


def is_distilled(model_dir: str | Path) -> bool:
    """Whether a local folder is a plain model distilled from a combined one (``distillation.json``)."""
    return (Path(model_dir) / DISTILLATION_FILE).is_file()


def compression_record(model_dir: str | Path) -> dict[str, Any] | None:
    """The ``compression.json`` of a folder (its ``dims`` checked), or None when it is not compressed.

    Raises:
        ValueError: If the record is not an object whose ``dims`` are strictly decreasing positive integers.
    """
    path = Path(model_dir) / COMPRESSION_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    dims = record.get("dims") if isinstance(record, dict) else None
    if (
        not isinstance(dims, list)
        or not dims
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)
        or any(a <= b for a, b in zip(dims, dims[1:]))
    ):
        raise ValueError(f"{path}: 'dims' must be a list of strictly decreasing positive integers, got {dims!r}")
    return record


def compressed_dims(model_dir: str | Path) -> list[int]:
    """The Matryoshka dimensions a compressed folder records (largest first), or [] for any other folder."""
    if not Path(model_dir).is_dir():
        return []
    record = compression_record(model_dir)
    return list(record["dims"]) if record else []


def read_projection(model_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The stored ``(W, b)`` (float64) of a compressed folder's ``Dense``, or None for an uncompressed one."""
    if not is_compressed(model_dir):
        return None
    from safetensors.numpy import load_file

    tensors = load_file(str(Path(model_dir) / DENSE_DIR / "model.safetensors"))
    return tensors["linear.weight"].astype(np.float64), tensors["linear.bias"].astype(np.float64)


def int8_ranges(model_dir: str | Path, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The calibrated ``(low, high)`` of a compressed folder at Matryoshka dimension ``dim``, or None.

    Raises:
        ValueError: If the stored ranges are not ``dim`` finite numbers each with low <= high.
    """
    record = compression_record(model_dir)
    entry = (record.get("int8_ranges") or {}).get(str(dim)) if record else None
    if entry is None:
        return None
    try:
        low, high = np.asarray(entry["low"], dtype=np.float64), np.asarray(entry["high"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        low = high = np.empty(0)
    if low.shape != (dim,) or high.shape != (dim,) or not np.isfinite([low, high]).all() or (low > high).any():
        path = Path(model_dir) / COMPRESSION_FILE
        raise ValueError(f"{path}: int8_ranges[{dim!r}] must hold {dim} finite low <= high values; run calibrate again")
    return low, high


def check_verified(model_dir: str | Path) -> None:
    """Raise unless ``verification.json`` says the folder, as it is now, passed ``verify``.

    Raises:
        ValueError: Saying whether the folder is unverified, failed, or changed since.
    """
    model_dir = Path(model_dir)
    record_path = model_dir / VERIFICATION_FILE
    if not record_path.is_file():
        raise ValueError(f"{model_dir} is not verified: run `concat-embed verify {model_dir}` (or pass --skip-verify)")
    record = read_json(record_path)
    if not isinstance(record, dict) or record.get("passed") is not True:
        raise ValueError(f"{model_dir} failed verification; fix it or pass --skip-verify")
    if record.get("content_sha256") != content_hash(model_dir):
        raise ValueError(f"{model_dir} changed since it was verified: run `concat-embed verify {model_dir}` again")


def exported_files(model_dir: str | Path) -> dict[str, Any]:
    """The file entries of a folder's ``backends.json`` (``{}`` when nothing was exported).

    Raises:
        ValueError: If ``files`` is not an object of file entries.
    """
    path = Path(model_dir) / BACKENDS_FILE
    if not path.is_file():
        return {}
    record = read_json(path)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        raise ValueError(f"{path}: 'files' must be an object of file entries")
    return files


def part_folders(model: str | Path) -> list[str] | None:
    """The part subfolders of a local combined model folder, or None for anything else (a Hub id, a plain model)."""
    folder = Path(model)
    try:
        modules = json.loads((folder / MODULES_FILE).read_text(encoding="utf-8"))
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if not (isinstance(modules, list) and modules and modules[0].get("type") == "modeling.ConcatEmbedding"):
            return None
        return [part["subfolder"] for part in config["parts"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def modeling_version(model_dir: str | Path) -> int:
    """The format version of a folder's ``modeling.py`` (its ``MODELING_VERSION`` line; 1 without one, 0 if absent)."""
    path = Path(model_dir) / REMOTE_CODE_FILE
    if not path.is_file():
        return 0
    match = MODELING_VERSION_LINE.search(path.read_text(encoding="utf-8", errors="replace"))
    return int(match.group(1)) if match else 1


def has_projection(model: Any) -> bool:
    """Whether a loaded model runs modules after its combined module (a compressed model's ``Dense`` + ``Normalize``):
    its output is one projected vector, without the parts' columns."""
    return any(type(module).__name__ == "Dense" for module in list(model)[1:])


def check_json_files(model_dir: str | Path) -> None:
    """Read every JSON file of a local model folder, so that an invalid one is named (file, line, column).

    sentence-transformers and transformers read their configuration files without naming the one that
    fails ("Expecting property name ...: line 1 column 14"). Hub ids and missing paths are left alone.

    Raises:
        ValueError: Naming the first invalid file.
    """
    root = Path(model_dir)
    if not root.is_dir():
        return
    for relative in model_files(root, allow_pickle=True):
        if relative.endswith(".json"):
            read_json(root / relative, relative)


def load_model(model: str | Path, **kwargs: Any) -> Any:
    """``SentenceTransformer(model, trust_remote_code=True, **kwargs)`` after :func:`check_json_files`.

    The remote code that runs is the folder's own ``modeling.py`` (or, for a Hub id, the repo's); each
    part still runs its own code only when it was built so.
    """
    from sentence_transformers import SentenceTransformer

    check_json_files(model)
    return SentenceTransformer(str(model), **({"trust_remote_code": True} | kwargs))


def cache_home() -> Path:
    """Where concat-embed caches what it builds or encodes: ``$CONCAT_EMBED_CACHE`` or ``~/.cache/concat-embed``."""
    return Path(os.environ.get("CONCAT_EMBED_CACHE", Path.home() / ".cache" / "concat-embed"))


def is_finite_number(value: Any) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def model_files(model_dir: str | Path, allow_pickle: bool = False) -> list[str]:
    """Relative paths of the files to publish: allowlisted names, no hidden folders, at most 3 levels deep.

    Only regular files count: symbolic links (to files or folders) are neither listed nor followed.
    Everything else (``.env``, keys, tokens, caches, ``.git``, notebooks, pickles unless
    ``allow_pickle``) is left out.
    """
    root = Path(model_dir)
    patterns = ALLOWED + ([*PICKLE_PATTERNS, PICKLE_INDEX] if allow_pickle else [])
    selected = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = Path(folder)
        dirs[:] = [name for name in dirs if not name.startswith(".") and name != "__pycache__"]
        for name in files:
            path = base / name
            relative = path.relative_to(root)
            if name.startswith(".") or len(relative.parts) > 3 or not stat.S_ISREG(path.lstat().st_mode):
                continue
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                selected.append(relative.as_posix())
    return sorted(selected)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def content_hash(model_dir: str | Path) -> str:
    """sha256 over the model files (without the card and the verification record)."""
    digest = hashlib.sha256()
    for relative in model_files(model_dir, allow_pickle=True):
        if relative in UNHASHED:
            continue
        digest.update(relative.encode() + b"\0" + bytes.fromhex(file_sha256(Path(model_dir) / relative)))
    return digest.hexdigest()
