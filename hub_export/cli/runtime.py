"""The command that runs a model over a corpus: embed."""

from __future__ import annotations

import argparse
import json
import sys

from hub_export.cli.options import add_runtime_options, positive_int, require


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed a corpus into sharded, resumable Parquet files."""
    require("pyarrow", *(["ray"] if args.engine == "ray" else []))
    from hub_export.runtime.choice import choose_runtime
    from hub_export.runtime.embed import EmbedJob, run_embed
    from hub_export.runtime.memory import keep_freed_memory

    runtime = choose_runtime(args.model, args.backend, args.quantization)
    keep_freed_memory()  # this process exists to embed: reuse freed heap memory (see hub_export.runtime.memory)
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
        quantization=runtime.quantization,
        backend=runtime.backend,
    )
    sys.stdout.write(json.dumps(run_embed(job, progress=not args.no_progress)) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """embed."""
    from hub_export.runtime.embed import DTYPES, ENGINES

    embed = sub.add_parser("embed", help="embed a corpus into sharded, resumable Parquet files")
    embed.add_argument("model", help="combined model folder or Hub id")
    embed.add_argument("--input", required=True, help=".jsonl, .jsonl.gz or .parquet")
    embed.add_argument("--output", required=True, help="output folder (rerun the same command to resume)")
    embed.add_argument("--id-field", default="_id")
    embed.add_argument("--text-fields", default="title,text", help="comma-separated, joined with a space")
    embed.add_argument("--shard-size", type=positive_int, default=10_000, help="records per Parquet file")
    embed.add_argument("--dtype", default="float32", choices=DTYPES, help="int8 needs `calibrate` first")
    embed.add_argument("--prompt-name", default="document", help="the model's prompt name for the texts")
    embed.add_argument("--batch-size", type=positive_int, default=32)
    embed.add_argument("--revision", default=None, help="model revision (Hub ids)")
    embed.add_argument("--engine", default="local", choices=ENGINES, help="local (one process or --devices) or ray")
    embed.add_argument("--devices", default=None, help="local multi-process pool, e.g. cpu,cpu or cuda:0,cuda:1")
    embed.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    embed.add_argument("--ray-workers", type=positive_int, default=1, help="Ray actors embedding in parallel")

    add_runtime_options(embed)
    embed.add_argument("--no-progress", action="store_true")
    embed.set_defaults(func=cmd_embed)
