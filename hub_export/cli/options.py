"""Option types and helpers the command groups share: NAME=VALUE options, numbers, the runtime choice."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from typing import TypeVar

T = TypeVar("T")
# The extra of concat-embed that installs each optional module (pyproject.toml's optional-dependencies).
EXTRA_OF = {
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "scipy": "eval",
    "pytrec_eval": "eval",
    "matplotlib": "eval",
    "pyarrow": "embed",
    "ray": "ray",
    "onnx": "backends",
    "onnxscript": "backends",
    "onnxruntime": "backends",
    "openvino": "backends",
    "nncf": "backends",
    "accelerate": "train",
    "datasets": "train",
}


def require(*modules: str) -> None:
    """Refuse, before any work, a command whose optional modules are not installed; name the extra that brings them.

    Raises:
        ValueError: ``needs fastapi (not installed): pip install 'concat-embed[serve]'``.
    """
    missing = [name for name in modules if find_spec(name) is None]
    if missing:
        extras = ",".join(sorted({EXTRA_OF[name] for name in missing}))
        raise ValueError(
            f"needs {', '.join(missing)} (not installed): pip install 'concat-embed[{extras}]' "
            f"(in a checkout: pip install -e '.[{extras}]')"
        )


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


def port_number(raw: str) -> int:
    """A TCP port: an integer in [0, 65535] (0 = any free port)."""
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise OptionError(f"expected a port number in [0, 65535] (0 = any free port), got {raw!r}")
    return value


def positive_float(raw: str) -> float:
    """A finite number > 0 (``inf``, ``nan`` and ``1e309`` are refused)."""
    return _finite_float(raw, lambda value: value > 0, "> 0")


def non_negative_float(raw: str) -> float:
    """A finite number >= 0 (``inf``, ``nan`` and ``1e309`` are refused)."""
    return _finite_float(raw, lambda value: value >= 0, ">= 0")


def _finite_float(raw: str, accept: Callable[[float], bool], bound: str) -> float:
    """``raw`` as a finite number that ``accept`` takes; refused as "expected a finite number ``bound``"."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not accept(value):
        raise OptionError(f"expected a finite number {bound}, got {raw!r}")
    return value


def write_json_output(path: str | None, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` (the ``--json`` option) when it is given."""
    if path:
        from hub_export.folder import write_json

        write_json(path, data)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--quantization``: how ``embed`` and ``serve`` run the model."""
    from hub_export.runtime.choice import BACKEND_CHOICES, QUANTIZATION_CHOICES

    parser.add_argument(
        "--backend",
        default="torch",
        choices=BACKEND_CHOICES,
        help="torch (default), onnx, openvino (files from export-backends) or auto (opt-in: the fastest this CPU and "
        "folder allow; with --quantization auto, the parts' int8 files)",
    )
    parser.add_argument(
        "--quantization",
        default="none",
        choices=QUANTIZATION_CHOICES,
        help="none (default: the model's exact vectors), auto (opt-in: this CPU's int8 path; vectors move, cosine "
        "~0.99 to the exact ones, docs/speed.md) or int8-dynamic (torch)",
    )
