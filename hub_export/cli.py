"""``concat-embed``: build, demo, verify and publish combined embedding models."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from hub_export.publish.build import PartOptions

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


class OptionError(argparse.ArgumentTypeError, ValueError):
    """A bad option value: argparse prints its message, and callers may catch it as a ValueError."""


def positive_int(raw: str) -> int:
    """An integer > 0."""
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise OptionError(f"expected a positive integer, got {raw!r}")
    return value


def limit_int(raw: str) -> int | None:
    """A sample size: an integer >= 0, where 0 means no limit (None)."""
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise OptionError(f"expected an integer >= 0 (0 = no limit), got {raw!r}")
    return value or None


def positive_float(raw: str) -> float:
    """A finite number > 0 (``inf``, ``nan`` and ``1e309`` are refused)."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise OptionError(f"expected a finite number > 0, got {raw!r}")
    return value


def parts_from_args(args: argparse.Namespace) -> list[PartOptions]:
    """Turn the ``build`` options into :class:`PartOptions`, validating every name and value."""
    from hub_export.publish.build import PartOptions

    sources = [split_assignment(value, "--part") for value in args.part]
    names = [name for name, _ in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"--part names must be unique, got {names}")
    pooling = per_part(args.pooling, "--pooling", names, str)
    max_len = per_part(args.max_seq_length, "--max-seq-length", names, positive_int)
    weights = per_part(args.weight, "--weight", names, positive_float)
    truncate = per_part(args.truncate_dim, "--truncate-dim", names, positive_int)
    part_prompts: dict[str, dict[str, str]] = {}
    for value in args.part_prompt or []:
        key, text = split_assignment(value, "--part-prompt")
        name, _, prompt_name = key.partition(".")
        if name not in names or not prompt_name:
            raise ValueError(f"--part-prompt {value!r}: expected PART.PROMPT_NAME=TEXT with PART in {names}")
        part_prompts.setdefault(name, {})[prompt_name] = text
    trusted = per_part(
        [f"{name}=" for name in args.part_trust_remote_code or []], "--part-trust-remote-code", names, str
    )
    return [
        PartOptions(
            name=name,
            source=source,
            pooling=pooling.get(name),
            max_seq_length=max_len.get(name),
            weight=weights.get(name, 1.0),
            truncate_dim=truncate.get(name),
            prompts=part_prompts.get(name, {}),
            trust_remote_code=name in trusted,
        )
        for name, source in sources
    ]


def cmd_build(args: argparse.Namespace) -> int:
    """Build a combined model folder."""
    from hub_export.publish.build import build_model

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
    from hub_export.publish.verify import format_report, run_verification

    record = run_verification(args.model_dir, args.tolerance)
    sys.stdout.write(format_report(record) + "\n")
    return 0 if record["passed"] else 1


def cmd_push(args: argparse.Namespace) -> int:
    """Push a verified model folder to the Hub in one commit (or list what would be pushed)."""
    from hub_export.publish.push import dry_run_listing, push_model
    from hub_export.publish.sources import check_repo_id

    if args.dry_run:
        check_repo_id(args.repo_id)
        sys.stdout.write(dry_run_listing(args.model_dir, args.allow_pickle, args.skip_verify) + "\n")
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


