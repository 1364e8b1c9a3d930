"""``concat-embed``: build, verify, publish, measure, compress, embed with and serve combined embedding models.

One module per command group (``publish``, ``quality``, ``runtime``, ``serve``, ``demo``), each with a
``register(sub)`` that adds its commands; shared option types live in :mod:`hub_export.cli.options`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from hub_export.cli import demo, distill, publish, quality, runtime, select, serve

logger = logging.getLogger("hub_export")
DESCRIPTION = "Build, verify, publish, measure, compress, embed with and serve combined embedding models."


def make_parser() -> argparse.ArgumentParser:
    """The ``concat-embed`` argument parser."""
    parser = argparse.ArgumentParser(prog="concat-embed", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (publish, quality, runtime, serve, distill, select, demo):
        group.register(sub)
    for command in sub.choices.values():  # a command's own errors print its own usage (see main)
        command.set_defaults(command_parser=command)
    return parser


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
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would print the top-level usage for an option the command does not have
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
