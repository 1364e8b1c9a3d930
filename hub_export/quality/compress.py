"""``concat-embed compress``: a Matryoshka projection of the whole concatenated vector.

The projection is fitted on corpus embeddings of the full model (arXiv 2510.04626, "Compressed
Concatenation of Small Embedding Models"): ``pca`` is centered PCA (ordered by variance, so its
prefixes are Matryoshka for free); ``trained`` starts from PCA and trains the matrix by
distillation on the cached vectors: at every requested dimension the truncated, re-normalized
projection should rank each anchor's nearest documents as the full vector does (softmax KL over
the corpus) and keep its cosine similarities (MSE). Anchors are the documents, pseudo queries
from the corpus (every sentence of each document body by default, or its titles; query prompt) and any
``--queries``: no labels are used.

The result is a model folder: the same parts, then a standard sentence-transformers ``Dense``
(the projection) and ``Normalize``, so sentence-transformers' own ``truncate_dim`` cuts the
least important dimensions. ``compression.json`` records the method, the corpus (name, size,
sha256), the dimensions and, per dimension, the share of each document's 10 nearest documents it keeps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hub_export.encoding import encode_stage
from hub_export.folder import (
    AUTO_MODEL_FILES,
    COMPRESSION_FILE,
    CONFIG_FILE,
    DENSE_DIR,
    LATER_FILES,
    MODULES_FILE,
    NORMALIZE_DIR,
    check_model_folder,
    file_sha256,
    is_compressed,
    load_model,
    model_files,
    read_json,
    write_json,
)
from hub_export.outdir import check_output, write_whole
from hub_export.vectors import project, unit_rows

logger = logging.getLogger(__name__)

METHODS = ("pca", "trained")
DEFAULT_PSEUDO_QUERIES = "sentences"  # chosen on SciFact train queries + STS-B dev (docs/compression.md)
MIN_VARIANCE = 1e-6  # total variance of the corpus vectors below which there is nothing to project
TRAINING_DRAWS = 100_000  # anchors seen in training by default (--epochs unset): ~400 steps of 256


def parse_dims(dims: Sequence[int], full: int) -> list[int]:
    """Check Matryoshka dimensions: strictly decreasing, each in ``[1, full]``.

    Raises:
        ValueError: Naming the first bad value and the valid range.
    """
    dims = list(dims)
    if not dims:
        raise ValueError("dims: give at least one dimension, e.g. 384,192,96,48")
    for value in dims:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= full:
            raise ValueError(f"dims {value!r}: each dimension must be an integer in [1, {full}] (the model's size)")
    if any(a <= b for a, b in zip(dims, dims[1:])):
        raise ValueError(f"dims {dims}: must be strictly decreasing (largest first), e.g. 384,192,96,48")
    return dims


def fit_pca(vectors: np.ndarray, out_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Centered PCA: ``(W [out_dim, d], b [out_dim])`` with ``y = W x + b = W (x - mean)``, by variance.

    Each component's sign makes its largest coefficient positive, so fits are reproducible.
    """
    x = np.asarray(vectors, dtype=np.float64)
    mean = x.mean(axis=0)
    centered = x - mean
    values, vectors_ = np.linalg.eigh(centered.T @ centered / max(len(x) - 1, 1))
    order = np.argsort(values)[::-1][:out_dim]
    weight = vectors_[:, order].T
    signs = np.sign(weight[np.arange(out_dim), np.abs(weight).argmax(axis=1)])
    weight = weight * signs[:, None]
    return weight.astype(np.float32), (-weight @ mean).astype(np.float32)


