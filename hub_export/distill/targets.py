"""Where a distillation keeps its work, and the rotation that aligns the teacher's vectors with the student.

The teacher's vectors of the training texts are cached in ``.<output>.distill/`` beside the output folder (or in
a ``--cache`` folder that several students of one teacher share), encoded chunk by chunk
(:func:`hub_export.encoding.cached_vectors`). Its ``identity.json`` (:func:`hub_export.outdir.cache_folder`)
pins what they were encoded from (the teacher's content hash, the texts' sha256, which texts were chosen): a
rerun with the same inputs reuses them, a changed input is refused with what changed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def work_folder(output: Path) -> Path:
    """Where a distillation into ``output`` keeps its teacher vectors and checkpoints (hidden, beside it)."""
    return output.parent / f".{output.name}.distill"


def procrustes(targets: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """The orthogonal ``R`` that brings ``targets @ R`` closest to ``outputs`` (least squares): a rotation (and
    reflection) that leaves every cosine between targets unchanged."""
    u, _, vt = np.linalg.svd(np.asarray(targets, dtype=np.float64).T @ np.asarray(outputs, dtype=np.float64))
    return (u @ vt).astype(np.float32)
