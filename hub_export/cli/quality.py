"""Commands that measure and shrink a model: calibrate, eval, compare, compress."""

from __future__ import annotations

import argparse
import sys

from hub_export.cli.options import limit_int, positive_int, require, split_assignment, write_json_output


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Store per-part int8/int4 ranges from a calibration corpus in concat_config.json."""
    from hub_export.quality.calibrate import calibrate_folder

    dims = {}
    for value in args.dims or []:
        name, raw = split_assignment(value, "--dims")
        try:
            dims[name] = positive_int(raw)
        except ValueError as error:
            raise ValueError(f"--dims {value!r}: {error}") from None
    result = calibrate_folder(args.model_dir, args.corpus, args.limit, dims, progress=True)
    for name, schemes in result.items():
        for scheme, entry in schemes.items():
            sys.stdout.write(
                f"{name:<16} {scheme}  [{entry['low']:+.4f}, {entry['high']:+.4f}]  dims {entry['dims']}\n"
            )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Print (and optionally write as JSON) the per-part / concatenation evaluation table."""
    require("scipy", *(["pytrec_eval"] if args.beir else []))
    from hub_export.folder import compressed_dims, int8_ranges, load_model
    from hub_export.quality.evaluation import evaluate_model, format_table
    from hub_export.runtime.devices import check_devices

    check_devices([args.device])
    model = load_model(args.model, device=args.device)
    dims = compressed_dims(args.model) or None  # a compressed folder: rows per Matryoshka dimension
    ranges = {dim: int8_ranges(args.model, dim) for dim in dims or []}
    rows = evaluate_model(
        model, sts=args.sts, beir=args.beir, limit=args.limit, batch_size=args.batch_size, matryoshka_dims=dims,
        progress=True, int8_ranges={dim: r for dim, r in ranges.items() if r is not None},
    )  # fmt: skip
    sys.stdout.write(format_table(rows) + "\n")
    write_json_output(args.json, rows)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print pairwise similarity of models and write the heat map PNG."""
    require("scipy", "pytrec_eval", "matplotlib")
    from hub_export.quality.compare import compare_models, format_comparison, write_heatmap

    result = compare_models(
        args.models, args.beir, args.max_queries, args.max_docs, args.k, trust_remote_code=args.trust_remote_code,
        progress=True,
    )  # fmt: skip
    sys.stdout.write(format_comparison(result) + "\n")
    sys.stdout.write(f"heat map: {write_heatmap(result, args.png)}\n")
    write_json_output(args.json, result)
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    """Fit a Matryoshka projection of the concatenation and write a compressed model folder."""
    from hub_export.quality.compress import CompressOptions, compress_model

    try:
        dims = [positive_int(value.strip()) for value in args.dims.split(",")]
    except ValueError as error:
        raise ValueError(f"--dims {args.dims!r}: {error}") from None
    options = CompressOptions(
        corpus=args.corpus, dims=dims, method=args.method, queries=args.queries, limit=args.limit,
        epochs=args.epochs, batch_size=args.batch_size, pseudo_queries=args.pseudo_queries,
        sentences_per_doc=args.sentences_per_doc,
    )  # fmt: skip
    record = compress_model(args.model_dir, args.out, options, progress=not args.no_progress)
    sys.stdout.write(f"{args.out}\n")
    for dim, value in record["neighbours_kept_at_10"].items():
        sys.stdout.write(f"{dim:>6} dims  keeps {100 * value:.1f}% of each document's 10 nearest documents\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """calibrate, eval, compare and compress."""
    from hub_export.data import PSEUDO_QUERY_SOURCES
    from hub_export.quality.compress import METHODS

    calibrate = sub.add_parser("calibrate", help="store int8/int4 code ranges for stored vectors")
    calibrate.add_argument("model_dir", help="combined model folder")
    calibrate.add_argument("--corpus", required=True, help=".jsonl[.gz] with text (and title), or a text file")
    calibrate.add_argument("--limit", type=limit_int, default=2000, help="calibration sample size (0 = all)")
    calibrate.add_argument("--dims", action="append", metavar="NAME=K", help="store only the first K dims of a part")
    calibrate.set_defaults(func=cmd_calibrate)

    evaluate = sub.add_parser("eval", help="STS / retrieval table per part and for the concatenation")
    evaluate.add_argument("model", help="combined model folder or Hub id")
    evaluate.add_argument("--sts", help="STS-B style .tsv[.gz]")
    evaluate.add_argument("--beir", help="BEIR folder")
    evaluate.add_argument(
        "--limit", type=limit_int, default=None, help="subsample: STS pairs and BEIR queries (0 or unset = all)"
    )
    evaluate.add_argument("--batch-size", type=positive_int, default=32)
    evaluate.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the best available)")
    evaluate.add_argument("--json", help="also write the rows to this JSON file")
    evaluate.set_defaults(func=cmd_eval)

    compare = sub.add_parser("compare", help="similarity of embedding models (CKA, Jaccard@k) and concat gains")
    compare.add_argument("models", nargs="+", help="two or more sentence-transformers models")
    compare.add_argument("--beir", required=True, help="BEIR folder with the corpus, queries and qrels")
    compare.add_argument("--max-queries", type=limit_int, default=100, help="queries to use (0 = all)")
    compare.add_argument("--max-docs", type=limit_int, default=1000, help="documents to use (0 = all)")
    compare.add_argument("--k", type=positive_int, default=10, help="depth of the retrieval overlap")
    compare.add_argument("--png", default="compare.png", help="heat map output")
    compare.add_argument("--json", help="also write the result to this JSON file")
    compare.add_argument("--trust-remote-code", action="store_true")
    compare.set_defaults(func=cmd_compare)

    compress = sub.add_parser("compress", help="project the concatenation to fewer dims (Matryoshka PCA / trained)")
    compress.add_argument("model_dir", help="combined model folder (not already compressed)")
    compress.add_argument("--corpus", required=True, help=".jsonl[.gz] with text (and title), or a text file")
    compress.add_argument("--out", required=True, help="output folder: new, empty, or a previous output")
    compress.add_argument(
        "--dims",
        default="384,192,96,48",
        help="Matryoshka dimensions, strictly decreasing; the first is the output size",
    )
    compress.add_argument(
        "--method", default="trained", choices=METHODS, help="trained (PCA, then distillation) or pca"
    )
    compress.add_argument("--queries", default=None, help="queries (.jsonl[.gz] or text) for query-document training")
    compress.add_argument(
        "--pseudo-queries",
        default="sentences",
        choices=PSEUDO_QUERY_SOURCES,
        help="trained: corpus texts that also train query-document rankings (query prompt): sentences (of the "
        "documents' bodies), titles, or none (documents only)",
    )
    compress.add_argument(
        "--sentences-per-doc",
        type=limit_int,
        default=None,
        help="--pseudo-queries sentences: at most N drawn from each document (0 or unset = all; fewer = faster)",
    )
    compress.add_argument("--limit", type=limit_int, default=None, help="corpus texts to use (0 or unset = all)")
    compress.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="training passes over the cached vectors (unset = about 100,000 anchors in all, at least one pass)",
    )
    compress.add_argument("--batch-size", type=positive_int, default=32, help="encoding batch size")
    compress.add_argument("--no-progress", action="store_true")
    compress.set_defaults(func=cmd_compress)
