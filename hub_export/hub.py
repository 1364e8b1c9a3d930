"""Resolve part sources: local folders, or Hub ids at pinned revisions (``org/name@rev``)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download

from hub_export.modeling import read_json

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")  # used with fullmatch
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
SKIPPED_PATTERNS = ["*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.gguf", "coreml/*"]


@dataclass
class ResolvedSource:
    """A part source on local disk, with its provenance."""

    path: Path
    source: str
    revision: str | None
    license: str | None


def check_repo_id(repo_id: str) -> None:
    """Refuse a malformed Hub repo id before anything is written or sent."""
    if (
        not isinstance(repo_id, str)
        or not REPO_ID.fullmatch(repo_id)
        or "--" in repo_id
        or ".." in repo_id
        or len(repo_id) > 96
    ):
        raise ValueError(
            f"--repo-id {repo_id!r} is not a Hub repo id: expected org/name "
            "(letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters)"
        )


def read_card_license(folder: Path) -> str | None:
    """The ``license:`` of a model card's YAML front matter, if any."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    front = text.split("---", 2)[1]
    match = re.search(r"^license:\s*(\S+)\s*$", front, flags=re.MULTILINE)
    return match.group(1).strip("'\"") if match else None


def resolve_source(
    source: str,
    token: str | None = None,
    cache_dir: str | None = None,
    allow_pickle: bool = False,
) -> ResolvedSource:
    """Return a local folder for ``source``, downloading ``org/name[@revision]`` from the Hub.

    The download honours ``HF_ENDPOINT``, ``HF_TOKEN`` (or ``token``), ``cache_dir`` and
    ``HF_HUB_OFFLINE``; the resolved commit sha is recorded. Pickle weights are neither
    downloaded nor accepted unless ``allow_pickle``.

    Raises:
        ValueError: If the source is neither an existing folder nor a valid Hub id, or if it
            has no safetensors weights and pickles are not allowed.
    """
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ValueError(f"part source {source!r} is a file; expected a model folder or a Hub id")
        check_weights(local, source, allow_pickle)
        # Only the folder's name is recorded: a local path is machine-specific and gets published.
        return ResolvedSource(local, local.resolve().name, None, read_card_license(local))
    repo_id, _, revision = source.partition("@")
    if not REPO_ID.fullmatch(repo_id):
        raise ValueError(f"part source {source!r} is neither an existing folder nor a Hub id like org/name[@revision]")
    path = Path(
        snapshot_download(
            repo_id,
            revision=revision or None,
            cache_dir=cache_dir,
            token=token,
            ignore_patterns=SKIPPED_PATTERNS + ([] if allow_pickle else PICKLE_PATTERNS),
        )
    )
    check_weights(path, source, allow_pickle)
    logger.info("Resolved %s to %s@%s", source, repo_id, path.name)
    return ResolvedSource(path, repo_id, path.name, read_card_license(path))


def weights_folder(folder: Path) -> Path:
    """The folder whose weights a part's Transformer loads: the first module of a sentence-transformers folder."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return folder
    modules = read_json(modules_path)
    first = modules[0].get("path", "") if isinstance(modules, list) and modules and isinstance(modules[0], dict) else ""
    if not isinstance(first, str) or Path(first).is_absolute() or ".." in Path(first).parts:
        raise ValueError(f"{modules_path}: modules[0].path = {first!r} must be a folder inside the model")
    return folder / first


def check_weights(folder: Path, source: str, allow_pickle: bool) -> None:
    """Refuse a part whose loaded weights are pickles (unless allowed); stray files elsewhere do not count.

    transformers loads ``model.safetensors`` (or its sharded index) from the Transformer's folder
    when present, else ``pytorch_model.bin``: that folder is what is checked.
    """
    weights = weights_folder(folder)
    if any((weights / name).is_file() for name in SAFETENSORS_FILES):
        return
    pickles = sorted(p.name for pattern in PICKLE_PATTERNS for p in weights.glob(pattern) if p.is_file())
    if allow_pickle and pickles:
        return
    where = "" if weights == folder else f" (in {weights.relative_to(folder).as_posix()}/)"
    raise ValueError(
        f"part source {source!r} has no safetensors weights{where}"
        + (f" (only {pickles}); pass --allow-pickle to accept pickle weights" if pickles else "")
        + ("" if pickles or allow_pickle else "; only safetensors weights are accepted unless --allow-pickle")
    )
