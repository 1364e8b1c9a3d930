"""``concat-embed``: build, demo, verify and publish combined embedding models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from hub_export.build import PartOptions, build_model

T = TypeVar("T")
logger = logging.getLogger("hub_export")


def split_assignment(value: str, flag: str) -> tuple[str, str]:
    """Split ``KEY=VALUE``; raise ``ValueError`` naming the flag when there is no ``=``."""
    key, sep, rest = value.partition("=")
    if not sep or not key:
        raise ValueError(f"{flag} expects KEY=VALUE, got {value!r}")
    return key.strip(), rest


def per_part(
    values: Sequence[str] | None, flag: str, names: Sequence[str], convert: Callable[[str], T]
) -> dict[str, T]:
    """Parse repeated ``NAME=VALUE`` options whose NAME must be one of the part names."""
    result: dict[str, T] = {}
    for value in values or []:
        name, raw = split_assignment(value, flag)
        if name not in names:
            raise ValueError(f"{flag} {value!r}: unknown part {name!r}; valid parts: {list(names)}")
        try:
            result[name] = convert(raw)
        except ValueError as error:
            raise ValueError(f"{flag} {value!r}: {error}") from None
    return result


def positive_int(raw: str) -> int:
    """An integer > 0."""
    value = int(raw)
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {raw!r}")
    return value


def parts_from_args(args: argparse.Namespace) -> list[PartOptions]:
    """Turn the ``build`` options into :class:`PartOptions`, validating every name and value."""
    sources = [split_assignment(value, "--part") for value in args.part]
    names = [name for name, _ in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"--part names must be unique, got {names}")
    pooling = per_part(args.pooling, "--pooling", names, str)
    max_len = per_part(args.max_seq_length, "--max-seq-length", names, positive_int)
    weights = per_part(args.weight, "--weight", names, float)
    truncate = per_part(args.truncate_dim, "--truncate-dim", names, positive_int)
    part_prompts: dict[str, dict[str, str]] = {}
    for value in args.part_prompt or []:
        key, text = split_assignment(value, "--part-prompt")
        name, _, prompt_name = key.partition(".")
        if name not in names or not prompt_name:
            raise ValueError(f"--part-prompt {value!r}: expected PART.PROMPT_NAME=TEXT with PART in {names}")
        part_prompts.setdefault(name, {})[prompt_name] = text
    return [
        PartOptions(
            name=name,
            source=source,
            pooling=pooling.get(name),
            max_seq_length=max_len.get(name),
            weight=weights.get(name, 1.0),
            truncate_dim=truncate.get(name),
            prompts=part_prompts.get(name, {}),
        )
        for name, source in sources
    ]


def cmd_build(args: argparse.Namespace) -> int:
    """Build a combined model folder."""
    prompts = dict(split_assignment(value, "--prompt") for value in args.prompt or [])
    out = build_model(
        parts_from_args(args),
        args.out,
        prompts=prompts,
        normalize_output=args.normalize_output,
        token=args.token,
        cache_dir=args.cache_dir,
        allow_pickle=args.allow_pickle,
    )
    logger.info("Built %s", out)
    sys.stdout.write(f"{out}\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a model folder in a fresh process; exit 1 when a difference exceeds the tolerance."""
    from hub_export.card import write_card
    from hub_export.verify import format_report, run_verification

    record = run_verification(args.model_dir, args.tolerance)
    write_card(args.model_dir)
    sys.stdout.write(format_report(record) + "\n")
    return 0 if record["passed"] else 1


