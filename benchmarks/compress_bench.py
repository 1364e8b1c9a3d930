"""Quality of compressed concatenations at each Matryoshka dimension (a script, not a test).

Encodes, once, the SciFact corpus (documents), its pseudo queries (``compress``'s: every sentence of
each document by default) and test queries (query prompt) and the STS-B test pairs with a combined
model, and caches the vectors. Fits PCA and the trained projection (documents only, and
``compress``'s default: documents + pseudo queries) on the SciFact corpus only (never its queries
or qrels), then reports SciFact test nDCG@10 and STS-B Spearman (x100) per dimension for: the
full concatenation, each part alone, per-part truncation at the same size (each part cut to its
share), PCA, and trained; plus fitting time and peak memory. The projections are applied exactly
as the compressed model applies them (``normalize(W x + b)``, cut, re-normalized).

    python benchmarks/compress_bench.py                       # the demo model (768-d)
    python benchmarks/compress_bench.py --model ./minilm-mpnet --dims 768,384,192,96
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

CHUNK = 2048  # texts encoded (and cached) at a time
IDENTITY = "cache_identity"  # the cache's key naming what its vectors were encoded from
DATA = Path(os.environ.get("CONCAT_EMBED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def say(line: str) -> None:
    """One report line on stdout, flushed."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pseudo_key(pseudo: str, per_document: int | None) -> str:
    """The cache key of a pseudo query set: ``pseudo_sentences`` (all), ``pseudo_sentences_1`` (one per document)."""
    return f"pseudo_{pseudo}" + (f"_{per_document}" if pseudo == "sentences" and per_document else "")


def encode_chunked(
    vectors: dict[str, np.ndarray], cache: Path, key: str, texts: list[str], encode: Callable[..., np.ndarray]
) -> None:
    """Encode ``texts`` into ``vectors[key]`` in chunks, saving ``cache`` after each: an interrupted run resumes."""
    if key in vectors:
        return
    for start in range(0, max(len(texts), 1), CHUNK):  # no texts: one empty chunk, as encode([]) gives
        part = f"{key}@{start:07d}"
        if part not in vectors:
            say(f"{key}: {start}-{min(start + CHUNK, len(texts))} of {len(texts)}")
            vectors[part] = encode(texts[start : start + CHUNK], show_progress_bar=True)
            np.savez(cache, **vectors)
    vectors[key] = np.concatenate([vectors.pop(k) for k in sorted(k for k in vectors if k.startswith(f"{key}@"))])
    if len(vectors[key]) != len(texts):
        raise ValueError(f"{cache}: {len(vectors[key])} cached {key} vectors for {len(texts)} texts; delete the cache")
    np.savez(cache, **vectors)


