"""``concat-embed calibrate``: ranges for storing vectors as int8/int4 codes, from a calibration corpus."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hub_export.data import read_corpus_texts
from hub_export.folder import check_model_folder, read_json
from hub_export.modeling import CONFIG_FILE, LEGACY_CODE_RANGES
from hub_export.quality.codes import part_ranges
from hub_export.quality.compress import COMPRESSION_FILE, calibrate_compressed

logger = logging.getLogger(__name__)


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
    from sentence_transformers import SentenceTransformer

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit = {limit!r}: expected a positive integer or None (all texts)")
    model_dir = Path(model_dir)
    check_model_folder(model_dir)
    compressed = (model_dir / COMPRESSION_FILE).is_file()
    if compressed and dims:
        raise ValueError(f"{model_dir} is compressed: --dims does not apply (ranges are stored per Matryoshka dim)")
    modeling = model_dir / "modeling.py"  # a missing one fails at load, as for any folder
    if (
        not compressed
        and modeling.is_file()
        and "code_ranges" not in modeling.read_text(encoding="utf-8", errors="replace")
    ):
        raise ValueError(
            f"{model_dir / 'modeling.py'} is from an older concat-embed that would not read the ranges "
            "(parts[i].code_ranges): rebuild the folder with `concat-embed build ... --out` first"
        )
    texts = read_corpus_texts(corpus, limit)
    model = SentenceTransformer(str(model_dir), trust_remote_code=True, device="cpu")
    embeddings = model.encode_document(texts, show_progress_bar=progress)
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
    config_path.write_text(json.dumps(config, indent=4) + "\n")
    _invalidated(model_dir, CONFIG_FILE)
    logger.info("Calibrated %s on %d texts", model_dir, len(embeddings))
    return result


def _invalidated(model_dir: Path, changed: str) -> None:
    """Say that a verified folder must be verified again (its hashed files changed)."""
    if (model_dir / "verification.json").is_file():
        message = "calibrate changed %s: its verification no longer holds; run `concat-embed verify` again"
        logger.warning(message, changed)