def train_projection(
    docs: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    dims: Sequence[int],
    queries: np.ndarray | None = None,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    temperature: float = 0.05,
    max_candidates: int = 8192,
    orthogonality: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Distil the full vector's neighbourhoods into every Matryoshka prefix of the projection.

    Anchors are the documents and, when given, ``queries`` (real or pseudo queries such as
    corpus sentences, encoded with the query prompt). Candidates are the documents (all of them up to
    ``max_candidates``, else that many drawn at random each step). For each batch of anchors and
    each dimension in ``dims``, the truncated, re-normalized projection is trained so that

    - its softmax over candidate similarities (``/ temperature``) matches the full vector's (KL
      divergence: the ranking of each anchor's nearest documents, what retrieval needs), and
    - its cosine similarities match the full vector's (mean squared error: the global geometry,
      what STS needs).

    A document anchor's own column is left out of the softmax. A penalty
    ``orthogonality * ||W W^T - I||^2`` keeps the rows orthonormal, as PCA's are: the projection
    stays a rotated subspace, which keeps the geometry of text unlike the corpus (STS). AdamW from
    torch.

    Returns:
        The trained ``(W, b)``.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight))
        linear.bias.copy_(torch.as_tensor(bias))
    optimizer = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=0.0)
    x = torch.as_tensor(np.asarray(docs, dtype=np.float32))
    anchors = x
    if queries is not None and len(queries):
        anchors = torch.cat([x, torch.as_tensor(np.asarray(queries, dtype=np.float32))])
    units = F.normalize(x, dim=-1)
    steps = epochs * math.ceil(len(anchors) / batch_size)
    with tqdm(total=steps, desc="training projection", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            for index in torch.randperm(len(anchors), generator=generator).split(batch_size):
                if len(x) <= max_candidates:
                    candidates = torch.arange(len(x))
                else:
                    candidates = torch.randperm(len(x), generator=generator)[:max_candidates]
                batch = anchors[index]
                target = F.normalize(batch, dim=-1) @ units[candidates].T
                own = index[:, None] == candidates[None, :]  # a document anchor and itself
                teacher = F.softmax((target / temperature).masked_fill(own, -math.inf), dim=-1)
                projected_anchors, projected_docs = linear(batch), linear(x[candidates])
                loss = torch.zeros(())
                for k in dims:
                    similarity = (
                        F.normalize(projected_anchors[:, :k], dim=-1) @ F.normalize(projected_docs[:, :k], dim=-1).T
                    )
                    student = F.log_softmax((similarity / temperature).masked_fill(own, -math.inf), dim=-1)
                    loss = loss + F.kl_div(student.masked_fill(own, 0.0), teacher, reduction="batchmean")
                    loss = loss + F.mse_loss(similarity, target)
                if orthogonality:
                    gram = linear.weight @ linear.weight.T
                    loss = loss + orthogonality * ((gram - torch.eye(len(gram))) ** 2).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.set_postfix(loss=f"{loss.item():.2e}", refresh=False)
                bar.update(1)
    return linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy()


def neighbours_kept(
    full: np.ndarray, weight: np.ndarray, bias: np.ndarray, dims: Sequence[int], anchors: np.ndarray, k: int = 10
) -> dict[str, float]:
    """Per dimension: of each anchor document's ``k`` nearest documents under the full vector, the share that the
    compressed vector (cut to that dimension) also ranks among its ``k`` nearest; 1.0 keeps every neighbour.

    A measure a user can read ("keeps 9 of 10 nearest documents"), unlike a correlation of raw cosines, which the
    projection's centering lowers at every size even where the rankings are kept.
    """
    k = min(k, len(full) - 1)
    if k < 1:
        return {}

    def nearest(vectors: np.ndarray) -> np.ndarray:
        similarity = vectors[anchors] @ vectors.T
        similarity[np.arange(len(anchors)), anchors] = -np.inf  # not itself
        return np.argpartition(-similarity, k - 1, axis=1)[:, :k]

    reference = nearest(unit_rows(np.asarray(full, dtype=np.float64)))
    result = {}
    for dim in dims:
        found = nearest(project(full, weight, bias, dim))
        result[str(dim)] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(reference, found)]))
    return result


