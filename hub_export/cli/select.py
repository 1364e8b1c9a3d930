"""The command that chooses parts and weights from data: select."""

from __future__ import annotations

import argparse
import sys

from hub_export.cli.options import limit_int, positive_int, require, split_assignment, write_json_output


def share(raw: str) -> float:
    """``--holdout``: a share strictly between 0 and 1."""
    from hub_export.cli.options import OptionError

    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise OptionError(f"expected a share strictly between 0 and 1, e.g. 0.5; got {raw!r}")
    return value


def cmd_select(args: argparse.Namespace) -> int:
    """Score candidates alone and combined, recommend a combination (and build it with --build)."""
    require(*(["matplotlib"] if args.png else []))
    from hub_export.select import SelectOptions, build_recommended, format_report, select_parts, write_pareto_png

    parts = [split_assignment(value, "--part") for value in args.part]
    options = SelectOptions(
        sts=args.sts, beir=args.beir, corpus=args.corpus, limit=args.limit, max_parts=args.max_parts,
        weights=args.weights, holdout=args.holdout, cache=args.cache, reference=args.reference,
    )  # fmt: skip
    if args.build:
        from hub_export.outdir import check_output

        check_output(args.build)  # refused now, not after every candidate has encoded
    result = select_parts(parts, options, progress=not args.no_progress)
    sys.stdout.write(format_report(result) + "\n")
    write_json_output(args.json, result)
    if args.png:
        sys.stdout.write(f"Pareto front: {write_pareto_png(result, args.png)}\n")
    if args.build:
        sys.stdout.write(f"built: {build_recommended(result, parts, args.build)}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """select."""
    from hub_export.select.devset import REFERENCES
    from hub_export.select.report import WEIGHT_MODES

    select = sub.add_parser("select", help="choose the parts to combine and their weights from dev data")
    select.add_argument(
        "--part", action="append", required=True, metavar="NAME=SRC", help="a candidate: local folder or org/name[@rev]"
    )
    data = select.add_mutually_exclusive_group(required=True)
    data.add_argument("--sts", help="STS-B style .tsv[.gz]: pairs with gold scores (Spearman)")
    data.add_argument("--beir", help="BEIR folder (nDCG@10 on its qrels/test.tsv queries)")
    data.add_argument(
        "--corpus", help="texts without labels: sentences as queries, the candidates' consensus as reference"
    )
    select.add_argument("--limit", type=limit_int, default=None, help="STS pairs or BEIR queries to use (0 = all)")
    select.add_argument(
        "--max-parts", type=positive_int, default=None, help="largest combination (default 3; greedy beyond pairs)"
    )
    select.add_argument(
        "--reference",
        default="source",
        choices=REFERENCES,
        help="--corpus: a sentence's relevant document is its own, the sentence taken out (source), or the top 10 "
        "of all candidates concatenated (concat)",
    )
    select.add_argument("--weights", default="auto", choices=WEIGHT_MODES, help="auto: fitted on the choosing half")
    select.add_argument("--holdout", type=share, default=0.5, help="share of pairs / queries held out (seeded)")
    select.add_argument("--json", default=None, help="write every combination's numbers to this JSON file")
    select.add_argument("--png", default=None, help="write the Pareto front of quality against cost (PNG)")
    select.add_argument("--build", default=None, help="build the recommended combination into this folder")
    select.add_argument(
        "--cache", default=None, help="where candidates' vectors are cached (default ~/.cache/concat-embed)"
    )
    select.add_argument("--no-progress", action="store_true")
    select.set_defaults(func=cmd_select)