def write_json_output(path: str | None, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` (the ``--json`` option) when it is given."""
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)


def cmd_eval(args: argparse.Namespace) -> int:
    """Print (and optionally write as JSON) the per-part / concatenation evaluation table."""
    from sentence_transformers import SentenceTransformer

    from hub_export.folder import read_json
    from hub_export.quality.compress import COMPRESSION_FILE, int8_ranges
    from hub_export.quality.evaluation import evaluate_model, format_table
    from hub_export.runtime.devices import check_devices

    check_devices([args.device])
    model = SentenceTransformer(args.model, trust_remote_code=True, device=args.device)
    record = Path(args.model) / COMPRESSION_FILE  # a compressed folder: rows per Matryoshka dimension
    dims = read_json(record).get("dims") if record.is_file() else None
    ranges = {dim: int8_ranges(Path(args.model), dim) for dim in dims or []}
    rows = evaluate_model(
        model, sts=args.sts, beir=args.beir, limit=args.limit, batch_size=args.batch_size, matryoshka_dims=dims,
        progress=True, int8_ranges={dim: r for dim, r in ranges.items() if r is not None},
    )  # fmt: skip
    sys.stdout.write(format_table(rows) + "\n")
    write_json_output(args.json, rows)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print pairwise similarity of models and write the heat map PNG."""
    from hub_export.quality.compare import compare_models, format_comparison, write_heatmap

    result = compare_models(
        args.models, args.beir, args.max_queries, args.max_docs, args.k, trust_remote_code=args.trust_remote_code,
        progress=True,
    )  # fmt: skip
    sys.stdout.write(format_comparison(result) + "\n")
    sys.stdout.write(f"heat map: {write_heatmap(result, args.png)}\n")
    write_json_output(args.json, result)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Embed a corpus into sharded, resumable Parquet files."""
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


def announce(model: str, url: str, engine: str) -> None:
    """The one line ``serve`` prints on stderr once it answers requests."""
    sys.stderr.write(f"serving {model} on {url} ({engine} engine; OpenAI /v1/embeddings, TEI /embed)\n")
    sys.stderr.flush()


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over HTTP (OpenAI- and TEI-compatible) until interrupted."""
    from hub_export.runtime.choice import choose_runtime
    from hub_export.serve.app import API_KEY_ENV

    if args.engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {args.engine!r}; valid: ['local', 'ray']")
    runtime = choose_runtime(args.model, args.backend, args.quantization)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    limits = {"max_batch_tokens": args.max_batch_tokens, "max_client_batch": args.max_client_batch,
              "max_queue_texts": args.max_queue_texts}  # fmt: skip
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s: reachable from other machines%s", args.host, "" if api_key else " without an API key"
        )
    if args.engine == "ray":
        from hub_export.serve.ray_engine import ray_application, run_ray

        app = ray_application(args.model, runtime, limits, api_key, args.replicas, args.max_replicas)
        url = f"http://{args.host}:{args.port}"
        run_ray(app, args.host, args.port, args.ray_address, ready=lambda: announce(args.model, url, "ray"))
        return 0
    from hub_export.serve.app import bound_socket, create_app, load_embedder, run_local

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sock = bound_socket(args.host, args.port)  # bind first: a busy port fails before the model loads
    embedder = load_embedder(args.model, runtime, **limits)
    announce(args.model, f"http://{args.host}:{sock.getsockname()[1]}", "local")
    run_local(create_app(embedder, api_key=api_key), sock)
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
    for dim, value in record["similarity_fidelity"].items():
        sys.stdout.write(f"{dim:>6} dims  similarity fidelity {value:.4f}\n")
    return 0


def cmd_export_backends(args: argparse.Namespace) -> int:
    """Export every part to ONNX / OpenVINO (fp32, optionally int8), check them against torch, add them."""
    from hub_export.publish.backends import export_backends

    onnx = args.onnx or not args.openvino
    record = export_backends(
        args.model_dir, onnx=onnx, openvino=args.openvino, int8=args.int8, family=args.int8_for,
        calibration=args.calibration, sts=args.sts, sts_limit=args.sts_limit,
    )  # fmt: skip
    for name, entry in record["files"].items():
        change = f"  STS {entry['sts_change']:+.2f}" if "sts_change" in entry else ""
        sys.stdout.write(f"{name:<46} max |diff| vs torch {entry['max_abs_diff']:.2e}{change}\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Build (or reuse) the embedded demo model and run a small semantic search."""
    from hub_export.demo import run_demo

    run_demo(cache_dir=args.cache_dir, rebuild=args.rebuild, top_k=args.top_k, stream=sys.stdout)
    return 0


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--quantization``: how ``embed`` and ``serve`` run the model."""
    parser.add_argument(
        "--backend",
        default="auto",
        help="torch, onnx, openvino (files from export-backends) or auto: the fastest this CPU and folder allow",
    )
    parser.add_argument(
        "--quantization",
        default="auto",
        help="auto (this CPU's int8 path; vectors move slightly, README Speed), none (exact) or int8-dynamic (torch)",
    )


def make_parser() -> argparse.ArgumentParser:
    """The ``concat-embed`` argument parser."""
    parser = argparse.ArgumentParser(prog="concat-embed", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build a combined model folder from parts")
    build.add_argument(
        "--part",
        action="append",
        required=True,
        metavar="NAME=SRC",
        help="part name and source (a local folder or org/name[@revision]), in order",
    )
    build.add_argument("--pooling", action="append", metavar="NAME=MODE", help="pooling of a plain transformers part")
    build.add_argument("--prompt", action="append", metavar="NAME=TEXT", help="model-wide prompt, e.g. query=...")
    build.add_argument(
        "--part-prompt",
        action="append",
        metavar="PART.NAME=TEXT",
        help="a part's own text for a model-wide prompt name (query, document or a --prompt name)",
    )
    build.add_argument(
        "--max-seq-length",
        action="append",
        metavar="NAME=N",
        help="token limit of a part (at most its position limit); longer texts are truncated",
    )
    build.add_argument(
        "--weight", action="append", metavar="NAME=W", help="finite factor > 0 on a part's unit vector (default 1)"
    )
    build.add_argument(
        "--truncate-dim",
        action="append",
        metavar="NAME=K",
        help="keep the first K dims of a part, then re-normalize (Matryoshka)",
    )
    build.add_argument(
        "--part-trust-remote-code",
        action="append",
        metavar="NAME",
        help="let this part's own code (auto_map) run; recorded in concat_config.json and the card",
    )
    build.add_argument("--normalize-output", action="store_true", help="L2-normalize the concatenation")
    build.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty, or a previous build (replaced only by a complete new model)",
    )
    build.add_argument("--token", default=None, help="Hub token for private parts (default: HF_TOKEN / login)")
    build.add_argument("--cache-dir", default=None, help="Hub cache folder for downloaded parts")
    build.add_argument("--allow-pickle", action="store_true", help="accept parts with pickle weights")
    build.set_defaults(func=cmd_build)

    verify = sub.add_parser("verify", help="check a model folder against its parts, in a fresh process")
    verify.add_argument("model_dir", help="combined model folder")
    verify.add_argument(
        "--tolerance", type=positive_float, default=None, help="max |difference| allowed (default 1e-5)"
    )
    verify.set_defaults(func=cmd_verify)

    push = sub.add_parser("push", help="publish a verified model folder to the Hub in one commit")
    push.add_argument("model_dir", help="combined model folder (verified; only its model files are sent)")
    push.add_argument("--repo-id", required=True, help="org/name")
    push.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    push.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / login)")
    push.add_argument("--dry-run", action="store_true", help="list the files and sizes; no network")
    push.add_argument("--skip-verify", action="store_true", help="push without a passing verification")
    push.add_argument("--allow-pickle", action="store_true", help="also upload pickle weights")
    push.set_defaults(func=cmd_push)

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

    embed = sub.add_parser("embed", help="embed a corpus into sharded, resumable Parquet files")
    embed.add_argument("model", help="combined model folder or Hub id")
    embed.add_argument("--input", required=True, help=".jsonl, .jsonl.gz or .parquet")
    embed.add_argument("--output", required=True, help="output folder (rerun the same command to resume)")
    embed.add_argument("--id-field", default="_id")
    embed.add_argument("--text-fields", default="title,text", help="comma-separated, joined with a space")
    embed.add_argument("--shard-size", type=positive_int, default=10_000, help="records per Parquet file")
    embed.add_argument("--dtype", default="float32", help="float32, float16 or int8 (needs `calibrate`)")
    embed.add_argument("--prompt-name", default="document", help="the model's prompt name for the texts")
    embed.add_argument("--batch-size", type=positive_int, default=32)
    embed.add_argument("--revision", default=None, help="model revision (Hub ids)")
    embed.add_argument("--engine", default="local", help="local or ray")
    embed.add_argument("--devices", default=None, help="local multi-process pool, e.g. cpu,cpu or cuda:0,cuda:1")
    embed.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    embed.add_argument("--ray-workers", type=positive_int, default=1, help="Ray actors embedding in parallel")

    add_runtime_options(embed)
    embed.add_argument("--no-progress", action="store_true")
    embed.set_defaults(func=cmd_embed)

    compress = sub.add_parser("compress", help="project the concatenation to fewer dims (Matryoshka PCA / trained)")
    compress.add_argument("model_dir", help="combined model folder (not already compressed)")
    compress.add_argument("--corpus", required=True, help=".jsonl[.gz] with text (and title), or a text file")
    compress.add_argument("--out", required=True, help="output folder: new, empty, or a previous output")
    compress.add_argument(
        "--dims",
        default="384,192,96,48",
        help="Matryoshka dimensions, strictly decreasing; the first is the output size",
    )
    compress.add_argument("--method", default="trained", help="trained (PCA, then distillation) or pca")
    compress.add_argument("--queries", default=None, help="queries (.jsonl[.gz] or text) for query-document training")
    compress.add_argument(
        "--pseudo-queries",
        default="sentences",
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

    serve = sub.add_parser(
        "serve", help="serve a model over HTTP: OpenAI /v1/embeddings and TEI /embed, /info, /metrics"
    )
    serve.add_argument("model", help="combined model folder or Hub id (any sentence-transformers model works)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8080, help="port (0 = any free port)")

    add_runtime_options(serve)
    serve.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=2048,
        help="padded tokens per model batch (small: length-sorted, little padding)",
    )
    serve.add_argument("--max-client-batch", type=positive_int, default=2048, help="texts per request (more: 413)")
    serve.add_argument(
        "--max-queue-texts",
        type=positive_int,
        default=8192,
        help="texts waiting for the model (more: 503 with Retry-After)",
    )
    serve.add_argument(
        "--api-key", default=None, help=f"require Authorization: Bearer KEY (default: ${{{'CONCAT_EMBED_API_KEY'}}})"
    )
    serve.add_argument(
        "--threads", type=positive_int, default=None, help="torch threads for the model (default: torch's)"
    )
    serve.add_argument("--engine", default="local", help="local (one process) or ray (Ray Serve replicas)")
    serve.add_argument("--replicas", type=positive_int, default=1, help="Ray Serve replicas (engine ray)")
    serve.add_argument("--max-replicas", type=positive_int, default=None, help="autoscale up to this many (engine ray)")
    serve.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    serve.set_defaults(func=cmd_serve)

    export = sub.add_parser(
        "export-backends", help="add ONNX / OpenVINO files (fp32, int8) to every part, checked against torch"
    )
    export.add_argument("model_dir", help="combined model folder (written by build or compress)")
    export.add_argument("--onnx", action="store_true", help="onnx/model.onnx per part (the default)")
    export.add_argument("--openvino", action="store_true", help="openvino/openvino_model.xml + .bin per part")
    export.add_argument(
        "--int8",
        action="store_true",
        help="also int8: ONNX Runtime dynamic (onnx/model_q*_<cpu>.onnx), NNCF static (openvino/..._qint8_quantized)",
    )
    export.add_argument(
        "--int8-for",
        default=None,
        help="CPU of the int8 ONNX file: avx2, avx512, avx512_vnni, arm64 (default: this one)",
    )
    export.add_argument("--calibration", default=None, help="texts for OpenVINO int8 (default: built-in samples)")
    export.add_argument("--sts", default=None, help="STS-B style .tsv[.gz]: report each file's Spearman change")
    export.add_argument("--sts-limit", type=limit_int, default=None, help="STS pairs to use (0 or unset = all)")
    export.set_defaults(func=cmd_export_backends)

    demo = sub.add_parser("demo", help="build the demo model from the PyPI-shipped MiniLM models and search")
    demo.add_argument("--cache-dir", default=None, help="where the built demo model is cached")
    demo.add_argument("--rebuild", action="store_true", help="rebuild even if a cached model exists")
    demo.add_argument("--top-k", type=positive_int, default=2)
    demo.set_defaults(func=cmd_demo)
    return parser  # fmt: skip


def work_errors() -> tuple[type[BaseException], ...]:
    """Errors of failed work (I/O, network, Hub, corrupt archives) that end a command with exit 1."""
    import importlib
    import zlib

    errors: list[type[BaseException]] = [OSError, EOFError, zlib.error, RuntimeError]
    for client in ("httpx2", "httpx", "requests"):  # the HTTP client under huggingface_hub, by version
        try:
            errors.append(importlib.import_module(client).HTTPError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def describe(error: BaseException) -> str:
    """One line for a failed command: the error, with advice when the Hub could not be reached."""
    text = " ".join(str(error).split()) or type(error).__name__
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ConnectError", "ConnectTimeout", "ConnectionError", "LocalEntryNotFoundError", "TransportError"}:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        text = (
            f"cannot reach the Hub at {endpoint} ({type(error).__name__}: {text[:300]}); "
            "check HF_ENDPOINT and the network, or set HF_HUB_OFFLINE=1 to use cached files"
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``concat-embed`` and ``python -m hub_export``."""
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:  # no library chatter: load reports, weight-loading bars (read at import)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.")  # int8 API deprecation
        if "transformers" in sys.modules:  # already imported (e.g. main() called in-process)
            transformers = sys.modules["transformers"]
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
    try:
        return args.func(args)
    except ValueError as error:  # bad input: usage
        parser.exit(2, f"concat-embed {args.command}: error: {describe(error)}\n")
    except work_errors() as error:  # the work failed
        parser.exit(1, f"concat-embed {args.command}: error: {describe(error)}\n")