@dataclass
class CompressOptions:
    """What ``compress`` was asked for."""

    corpus: str
    dims: list[int]
    method: str = "trained"
    queries: str | None = None
    limit: int | None = None
    epochs: int | None = None  # None: training_epochs(anchors)
    batch_size: int = 32
    seed: int = 0
    pseudo_queries: str = DEFAULT_PSEUDO_QUERIES
    sentences_per_doc: int | None = None  # None: every sentence of each document


def training_epochs(anchors: int) -> int:
    """The default number of passes: about :data:`TRAINING_DRAWS` anchors in all, at least one pass."""
    return max(1, round(TRAINING_DRAWS / max(anchors, 1)))


def source_dimension(model_dir: Path) -> int:
    """The width of an uncompressed combined model's vector, from its ``concat_config.json`` (no model loaded)."""
    from hub_export.modeling import parse_concat_config

    specs, _ = parse_concat_config(read_json(model_dir / CONFIG_FILE), CONFIG_FILE)
    return sum(spec.output_dimension for spec in specs)


def check_corpus(corpus: str | Path, texts: Sequence[str], largest: int) -> None:
    """Refuse, before any encoding, a corpus with fewer texts, or fewer different texts, than the largest dimension.

    Raises:
        ValueError: Naming the corpus, its counts and the dimension.
    """
    if len(texts) < largest:
        raise ValueError(
            f"{corpus}: {len(texts)} texts are fewer than the largest dimension {largest}; "
            "give a larger corpus or smaller dims"
        )
    if (distinct := len(set(texts))) < largest:
        raise ValueError(
            f"{corpus}: {len(texts)} texts but only {distinct} different ones, fewer than the largest dimension "
            f"{largest}; give a corpus of varied texts"
        )


def check_source_model(model_dir: Path) -> None:
    """Refuse what is not an uncompressed combined model folder."""
    check_model_folder(model_dir)
    if is_compressed(model_dir):
        raise ValueError(
            f"{model_dir} is already compressed ({COMPRESSION_FILE}); compress its uncompressed source instead "
            "(projections are not composed)"
        )


