"""Which files of a model folder are model files (the push allowlist) and their content hash."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from pathlib import Path

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
]
PICKLES = ["pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json"]
UNHASHED = {"README.md", "verification.json"}


def model_files(model_dir: str | Path, allow_pickle: bool = False) -> list[str]:
    """Relative paths of the files to publish: allowlisted names, no hidden folders, at most 3 levels deep.

    Only regular files count: symbolic links (to files or folders) are neither listed nor followed.
    Everything else (``.env``, keys, tokens, caches, ``.git``, notebooks, pickles unless
    ``allow_pickle``) is left out.
    """
    root = Path(model_dir)
    patterns = ALLOWED + (PICKLES if allow_pickle else [])
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
