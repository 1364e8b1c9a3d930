"""``concat-embed demo``: build (or reuse) the demo model and run a small semantic search."""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import TextIO

import torch
from torch.nn.functional import normalize

from hub_export.demo.parts import L3_DIST, L6_DIST, demo_parts
from hub_export.folder import cache_home, is_combined, load_model
from hub_export.publish.build import MODELING_FILE, build_model
from hub_export.quality.evaluation import part_views

logger = logging.getLogger(__name__)

DEMO_TEXTS = Path(__file__).with_name("texts.json")
LEGEND = """
Scores are cosine similarities of query and document vectors: per part (minilm_l6, minilm_l3) and
for the concatenation (concat = the mean of the parts' cosines, as the parts have unit weight).
The model is cached in {model_dir} ($CONCAT_EMBED_CACHE or --cache-dir moves it). Next (the extra
each command needs beyond the demo install, in a checkout: pip install -e '.[NAME]'):
  concat-embed verify {model_dir}
  concat-embed eval {model_dir} --sts ../shared/data/stsb/test.tsv.gz --limit 100   # [eval]
  concat-embed export-backends {model_dir} --int8   # ONNX Runtime files; [backends]
  concat-embed serve {model_dir}   # OpenAI / TEI endpoints on http://127.0.0.1:8080; [serve]
"""


def demo_model_dir(cache_dir: str | Path | None = None, rebuild: bool = False) -> Path:
    """Build the demo model into the cache (keyed by package versions and modeling.py) and return it."""
    cache = Path(cache_dir) if cache_dir else cache_home()
    key = hashlib.sha256(
        "|".join([metadata.version(L6_DIST), metadata.version(L3_DIST), MODELING_FILE.read_text()]).encode()
    ).hexdigest()[:12]
    model_dir = cache / f"demo-{key}" / "model"
    if rebuild or not is_combined(model_dir):
        build_model(demo_parts(model_dir.parent), model_dir)
    return model_dir


def run_demo(
    cache_dir: str | Path | None = None, rebuild: bool = False, top_k: int = 2, stream: TextIO | None = None
) -> dict:
    """Search the shipped documents with each part and with the concatenation; write the hits.

    Returns:
        ``{query: {"minilm_l6" | "minilm_l3" | "concat": [(score, document), ...]}}``.
    """
    model_dir = demo_model_dir(cache_dir, rebuild)
    model = load_model(model_dir, device="cpu")
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
