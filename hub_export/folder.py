"""Which files of a model folder are model files (the push allowlist) and their content hash."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

ALLOWED = [
    "modules.json",
    "modeling.py",
    "concat_config.json",
    "compression.json",
    "config_sentence_transformers.json",
    "config.json",
    "README.md",
    "verification.json",
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
    "backends.json",
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
UNHASHED = {"README.md", "verification.json"}


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


def check_model_folder(model_dir: str | Path) -> None:
    """Refuse a path that is not a combined model folder (no ``concat_config.json``).

    Raises:
        ValueError: Naming the folder.
    """
    if not (Path(model_dir) / "concat_config.json").is_file():
        raise ValueError(f"{model_dir}: not a combined model folder (no concat_config.json)")


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