def compress_model(
    model_dir: str | Path, output_dir: str | Path, options: CompressOptions, progress: bool = True
) -> dict:
    """Fit the projection on ``options.corpus`` and write the compressed model folder; returns ``compression.json``.

    Raises:
        ValueError: On bad dims, method, corpus (fewer texts than the largest dim), an already
            compressed model, or an output folder that holds other files; nothing is written then.
    """
    from hub_export.data import check_pseudo_queries, pseudo_query_sources, read_corpus_texts
    from hub_export.modeling import embedding_dimension_of

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if options.method not in METHODS:
        raise ValueError(f"unknown method {options.method!r}; valid: {list(METHODS)}")
    check_pseudo_queries(options.pseudo_queries)
    if (options.epochs is not None and options.epochs < 1) or options.batch_size < 1:
        raise ValueError("epochs and batch_size must be positive integers")
    check_source_model(model_dir)
    check_output(output_dir, [model_dir])
    texts = read_corpus_texts(options.corpus, options.limit)
    dims = parse_dims(options.dims, source_dimension(model_dir))
    check_corpus(options.corpus, texts, dims[0])
    query_texts = read_corpus_texts(options.queries) if options.queries else []
    pseudo = []
    if options.method == "trained":
        sources = pseudo_query_sources(
            options.corpus, options.pseudo_queries, options.limit, options.seed, options.sentences_per_doc
        )
        pseudo = [text for _, text in sources]
        if not pseudo and options.pseudo_queries != "none":
            logger.warning(
                "%s: no %s to use as pseudo queries; training on documents only", options.corpus, options.pseudo_queries
            )
    model = load_model(model_dir, device="cpu")
    full_dim = embedding_dimension_of(model)
    started = time.perf_counter()
    docs = encode_stage(model.encode_document, texts, "corpus documents", progress, batch_size=options.batch_size)
    anchors = query_texts + pseudo if options.method == "trained" else []  # query-document neighbourhoods
    queries = (
        encode_stage(model.encode_query, anchors, "pseudo queries", progress, batch_size=options.batch_size)
        if anchors
        else None
    )
    encoded = time.perf_counter()
    if not np.isfinite(docs).all():
        raise ValueError(f"{model_dir}: the model's outputs on the corpus are not finite; run `verify`")
    if (variance := float(docs.var(axis=0).sum())) < MIN_VARIANCE:
        raise ValueError(
            f"{options.corpus}: the model's vectors of these {len(texts)} texts barely differ (total variance "
            f"{variance:.1e}); a projection fitted on them would be arbitrary: give a corpus of varied texts"
        )
    held_out = np.random.default_rng(options.seed).permutation(len(docs))[: min(500, len(docs) // 10 or 1)]
    weight, bias = fit_pca(docs, dims[0])
    epochs = 0
    if options.method == "trained":
        epochs = options.epochs or training_epochs(len(docs) + len(anchors))
        weight, bias = train_projection(docs, weight, bias, dims, queries, epochs, seed=options.seed, progress=progress)
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise ValueError(f"{options.corpus}: training diverged (non-finite weights); use the pca method")
    fitted = time.perf_counter()
    record = {
        "method": options.method,
        "dims": dims,
        "source_dimension": full_dim,
        "corpus": {"name": Path(options.corpus).name, "texts": len(texts), "sha256": file_sha256(options.corpus)},
        "queries": {"name": Path(options.queries).name, "texts": len(query_texts)} if options.queries else None,
        "pseudo_queries": {
            "source": options.pseudo_queries,
            "texts": len(pseudo),
            "per_document": options.sentences_per_doc if options.pseudo_queries == "sentences" else None,
        }
        if options.method == "trained"
        else None,
        "epochs": epochs,
        "neighbours_kept_at_10": neighbours_kept(docs, weight, bias, dims, held_out),
        "seconds": {"encode": round(encoded - started, 1), "fit": round(fitted - encoded, 1)},
    }
    write_whole(
        output_dir, lambda staging: write_compressed_folder(model_dir, staging, weight, bias, record, output_dir.name)
    )
    return record


def write_compressed_folder(
    model_dir: Path, output_dir: Path, weight: np.ndarray, bias: np.ndarray, record: dict[str, Any], name: str
) -> None:
    """The source model's files (without the AutoModel route), then ``1_Dense`` + ``2_Normalize`` and the record."""
    import shutil

    from safetensors.numpy import save_file

    from hub_export.publish.card import write_card

    for relative in model_files(model_dir):
        if relative in AUTO_MODEL_FILES or relative in LATER_FILES:
            continue
        (output_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / relative, output_dir / relative)
    modules = read_json(model_dir / MODULES_FILE)
    modules = [modules[0]] + [
        {"idx": 1, "name": "1", "path": DENSE_DIR, "type": "sentence_transformers.models.Dense"},
        {"idx": 2, "name": "2", "path": NORMALIZE_DIR, "type": "sentence_transformers.models.Normalize"},
    ]
    write_json(output_dir / MODULES_FILE, modules)
    dense = output_dir / DENSE_DIR
    dense.mkdir()
    dense_config = {"in_features": weight.shape[1], "out_features": weight.shape[0], "bias": True,
                    "activation_function": "torch.nn.modules.linear.Identity"}  # fmt: skip
    write_json(dense / "config.json", dense_config)
    save_file({"linear.weight": np.ascontiguousarray(weight, np.float32), "linear.bias": bias.astype(np.float32)},
              str(dense / "model.safetensors"))  # fmt: skip
    (output_dir / NORMALIZE_DIR).mkdir()
    write_json(output_dir / COMPRESSION_FILE, record)
    write_card(output_dir, name)