def cmd_push(args: argparse.Namespace) -> int:
    """Push a verified model folder to the Hub in one commit (or list what would be pushed)."""
    from hub_export.push import dry_run_listing, push_model

    if args.dry_run:
        sys.stdout.write(dry_run_listing(args.model_dir, args.allow_pickle) + "\n")
        return 0
    url = push_model(
        args.model_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        token=args.token,
        skip_verify=args.skip_verify,
        allow_pickle=args.allow_pickle,
    )
    sys.stdout.write(f"{url}\n")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Store per-part int8/int4 ranges from a calibration corpus in concat_config.json."""
    from hub_export.calibrate import calibrate_folder

    dims = dict(split_assignment(value, "--dims") for value in args.dims or [])
    result = calibrate_folder(args.model_dir, args.corpus, args.limit, {k: positive_int(v) for k, v in dims.items()})
    for name, schemes in result.items():
        for scheme, entry in schemes.items():
            sys.stdout.write(
                f"{name:<16} {scheme}  [{entry['low']:+.4f}, {entry['high']:+.4f}]  dims {entry['dims']}\n"
            )
    return 0


def write_json_output(path: str | None, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` (the ``--json`` option) when it is given."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)


def cmd_eval(args: argparse.Namespace) -> int:
    """Print (and optionally write as JSON) the per-part / concatenation evaluation table."""
    from sentence_transformers import SentenceTransformer

    from hub_export.evaluation import evaluate_model, format_table

    model = SentenceTransformer(args.model, trust_remote_code=True, device=args.device)
    rows = evaluate_model(model, sts=args.sts, beir=args.beir, limit=args.limit, batch_size=args.batch_size)
    sys.stdout.write(format_table(rows) + "\n")
    write_json_output(args.json, rows)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print pairwise similarity of models and write the heat map PNG."""
    from hub_export.compare import compare_models, format_comparison, write_heatmap

    result = compare_models(
        args.models, args.beir, args.max_queries, args.max_docs, args.k, trust_remote_code=args.trust_remote_code
    )
    sys.stdout.write(format_comparison(result) + "\n")
    sys.stdout.write(f"heat map: {write_heatmap(result, args.png)}\n")
    write_json_output(args.json, result)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed a corpus into sharded, resumable Parquet files."""
    from hub_export.embed import EmbedJob, run_embed
    from hub_export.fast import keep_freed_memory

    keep_freed_memory()  # this process exists to embed: reuse freed heap memory (see hub_export.fast)
    job = EmbedJob(
        model=args.model,
        input=args.input,
        output=args.output,
        id_field=args.id_field,
        text_fields=[name.strip() for name in args.text_fields.split(",") if name.strip()],
        shard_size=args.shard_size,
        dtype=args.dtype,
        prompt_name=args.prompt_name,
        batch_size=args.batch_size,
        revision=args.revision,
        engine=args.engine,
        devices=[d.strip() for d in args.devices.split(",")] if args.devices else [],
        ray_address=args.ray_address,
        ray_workers=args.ray_workers,
        quantization=args.quantization,
    )
    sys.stdout.write(json.dumps(run_embed(job, progress=not args.no_progress)) + "\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build (or reuse) the embedded demo model and run a small semantic search."""
    from hub_export.demo import run_demo

    run_demo(cache_dir=args.cache_dir, rebuild=args.rebuild, top_k=args.top_k, stream=sys.stdout)
    return 0


