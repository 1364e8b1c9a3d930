"""The demo command."""

from __future__ import annotations

import argparse
import sys

from hub_export.cli.options import positive_int


def cmd_demo(args: argparse.Namespace) -> int:
    """Build (or reuse) the embedded demo model and run a small semantic search."""
    from hub_export.demo import run_demo

    run_demo(cache_dir=args.cache_dir, rebuild=args.rebuild, top_k=args.top_k, stream=sys.stdout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """demo."""
    demo = sub.add_parser("demo", help="build the demo model from the PyPI-shipped MiniLM models and search")
    demo.add_argument("--cache-dir", default=None, help="where the built demo model is cached")
    demo.add_argument("--rebuild", action="store_true", help="rebuild even if a cached model exists")
    demo.add_argument("--top-k", type=positive_int, default=2)
    demo.set_defaults(func=cmd_demo)
