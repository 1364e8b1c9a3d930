"""Resolve part sources: local folders, or Hub ids at pinned revisions (``org/name@rev``)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]
SKIPPED_PATTERNS = ["*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.gguf", "coreml/*"]


@dataclass
class ResolvedSource:
    """A part source on local disk, with its provenance."""

    path: Path
    source: str
    revision: str | None
    license: str | None


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
        return ResolvedSource(local, str(local), None, read_card_license(local))
    repo_id, _, revision = source.partition("@")
    if not REPO_ID.match(repo_id):
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


def check_weights(folder: Path, source: str, allow_pickle: bool) -> None:
    """Refuse a part whose weights are only pickles (unless allowed)."""
    if any(folder.rglob("*.safetensors")):
        return
    pickles = [p.name for pattern in PICKLE_PATTERNS for p in folder.rglob(pattern)]
    if allow_pickle and pickles:
        return
    raise ValueError(
        f"part source {source!r} has no safetensors weights"
        + (f" (only {sorted(set(pickles))}); pass --allow-pickle to accept pickle weights" if pickles else "")
        + ("" if pickles or allow_pickle else "; only safetensors weights are accepted unless --allow-pickle")
    )