def make_parser() -> argparse.ArgumentParser:
    """The ``concat-embed`` argument parser."""
    parser = argparse.ArgumentParser(prog="concat-embed", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build a combined model folder from parts")
    build.add_argument("--part", action="append", required=True, metavar="NAME=SRC", help="part source, in order")
    build.add_argument("--pooling", action="append", metavar="NAME=MODE", help="pooling of a plain transformers part")
    build.add_argument("--prompt", action="append", metavar="NAME=TEXT", help="model-wide prompt, e.g. query=...")
    build.add_argument("--part-prompt", action="append", metavar="PART.NAME=TEXT", help="per-part prompt override")
    build.add_argument("--max-seq-length", action="append", metavar="NAME=N")
    build.add_argument("--weight", action="append", metavar="NAME=W")
    build.add_argument("--truncate-dim", action="append", metavar="NAME=K")
    build.add_argument("--normalize-output", action="store_true", help="L2-normalize the concatenation")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--token", default=None, help="Hub token for private parts (default: HF_TOKEN / login)")
    build.add_argument("--cache-dir", default=None, help="Hub cache folder for downloaded parts")
    build.add_argument("--allow-pickle", action="store_true", help="accept parts with pickle weights")
    build.set_defaults(func=cmd_build)

    verify = sub.add_parser("verify", help="check a model folder against its parts, in a fresh process")
    verify.add_argument("model_dir")
    verify.add_argument("--tolerance", type=float, default=1e-5)
    verify.set_defaults(func=cmd_verify)

    push = sub.add_parser("push", help="publish a verified model folder to the Hub in one commit")
    push.add_argument("model_dir")
    push.add_argument("--repo-id", required=True, help="org/name")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / login)")
    push.add_argument("--dry-run", action="store_true", help="list the files and sizes; no network")
    push.add_argument("--skip-verify", action="store_true", help="push without a passing verification")
    push.add_argument("--allow-pickle", action="store_true", help="also upload pickle weights")
    push.set_defaults(func=cmd_push)

    calibrate = sub.add_parser("calibrate", help="store per-part int8/int4 quantization ranges")
    calibrate.add_argument("model_dir")
    calibrate.add_argument("--corpus", required=True, help=".jsonl[.gz] with text (and title), or a text file")
    calibrate.add_argument("--limit", type=int, default=2000, help="calibration sample size")
    calibrate.add_argument("--dims", action="append", metavar="NAME=K", help="store only the first K dims of a part")
    calibrate.set_defaults(func=cmd_calibrate)

    evaluate = sub.add_parser("eval", help="STS / retrieval table per part and for the concatenation")
    evaluate.add_argument("model", help="combined model folder or Hub id")
    evaluate.add_argument("--sts", help="STS-B style .tsv[.gz]")
    evaluate.add_argument("--beir", help="BEIR folder")
    evaluate.add_argument("--limit", type=int, default=None, help="subsample (STS pairs, BEIR queries)")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--json", help="also write the rows to this JSON file")
    evaluate.set_defaults(func=cmd_eval)

    compare = sub.add_parser("compare", help="similarity of embedding models (CKA, Jaccard@k) and concat gains")
    compare.add_argument("models", nargs="+", help="two or more sentence-transformers models")
    compare.add_argument("--beir", required=True, help="BEIR folder with the corpus, queries and qrels")
    compare.add_argument("--max-queries", type=int, default=100)
    compare.add_argument("--max-docs", type=int, default=1000)
    compare.add_argument("--k", type=int, default=10)
    compare.add_argument("--png", default="compare.png", help="heat map output")
    compare.add_argument("--json", help="also write the result to this JSON file")
    compare.add_argument("--trust-remote-code", action="store_true")
    compare.set_defaults(func=cmd_compare)

    embed = sub.add_parser("embed", help="embed a corpus into sharded, resumable Parquet files")
    embed.add_argument("model", help="combined model folder or Hub id")
    embed.add_argument("--input", required=True, help=".jsonl, .jsonl.gz or .parquet")
    embed.add_argument("--output", required=True, help="output folder (rerun the same command to resume)")
    embed.add_argument("--id-field", default="_id")
    embed.add_argument("--text-fields", default="title,text", help="comma-separated, joined with a space")
    embed.add_argument("--shard-size", type=int, default=10_000)
    embed.add_argument("--dtype", default="float32", help="float32, float16 or int8 (needs `calibrate`)")
    embed.add_argument("--prompt-name", default="document")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--revision", default=None, help="model revision (Hub ids)")
    embed.add_argument("--engine", default="local", help="local or ray")
    embed.add_argument("--devices", default=None, help="local multi-process pool, e.g. cpu,cpu or cuda:0,cuda:1")
    embed.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    embed.add_argument("--ray-workers", type=int, default=1, help="Ray actors embedding in parallel")
    embed.add_argument(
        "--quantization", default=None, help="int8-dynamic: the CPU int8 fast path (vectors move slightly)"
    )
    embed.add_argument("--no-progress", action="store_true")
    embed.set_defaults(func=cmd_embed)

    demo = sub.add_parser("demo", help="build the demo model from the PyPI-shipped MiniLM models and search")
    demo.add_argument("--cache-dir", default=None, help="where the built demo model is cached")
    demo.add_argument("--rebuild", action="store_true", help="rebuild even if a cached model exists")
    demo.add_argument("--top-k", type=int, default=2)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``concat-embed`` and ``python -m hub_export``."""
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        import transformers

        transformers.logging.set_verbosity_error()
    try:
        return args.func(args)
    except (ValueError, OSError) as error:
        parser.exit(2, f"concat-embed {args.command}: error: {error}\n")