def dims_arg(value: str) -> list[int]:
    """``--dims``: comma-separated positive integers (the model's size is checked once it is loaded)."""
    try:
        dims = [int(part) for part in value.split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give positive integers, largest first, e.g. 384,192,96,48")
    return dims


def cache_arg(value: str) -> Path:
    """``--cache``: a file name ending in ``.npz`` (numpy saves other names to ``<name>.npz``, never read back)."""
    if not value.endswith(".npz"):
        raise argparse.ArgumentTypeError(f"{value!r}: give a file name ending in .npz")
    return Path(value)


def cache_identity(model_dir: str) -> str:
    """What the cached vectors are encoded from: the model's files and the benchmark's data files."""
    from hub_export.folder import content_hash, file_sha256

    data = ("scifact/corpus.jsonl.gz", "scifact/queries.jsonl.gz", "stsb/test.tsv.gz")
    return ";".join([f"model={content_hash(model_dir)}", *(f"{name}={file_sha256(DATA / name)}" for name in data)])


def read_cache(cache: Path, identity: str) -> dict[str, np.ndarray]:
    """The vectors cached in ``cache``; a new cache when there is none.

    Raises:
        SystemExit: When ``cache`` is not this script's cache for the same model and data: it is left untouched.
    """
    if not cache.exists():
        if cache.is_symlink():
            raise SystemExit(f"{cache}: a symbolic link to nothing; give another --cache")
        return {IDENTITY: np.array(identity)}
    try:
        if not zipfile.is_zipfile(cache):
            raise ValueError("not a zip archive")
        vectors = dict(np.load(cache, allow_pickle=False))
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise SystemExit(f"{cache}: not a readable .npz ({error}); left untouched, give another --cache") from None
    if IDENTITY not in vectors:
        raise SystemExit(
            f"{cache}: not written by compress_bench.py (no {IDENTITY}); left untouched, give another --cache"
        )
    if str(vectors[IDENTITY]) != identity:
        raise SystemExit(
            f"{cache}: encoded from another model or other data; left untouched, delete it or give another --cache"
        )
    return vectors


def default_cache(model_dir: str) -> Path:
    """Where the vectors of ``model_dir`` are cached unless ``--cache`` says otherwise."""
    return Path(f"/tmp/compress-bench-{Path(model_dir).parent.name}-{Path(model_dir).name}.npz")


def encode_all(model_dir: str, cache: Path, pseudo: str, per_document: int | None) -> dict[str, np.ndarray]:
    """Corpus, pseudo queries (query prompt), test queries and STS-B vectors of the full model, cached in ``cache``."""
    vectors = read_cache(cache, cache_identity(model_dir))
    if {"docs", pseudo_key(pseudo, per_document), "queries", "sts1", "sts2"} <= set(vectors):
        return vectors
    from sentence_transformers import SentenceTransformer

    from hub_export.data import document_text, load_beir, load_sts, pseudo_query_sources

    corpus, queries, _ = load_beir(DATA / "scifact")
    first, second, _ = load_sts(DATA / "stsb" / "test.tsv.gz")
    model = SentenceTransformer(model_dir, trust_remote_code=True, device="cpu")
    texts = [document_text(corpus[d]) for d in corpus]
    encode_chunked(vectors, cache, "docs", texts, functools.partial(model.encode_document, batch_size=32))
    sources = pseudo_query_sources(DATA / "scifact" / "corpus.jsonl.gz", pseudo, per_document=per_document)
    pseudo_texts = [text for _, text in sources]
    encode_chunked(vectors, cache, pseudo_key(pseudo, per_document), pseudo_texts, model.encode_query)
    encode_chunked(vectors, cache, "queries", [queries[q] for q in queries], model.encode_query)
    encode_chunked(vectors, cache, "sts1", first, model.encode)
    encode_chunked(vectors, cache, "sts2", second, model.encode)
    return vectors


def load_run(
    parser: argparse.ArgumentParser, args: argparse.Namespace, pseudo: str, per_document: int | None
) -> tuple[str, Path, dict[str, np.ndarray], list[int]]:
    """A run's model folder (``--model``, default the demo), cache (``--cache``), its vectors and checked ``--dims``."""
    from hub_export import demo
    from hub_export.folder import check_model_folder
    from hub_export.quality.compress import parse_dims

    model_dir = args.model or str(demo.demo_model_dir())
    cache = args.cache or default_cache(model_dir)
    try:
        check_model_folder(model_dir)
    except ValueError as error:
        parser.error(str(error))
    vectors = encode_all(model_dir, cache, pseudo, per_document)
    try:
        return model_dir, cache, vectors, parse_dims(args.dims, vectors["docs"].shape[1])
    except ValueError as error:
        parser.error(str(error))


def scores(q: np.ndarray, d: np.ndarray, sts1: np.ndarray, sts2: np.ndarray) -> tuple[float, float]:
    """(nDCG@10, STS-B Spearman) x100 of already shaped vectors."""
    from scipy.stats import spearmanr

    from hub_export.data import load_beir, load_sts
    from hub_export.quality.evaluation import retrieval_metrics
    from hub_export.vectors import unit_rows

    corpus, queries, qrels = load_beir(DATA / "scifact")
    _, _, gold = load_sts(DATA / "stsb" / "test.tsv.gz")
    ndcg = retrieval_metrics(unit_rows(q) @ unit_rows(d).T, list(queries), list(corpus), qrels)["ndcg@10"]
    sts = spearmanr((unit_rows(sts1) * unit_rows(sts2)).sum(axis=1), gold).statistic
    return 100 * ndcg, 100 * float(sts)


def main() -> None:
    """Fit, evaluate and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="combined model folder (default: the demo model)")
    parser.add_argument("--dims", type=dims_arg, default="384,192,96,48")
    parser.add_argument("--epochs", type=int, default=None, help="default: compress's (about 100,000 anchors)")
    parser.add_argument("--cache", type=cache_arg, default=None, help="where the encoded vectors are cached (.npz)")
    parser.add_argument("--pseudo-queries", default=None, help="sentences, titles (default: compress's default)")
    parser.add_argument("--sentences-per-doc", type=int, default=0, help="as compress's (0 = all sentences)")
    parser.add_argument(
        "--no-docs-only", action="store_true", help="skip the 'trained, documents only' fit (halves the fitting time)"
    )
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from hub_export.quality.compress import DEFAULT_PSEUDO_QUERIES, fit_pca, train_projection, training_epochs
    from hub_export.quality.evaluation import part_views
    from hub_export.vectors import project, unit_rows

    pseudo = args.pseudo_queries or DEFAULT_PSEUDO_QUERIES
    per_document = args.sentences_per_doc or None
    model_dir, _, v, dims = load_run(parser, args, pseudo, per_document)
    anchors = v[pseudo_key(pseudo, per_document)]
    epochs = args.epochs or training_epochs(len(v["docs"]) + len(anchors))
    docs_epochs = args.epochs or training_epochs(len(v["docs"]))
    views = part_views(SentenceTransformer(model_dir, trust_remote_code=True, device="cpu"))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    pca_w, pca_b = fit_pca(v["docs"], dims[0])
    pca_s = time.perf_counter() - started
    docs_only = None if args.no_docs_only else train_projection(v["docs"], pca_w, pca_b, dims, epochs=docs_epochs)
    docs_only_s = time.perf_counter() - started - pca_s
    trained = train_projection(v["docs"], pca_w, pca_b, dims, queries=anchors, epochs=epochs)
    trained_s = time.perf_counter() - started - pca_s - docs_only_s
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sizes = f"SciFact corpus {len(v['docs'])} docs, {len(v['queries'])} test queries; STS-B {len(v['sts1'])} pairs"
    say(f"model: {model_dir}; {sizes}")
    say(f"fit on 2 CPU cores: PCA {pca_s:.1f} s, trained {trained_s:.1f} s with {len(anchors)} {pseudo} "
        f"({epochs} epochs), {'no' if docs_only is None else f'{docs_only_s:.1f} s ({docs_epochs} epochs)'} "
        "documents-only fit; "
        f"peak RSS {rss_after / 1024:.0f} MB (before fitting {rss_before / 1024:.0f} MB)")  # fmt: skip
    full = scores(v["queries"], v["docs"], v["sts1"], v["sts2"])
    say("| vectors | dims | bytes (fp32) | SciFact nDCG@10 | STS-B | % of full (nDCG / STS) |")
    say("|---|---|---|---|---|---|")

    def row(name: str, dim: int, result: tuple[float, float]) -> None:
        say(f"| {name} | {dim} | {4 * dim} | {result[0]:.2f} | {result[1]:.2f} | "
            f"{100 * result[0] / full[0]:.1f} / {100 * result[1] / full[1]:.1f} |")  # fmt: skip

    row("full concatenation", v["docs"].shape[1], full)
    for name, cols in views.items():
        if name != "concat":
            row(
                f"{name} alone",
                cols.stop - cols.start,
                scores(*(v[k][:, cols] for k in ("queries", "docs", "sts1", "sts2"))),
            )
    parts = [cols for name, cols in views.items() if name != "concat"]
    for dim in dims:
        share = dim // len(parts)
        cut = {
            k: np.concatenate([unit_rows(v[k][:, c][:, :share]) for c in parts], axis=1)
            for k in ("queries", "docs", "sts1", "sts2")
        }
        row("per-part truncation", share * len(parts), scores(cut["queries"], cut["docs"], cut["sts1"], cut["sts2"]))
        projections = {"PCA": (pca_w, pca_b), "trained, documents only": docs_only, "trained": trained}
        for name, (w, b) in ((name, fit) for name, fit in projections.items() if fit is not None):
            shaped = {k: project(v[k], w, b, dim) for k in ("queries", "docs", "sts1", "sts2")}
            row(name, dim, scores(shaped["queries"], shaped["docs"], shaped["sts1"], shaped["sts2"]))


if __name__ == "__main__":
    main()
