"""Where the trained projection's limit lies at small sizes (a script, not a test).

Reuses ``compress_bench.py``'s cached vectors (same model, data and cache file) and adds SciFact's
*train* queries (encoded once, cached beside them). Every fit is ``compress``'s own trainer
(``train_projection``: its loss, learning rate and default epochs) started from PCA of the
documents; each prints SciFact test nDCG@10 / STS-B test Spearman as % of the full concatenation
per dimension:

- ``trained``: ``compress``'s default anchors (documents + every sentence of the abstracts);
- ``one size alone``: a matrix trained for each size on its own (not nested): what the
  Matryoshka nesting costs;
- ``+ train queries``: documents + sentences + the 809 train queries' text (no labels), what
  ``--queries`` adds for a user who has queries like the ones to come;
- ``train queries, no sentences``: documents + the train queries only;
- ``oracle``: documents + the 300 *test* queries themselves. Not a fair number: the ceiling of a
  linear map that knows the queries it is scored on.

    python benchmarks/compress_ablation.py                    # the demo model (768-d)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from compress_bench import DATA, cache_arg, dims_arg, encode_chunked, load_run, pseudo_key, say, scores


def main() -> None:
    """Fit each variant and print one row of % of full per dimension."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="combined model folder (default: the demo model)")
    parser.add_argument("--dims", type=dims_arg, default="384,192,96,48")
    parser.add_argument("--cache", type=cache_arg, default=None, help="compress_bench.py's vector cache (.npz)")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from hub_export.data import load_beir
    from hub_export.quality.compress import DEFAULT_PSEUDO_QUERIES, fit_pca, train_projection, training_epochs
    from hub_export.vectors import project

    model_dir, cache, v, dims = load_run(parser, args, DEFAULT_PSEUDO_QUERIES, None)
    if "train_queries" not in v:
        _, train_queries, _ = load_beir(DATA / "scifact", split="train")
        model = SentenceTransformer(model_dir, trust_remote_code=True, device="cpu")
        encode_chunked(v, cache, "train_queries", [train_queries[q] for q in train_queries], model.encode_query)
    docs, sentences = v["docs"], v[pseudo_key(DEFAULT_PSEUDO_QUERIES, None)]
    full = scores(v["queries"], v["docs"], v["sts1"], v["sts2"])
    pca_w, pca_b = fit_pca(docs, dims[0])
    say(f"model: {model_dir}; {len(docs)} documents, {len(sentences)} sentences, {len(v['train_queries'])} train "
        f"queries, {len(v['queries'])} test queries; cells: SciFact test nDCG@10 / STS-B test, % of full")  # fmt: skip
    say("| anchors (besides the documents) | " + " | ".join(str(d) for d in dims) + " | fit (s) |")
    say("|---|" + "---|" * len(dims) + "---|")

    def cell(weight: np.ndarray, bias: np.ndarray, dim: int) -> str:
        shaped = [project(v[k], weight, bias, dim) for k in ("queries", "docs", "sts1", "sts2")]
        ndcg, sts = scores(*shaped)
        return f"{100 * ndcg / full[0]:.1f} / {100 * sts / full[1]:.1f}"

    def fit(anchors: np.ndarray, fit_dims: list[int]) -> tuple[np.ndarray, np.ndarray]:
        k = fit_dims[0]
        epochs = training_epochs(len(docs) + len(anchors))
        return train_projection(docs, pca_w[:k], pca_b[:k], fit_dims, queries=anchors, epochs=epochs)

    variants = {
        "every sentence (compress's default)": sentences,
        "+ train queries": np.concatenate([v["train_queries"], sentences]),
        "train queries, no sentences": v["train_queries"],
        "oracle: the test queries themselves": v["queries"],
    }
    for name, anchors in variants.items():
        started = time.perf_counter()
        weight, bias = fit(anchors, dims)
        seconds = time.perf_counter() - started
        say(f"| {name} | " + " | ".join(cell(weight, bias, d) for d in dims) + f" | {seconds:.0f} |")
    started, cells = time.perf_counter(), []
    for dim in dims:
        weight, bias = fit(sentences, [dim])
        cells.append(cell(weight, bias, dim))
    say(f"| every sentence, one size alone (not nested) | {' | '.join(cells)} | {time.perf_counter() - started:.0f} |")


if __name__ == "__main__":
    main()
