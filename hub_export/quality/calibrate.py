"""``concat-embed calibrate``: ranges for storing vectors as int8/int4 codes, from a calibration corpus."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hub_export.data import read_corpus_texts
from hub_export.encoding import encode_stage
from hub_export.folder import (
    COMPRESSION_FILE,
    CONFIG_FILE,
    REMOTE_CODE_FILE,
    VERIFICATION_FILE,
    check_model_folder,
    compression_record,
    is_compressed,
    load_model,
    modeling_version,
    read_json,
    write_json,
)
from hub_export.modeling import LEGACY_CODE_RANGES
from hub_export.quality.codes import dimension_ranges, part_ranges
from hub_export.vectors import unit_rows

logger = logging.getLogger(__name__)

CODE_RANGES_VERSION = 2  # the first modeling.py version that reads parts[i].code_ranges


def calibrate_folder(
    model_dir: str | Path,
    corpus: str | Path,
    limit: int | None = 2000,
    dims: dict[str, int] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """Encode a corpus sample as documents, compute per-part ranges and store them in ``concat_config.json``.

    A compressed model (one projected vector) gets whole-vector per-dimension int8 ranges per
    Matryoshka dimension in ``compression.json`` instead.

    Returns:
        ``{part name: {scheme: {"low", "high", "dims"}}}`` as stored (``{"<k>d": {"int8": ...}}`` when compressed).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit = {limit!r}: expected a positive integer or None (all texts)")
    model_dir = Path(model_dir)
    check_model_folder(model_dir)
    compressed = is_compressed(model_dir)
    if compressed and dims:
        raise ValueError(f"{model_dir} is compressed: dims do not apply (ranges are stored per Matryoshka dimension)")
    version = modeling_version(model_dir)  # a missing modeling.py (0) fails at load, as for any folder
    if not compressed and 0 < version < CODE_RANGES_VERSION:
        raise ValueError(
            f"{model_dir / REMOTE_CODE_FILE} is from an older concat-embed (version {version}) that would not read "
            "the ranges (parts[i].code_ranges): rebuild the folder with `concat-embed build ... --out` first"
        )
    texts = read_corpus_texts(corpus, limit)
    model = load_model(model_dir, device="cpu")
    embeddings = encode_stage(model.encode_document, texts, "calibration sample (documents)", progress)
    if compressed:  # one vector, no part columns: per-dimension ranges of the whole vector
        result = calibrate_compressed(model_dir, embeddings)
        _invalidated(model_dir, COMPRESSION_FILE)
        return result
    result = part_ranges(embeddings, model[0].specs, dims)
    config_path = model_dir / CONFIG_FILE
    config = read_json(config_path)
    for part in config["parts"]:
        part.pop(LEGACY_CODE_RANGES, None)
        part["code_ranges"] = result[part["name"]]
    write_json(config_path, config)
    _invalidated(model_dir, CONFIG_FILE)
    logger.info("Calibrated %s on %d texts", model_dir, len(embeddings))
    return result


def calibrate_compressed(model_dir: Path, embeddings: np.ndarray) -> dict[str, dict[str, Any]]:
    """Store whole-vector per-dimension int8 ranges, one set per Matryoshka dimension, in ``compression.json``.

    Each dimension ``k``'s ranges are taken over the sample cut to ``k`` dims and re-normalized
    (what is stored at that size). Returns ``{"<k>d": {"int8": {"low", "high", "dims"}}}`` (the
    extreme ends, for display).
    """
    record = compression_record(model_dir)
    ranges, summary = {}, {}
    for dim in record["dims"]:
        low, high = dimension_ranges(unit_rows(embeddings[:, :dim]))
        ranges[str(dim)] = {"low": low.tolist(), "high": high.tolist()}
        summary[f"{dim}d"] = {"int8": {"low": float(low.min()), "high": float(high.max()), "dims": dim}}
    record["int8_ranges"] = ranges | {"texts": len(embeddings)}
    write_json(model_dir / COMPRESSION_FILE, record)
    return summary


def _invalidated(model_dir: Path, changed: str) -> None:
    """Say that a verified folder must be verified again (its hashed files changed)."""
    if (model_dir / VERIFICATION_FILE).is_file():
        message = "calibrate changed %s: its verification no longer holds; run `concat-embed verify` again"
        logger.warning(message, changed)
