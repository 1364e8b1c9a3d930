"""Part sources: resolve a local folder or a Hub id at a pinned revision (``org/name@rev``), check
its weights, and load it as a part pipeline (Transformer + Pooling [+ Dense...] + Normalize).

Heavy imports (huggingface_hub, sentence-transformers) happen in the functions that need them,
so ``check_repo_id`` is cheap to import (``push --dry-run``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hub_export.folder import CARD_FILE, MODULES_FILE, PICKLE_PATTERNS, ST_CONFIG_FILE, read_json

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")  # used with fullmatch
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
            f"repo id {repo_id!r} is not a Hub repo id: expected org/name "
            "(letters, digits, '-', '_', '.'; no '--' or '..'; at most 96 characters)"
        )


def read_card_license(folder: Path) -> str | None:
    """The ``license:`` of a model card's YAML front matter, if any."""
    card = folder / CARD_FILE
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
    from huggingface_hub import snapshot_download

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


def read_own_prompts(folder: Path) -> dict[str, str]:
    """The prompts a sentence-transformers part folder ships (its ``config_sentence_transformers.json``), or {}.

    Raises:
        ValueError: Naming the file when its ``prompts`` is not an object of texts.
    """
    path = folder / ST_CONFIG_FILE
    if not path.is_file():
        return {}
    config = read_json(path)
    prompts = config.get("prompts", {}) if isinstance(config, dict) else None
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ValueError(f"{path}: 'prompts' must be an object mapping prompt names to texts")
    return prompts


def weights_folder(folder: Path) -> Path:
    """The folder whose weights a part's Transformer loads: the first module of a sentence-transformers folder."""
    modules_path = folder / MODULES_FILE
    if not modules_path.is_file():
        return folder
    modules = read_json(modules_path)
    first = modules[0].get("path", "") if isinstance(modules, list) and modules and isinstance(modules[0], dict) else ""
    if not isinstance(first, str) or Path(first).is_absolute() or ".." in Path(first).parts:
        raise ValueError(f"{modules_path}: modules[0].path = {first!r} must be a folder inside the model")
    return folder / first


def check_index(index: Path, source: str) -> None:
    """Refuse a sharded-weights index whose ``weight_map`` names anything but safetensors files inside its folder.

    Raises:
        ValueError: Naming the part, the index and the file it points at.
    """
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"part source {source!r}: {index.name} has no weight_map")
    for name in sorted(set(weight_map.values()), key=str):
        target = index.parent / name if isinstance(name, str) else None
        if (
            target is None
            or not name.endswith(".safetensors")
            or Path(name).is_absolute()
            or ".." in Path(name).parts
            or target.is_symlink()
            or not target.is_file()
        ):
            raise ValueError(
                f"part source {source!r}: {index.name} points at {name!r}, which is not a safetensors file in its "
                "folder; only safetensors weights are accepted unless --allow-pickle"
            )


def check_weights(folder: Path, source: str, allow_pickle: bool) -> None:
    """Refuse a part whose loaded weights are pickles (unless allowed); stray files elsewhere do not count.

    transformers loads ``model.safetensors`` (or its sharded index) from the Transformer's folder
    when present, else ``pytorch_model.bin``: that folder is what is checked.
    """
    weights = weights_folder(folder)
    if (weights / "model.safetensors").is_file():
        return
    index = weights / "model.safetensors.index.json"
    if index.is_file():  # what transformers loads is what the index points at: check each file it names
        if not allow_pickle:
            check_index(index, source)
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


def load_source(path: str | Path, pooling: str | None = None, trust_remote_code: bool = False) -> nn.Sequential:
    """Load a part as Transformer + Pooling (+ Dense...) + Normalize.

    A sentence-transformers folder (with ``modules.json``) keeps its own pooling and dense
    layers and gets a Normalize appended if it lacks one. A plain transformers folder (with
    ``config.json``) gets ``pooling`` (default ``cls``) and a Normalize.

    Args:
        path: The local folder.
        pooling: Pooling mode for a plain transformers folder; for a sentence-transformers
            folder it must match the folder's own pooling when given.
        trust_remote_code: Let the folder's own code (``auto_map``) run; off unless asked for.

    Raises:
        ValueError: If the folder is neither kind, the pooling is unknown or conflicts, or the
            pipeline has modules a part cannot hold.
    """
    from sentence_transformers import SentenceTransformer
    from torch import nn

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers 5.x
        from sentence_transformers.models import Normalize, Pooling, Transformer

    from hub_export.modeling import POOLING_MODES, embedding_dimension_of, pooling_mode_of

    path = Path(path)
    if pooling is not None and pooling not in POOLING_MODES:
        raise ValueError(f"{path}: unknown pooling {pooling!r}; valid modes: {list(POOLING_MODES)}")
    if (path / MODULES_FILE).is_file():
        modules = list(SentenceTransformer(str(path), device="cpu", trust_remote_code=trust_remote_code))
        names = [type(module).__name__ for module in modules]
        if len(modules) < 2 or names[0] != "Transformer" or names[1] != "Pooling":
            raise ValueError(f"{path}/modules.json: a part must start with Transformer, Pooling; got {names}")
        if unsupported := [name for name in names[2:] if name not in ("Dense", "Normalize")]:
            raise ValueError(
                f"{path}/modules.json: unsupported modules {unsupported}; allowed after Pooling: Dense, Normalize"
            )
        mode = pooling_mode_of(modules[1])
        if pooling is not None and pooling != mode:
            raise ValueError(f"{path}: --pooling {pooling!r} conflicts with the folder's own pooling {mode!r}")
        modules = [module for module in modules if not isinstance(module, Normalize)] + [Normalize()]
        return nn.Sequential(*modules)
    if (path / "config.json").is_file():
        transformer = Transformer.load(str(path), trust_remote_code=trust_remote_code)
        mode = pooling or "cls"
        return nn.Sequential(transformer, Pooling(embedding_dimension_of(transformer), pooling_mode=mode), Normalize())
    raise ValueError(f"{path}: not a model folder (no modules.json or config.json)")
