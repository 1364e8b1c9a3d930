"""The teacher's vectors of the training texts: encoded once, cached beside the output with the identity of the
teacher and the texts, resumable chunk by chunk; and the rotation that aligns them with the student.

The cache lives in ``.<output>.distill/`` beside the output folder (or in a ``--cache`` folder that several
students of one teacher share). Its ``identity.json`` pins what the vectors
were encoded from (the teacher's content hash, the texts' sha256, which texts were chosen): a rerun with the
same inputs reuses the vectors, a changed input is refused with what changed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hub_export.folder import read_json, write_json

logger = logging.getLogger(__name__)

CACHE_KIND = "concat-embed distill cache"
IDENTITY_FILE = "identity.json"


def work_folder(output: Path) -> Path:
    """Where a distillation into ``output`` keeps its teacher vectors and checkpoints (hidden, beside it)."""
    return output.parent / f".{output.name}.distill"


def open_cache(work: Path, identity: dict[str, Any]) -> Path:
    """A folder of this tool's for inputs ``identity`` (a work folder or a shared ``--cache``): created, or reused
    when it was made for the same inputs.

    Raises:
        ValueError: If the folder is a link, holds files this tool did not write, or was made for other inputs
            (naming what changed); nothing is changed then.
    """
    record = work / IDENTITY_FILE
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise ValueError(f"{work} is a link or a file; move it away (distill keeps its teacher vectors there)")
    if work.is_dir():
        previous = read_json(record) if record.is_file() and not record.is_symlink() else None
        if not isinstance(previous, dict) or previous.get("kind") != CACHE_KIND:
            raise ValueError(f"{work} holds files concat-embed did not write; move it away or choose another folder")
        if previous.get("identity") != identity:
            old = previous.get("identity") if isinstance(previous.get("identity"), dict) else {}
            changed = {k: (old.get(k), v) for k, v in identity.items() if old.get(k) != v}
            raise ValueError(
                f"{work} caches the teacher's vectors of other inputs: {changed} (cached, now) changed since; "
                f"use another output or cache folder, or delete {work} to encode anew"
            )
        return work
    work.mkdir(parents=True)
    write_json(record, {"kind": CACHE_KIND, "identity": identity})
    return work


def procrustes(targets: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """The orthogonal ``R`` that brings ``targets @ R`` closest to ``outputs`` (least squares): a rotation (and
    reflection) that leaves every cosine between targets unchanged."""
    u, _, vt = np.linalg.svd(np.asarray(targets, dtype=np.float64).T @ np.asarray(outputs, dtype=np.float64))
    return (u @ vt).astype(np.float32)
