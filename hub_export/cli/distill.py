"""The command that distils a combined model into one plain model: distill."""

from __future__ import annotations

import argparse
import sys

from hub_export.cli.options import OptionError, limit_int, non_negative_float, positive_float, positive_int, require


def layer_indices(raw: str) -> list[int]:
    """``--layers``: comma-separated layer indices, e.g. ``0,2,4`` (their range is checked against the student)."""
    try:
        layers = [int(part) for part in raw.split(",")]
    except ValueError:
        layers = []
    if not layers:
        raise OptionError(f"expected layer indices separated by commas, e.g. 0,2,4; got {raw!r}")
    return layers


def cmd_distill(args: argparse.Namespace) -> int:
    """Distil a combined model into a plain sentence-transformers folder."""
    require("accelerate", "datasets", *(["scipy"] if args.eval_sts else []))
    from hub_export.distill import DistillOptions, distill_model
    from hub_export.runtime.memory import return_freed_memory

    options = DistillOptions(
        texts=args.texts, student=args.student, layers=args.layers, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, max_seq_length=args.max_seq_length, queries=args.queries, pseudo_queries=args.pseudo_queries,
        sentences_per_doc=args.sentences_per_doc, limit=args.limit, eval_sts=args.eval_sts, held_out=args.held_out,
        checkpoint_steps=args.checkpoint_steps, cache=args.cache, ranking_weight=args.ranking_weight,
    )  # fmt: skip
    return_freed_memory()  # this process exists to train: return freed activations (see hub_export.runtime.memory)
    record = distill_model(args.teacher, args.out, options, progress=not args.no_progress)
    held = record["held_out"]
    sys.stdout.write(f"{args.out}\n")
    for when in ("before", "after"):
        values = held[when]
        sys.stdout.write(
            f"held-out {when:<6}  MSE {values['mse']:.3e}  Spearman of pairwise cosines {values['spearman']:.4f}\n"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """distill."""
    from hub_export.data import PSEUDO_QUERY_SOURCES

    distill = sub.add_parser(
        "distill", help="train one plain model (no remote code) to reproduce a combined model's vectors"
    )
    distill.add_argument("teacher", help="combined model folder (compressed or not)")
    distill.add_argument("--texts", required=True, help="training corpus: .jsonl[.gz] with text (and title), or lines")
    distill.add_argument("--out", required=True, help="output folder: new, empty, or a previous output")
    distill.add_argument(
        "--student",
        default=None,
        help="a part of the teacher or a sentence-transformers folder (default: smallest part)",
    )
    distill.add_argument(
        "--layers", type=layer_indices, default=None, help="student layers to keep, e.g. 0,3,5 (keep the last)"
    )
    distill.add_argument("--epochs", type=positive_int, default=1)
    distill.add_argument("--batch-size", type=positive_int, default=32)
    distill.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate (AdamW, linear decay)")
    distill.add_argument(
        "--max-seq-length",
        type=positive_int,
        default=None,
        help="student's token limit (default its own; the teacher's longest part limit reads what it read)",
    )
    distill.add_argument(
        "--ranking-weight",
        type=non_negative_float,
        default=0.0,
        help="weight of an in-batch ranking term on (pseudo query, its document) pairs beside the MSE (0 = MSE only)",
    )
    distill.add_argument("--queries", default=None, help="query texts (.jsonl[.gz] or lines), encoded as queries")
    distill.add_argument(
        "--pseudo-queries",
        default="sentences",
        choices=PSEUDO_QUERY_SOURCES,
        help="texts of the corpus also trained as queries (query prompt): sentences, titles or none",
    )
    distill.add_argument(
        "--sentences-per-doc", type=limit_int, default=None, help="at most N sentences of each document (0 = all)"
    )
    distill.add_argument("--limit", type=limit_int, default=None, help="documents to use (0 or unset = all)")
    distill.add_argument("--eval-sts", default=None, help="STS-B style .tsv[.gz] evaluated during training")
    distill.add_argument("--held-out", type=positive_int, default=500, help="documents held out to measure fidelity")
    distill.add_argument("--checkpoint-steps", type=positive_int, default=500, help="steps between checkpoints")
    distill.add_argument(
        "--cache",
        default=None,
        help="folder for the teacher's vectors, shared by students of one teacher and texts (default: beside --out)",
    )
    distill.add_argument("--no-progress", action="store_true")
    distill.set_defaults(func=cmd_distill)
