"""The command that puts a model behind HTTP: serve."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from hub_export.cli.options import add_runtime_options, port_number, positive_float, positive_int, require

logger = logging.getLogger("hub_export")


def announce(model: str, url: str, engine: str) -> None:
    """The one line ``serve`` prints on stderr once it answers requests."""
    sys.stderr.write(f"serving {model} on {url} ({engine} engine; OpenAI /v1/embeddings, TEI /embed)\n")
    sys.stderr.flush()


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over HTTP (OpenAI- and TEI-compatible) until interrupted."""
    require("fastapi", "uvicorn", "prometheus_client", *(["ray"] if args.engine == "ray" else []))
    from hub_export.runtime.choice import choose_runtime
    from hub_export.serve.app import API_KEY_ENV

    runtime = choose_runtime(args.model, args.backend, args.quantization)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    limits = {"max_batch_tokens": args.max_batch_tokens, "max_client_batch": args.max_client_batch,
              "max_queue_texts": args.max_queue_texts, "served_name": args.served_model_name}  # fmt: skip
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s: reachable from other machines%s", args.host, "" if api_key else " without an API key"
        )
    from hub_export.serve.app import bound_socket

    if args.engine == "ray":
        from hub_export.serve.ray_engine import ray_application, run_ray

        bound_socket(args.host, args.port).close()  # a busy port fails now, not after Ray and the model start
        app = ray_application(
            args.model, runtime, limits, api_key, args.replicas, args.max_replicas, payload_limit=args.payload_limit
        )
        url = f"http://{args.host}:{args.port}"
        run_ray(app, args.host, args.port, args.ray_address, ready=lambda: announce(args.model, url, "ray"))
        return 0
    from hub_export.serve.app import create_app, load_embedder, run_local

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sock = bound_socket(args.host, args.port)  # bind first: a busy port fails before the model loads
    embedder = load_embedder(args.model, runtime, **limits)
    announce(args.model, f"http://{args.host}:{sock.getsockname()[1]}", "local")
    run_local(create_app(embedder, api_key=api_key, payload_limit=args.payload_limit), sock, args.grace_period)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """serve."""
    serve = sub.add_parser(
        "serve", help="serve a model over HTTP: OpenAI /v1/embeddings and TEI /embed, /info, /metrics"
    )
    serve.add_argument("model", help="combined model folder or Hub id (any sentence-transformers model works)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=port_number, default=8080, help="port (0 = any free port)")

    add_runtime_options(serve)
    serve.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=2048,
        help="padded tokens per model batch (small: length-sorted, little padding)",
    )
    serve.add_argument("--max-client-batch", type=positive_int, default=2048, help="texts per request (more: 413)")
    serve.add_argument(
        "--payload-limit", type=positive_int, default=2_000_000, help="bytes of a request body (more: 413), as TEI's"
    )
    serve.add_argument(
        "--served-model-name", default=None, help="the name /info and responses report (default: the folder's name)"
    )
    serve.add_argument(
        "--grace-period",
        type=positive_float,
        default=30.0,
        help="seconds to answer the requests in flight after SIGTERM (waiting ones get 503 at once)",
    )
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
    serve.add_argument(
        "--engine", default="local", choices=("local", "ray"), help="local (one process) or ray (Ray Serve replicas)"
    )
    serve.add_argument("--replicas", type=positive_int, default=1, help="Ray Serve replicas (engine ray)")
    serve.add_argument("--max-replicas", type=positive_int, default=None, help="autoscale up to this many (engine ray)")
    serve.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    serve.set_defaults(func=cmd_serve)
