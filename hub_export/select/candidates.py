"""The candidates of ``select``: each loaded as the part a combined model would hold, its dev-data vectors
encoded once (cached with the identity of model and data, resumable), its size and its speed measured."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hub_export.encoding import cached_vectors
from hub_export.folder import cache_home, content_hash
from hub_export.outdir import cache_folder
from hub_export.select.devset import DevSet

logger = logging.getLogger(__name__)
SPEED_TEXTS = 64  # dev texts timed per candidate


@dataclass
class Candidate:
    """One candidate part: where it comes from, its cost, and its unit vectors of the dev data."""

    name: str
    source: str
    dims: int
    parameters: int
    ms_per_text: float
    vectors: dict[str, np.ndarray]

    def similarities(self, devset: DevSet) -> np.ndarray:
        """Cosines this candidate gives: of each STS pair, or of each query with every document."""
        if devset.kind == "sts":
            return (self.vectors["first"] * self.vectors["second"]).sum(axis=1)
        return self.vectors["queries"] @ self.vectors["documents"].T


def _model(name: str, source: str) -> tuple[Any, str, str]:
    """The candidate as a sentence-transformers model with its own prompts, its folder's identity, its published
    source. A candidate that does not load is named."""
    from sentence_transformers import SentenceTransformer

    from hub_export.publish.sources import load_source, read_own_prompts, resolve_source

    try:
        resolved = resolve_source(source)
        pipeline = load_source(resolved.path)
        model = SentenceTransformer(modules=list(pipeline), device="cpu")
        model.prompts = {"query": "", "document": ""} | read_own_prompts(resolved.path)
    except (ValueError, OSError) as error:
        raise ValueError(f"candidate {name!r} ({source}) could not be loaded: {error}") from None
    model_identity = f"{resolved.source}@{resolved.revision}" if resolved.revision else content_hash(resolved.path)
    return model, model_identity, resolved.source


def load_candidate(name: str, source: str, devset: DevSet, cache: Path | None, progress: bool) -> Candidate:
    """Encode ``devset`` with one candidate (cached in ``cache``, default ``~/.cache/concat-embed/select``)."""
    model, model_identity, published = _model(name, source)
    identity = {"model": model_identity, "data": devset.identity}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_folder((cache or cache_home() / "select") / f"{name}-{key}", identity)
    if devset.kind == "sts":
        sets = {"first": (devset.first, model.encode), "second": (devset.second, model.encode)}
    else:
        sets = {"documents": (devset.documents, model.encode_document), "queries": (devset.queries, model.encode_query)}
    vectors = {
        part: cached_vectors(folder, part, texts, encode, f"{name}: {part}", progress)
        for part, (texts, encode) in sets.items()
    }
    sample = (devset.documents or devset.first)[:SPEED_TEXTS]
    model.encode(sample[:8])  # warm up
    started = time.perf_counter()
    model.encode(sample, batch_size=32)
    ms = 1000 * (time.perf_counter() - started) / max(len(sample), 1)
    dims = next(iter(vectors.values())).shape[1]
    parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info("candidate %s: %d dims, %d parameters, %.2f ms per text", name, dims, parameters, ms)
    return Candidate(name, published, dims, parameters, ms, vectors)
