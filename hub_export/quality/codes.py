"""Vector codes: stored embeddings as small integers (truncation + calibrated scalar codes).

"Codes" are how vectors are stored; "quantization" in this project means the model's weights
(``model_kwargs={"quantization": ...}``, ``export-backends --int8``).

Each part of the concatenation is cut to its calibrated ``dims`` (Matryoshka-style, then
re-normalized) and coded with its own ``[low, high]`` range: ``int8`` stores one signed byte per
dimension, ``int4`` packs two 4-bit codes per byte. Ranges come from ``concat-embed calibrate``
and live in ``concat_config.json`` (``parts[i].code_ranges``). A compressed model's whole-vector
per-dimension ranges use :func:`dimension_ranges` / :func:`dimension_codes`.

Scoring is asymmetric: queries stay float (shaped the same way), documents are decoded;
:func:`score` returns cosine similarities of the weighted concatenations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hub_export.modeling import CODE_SCHEMES, PartSpec
from hub_export.vectors import unit_rows

LEVELS = {"int8": 256, "int4": 16}
CALIBRATION_TAIL = {"int8": 1e-4, "int4": 5e-3}


@dataclass(frozen=True)
class PartLayout:
    """Where one part sits in the model's output and how it is stored."""

    name: str
    start: int
    width: int
    weight: float
    dims: int
    low: float = -1.0
    high: float = 1.0


def check_scheme(scheme: str) -> None:
    """Raise ``ValueError`` listing the valid schemes."""
    if scheme not in CODE_SCHEMES:
        raise ValueError(f"unknown code scheme {scheme!r}; valid schemes: {list(CODE_SCHEMES)}")


def part_layouts(
    specs: Sequence[PartSpec], scheme: str | None = None, names: Sequence[str] | None = None
) -> list[PartLayout]:
    """The layout of the parts named in ``names`` (default: all), calibrated for ``scheme`` if given.

    Raises:
        ValueError: On an unknown scheme or part name, or a part that has no calibration for ``scheme``.
    """
    if scheme is not None:
        check_scheme(scheme)
    valid = [spec.name for spec in specs]
    if unknown := [name for name in names or [] if name not in valid]:
        raise ValueError(f"unknown part(s) {unknown}; valid parts: {valid}")
    layouts, start = [], 0
    for spec in specs:
        width = spec.output_dimension
        if names is None or spec.name in names:
            if scheme is None:
                layouts.append(PartLayout(spec.name, start, width, spec.weight, width))
            elif scheme not in spec.code_ranges:
                raise ValueError(f"part {spec.name!r} has no {scheme} calibration: run `concat-embed calibrate` first")
            else:
                entry = spec.code_ranges[scheme]
                layouts.append(
                    PartLayout(spec.name, start, width, spec.weight, entry["dims"], entry["low"], entry["high"])
                )
        start += width
    return layouts


def shape_parts(embeddings: np.ndarray, layouts: Sequence[PartLayout]) -> list[np.ndarray]:
    """Each part's unit vector cut to its stored ``dims`` and re-normalized (weights removed)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    return [unit_rows(embeddings[:, p.start : p.start + p.width][:, : p.dims]) for p in layouts]


def part_ranges(
    embeddings: np.ndarray, specs: Sequence[PartSpec], dims: dict[str, int] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-part ranges for every scheme from a calibration sample of model outputs.

    The range is the central quantile interval that clips a fraction ``CALIBRATION_TAIL`` of the
    values at each end (tighter for int4, which has few levels).

    Args:
        embeddings: ``model.encode_document(sample)`` (the model's own output).
        specs: The model's part specs.
        dims: Dimensions to keep per part name (default: all of the part).

    Returns:
        ``{part name: {scheme: {"low", "high", "dims"}}}``.
    """
    dims = dims or {}
    if not np.isfinite(embeddings).all():
        raise ValueError("the model's outputs on the calibration corpus are not finite (NaN or inf); run `verify`")
    layouts = part_layouts(specs)
    if unknown := sorted(set(dims) - {p.name for p in layouts}):
        raise ValueError(f"unknown part(s) {unknown} in dims; valid parts: {[p.name for p in layouts]}")
    for name, value in dims.items():
        width = next(p.width for p in layouts if p.name == name)
        if not 0 < value <= width:
            raise ValueError(f"dims for part {name!r} must be in [1, {width}], got {value}")
    layouts = [PartLayout(p.name, p.start, p.width, p.weight, dims.get(p.name, p.width)) for p in layouts]
    result = {}
    for layout, block in zip(layouts, shape_parts(embeddings, layouts)):
        result[layout.name] = {
            scheme: {
                "low": float(np.quantile(block, tail)),
                "high": float(np.quantile(block, 1 - tail)),
                "dims": layout.dims,
            }
            for scheme, tail in CALIBRATION_TAIL.items()
        }
    return result


def encode_codes(embeddings: np.ndarray, layouts: Sequence[PartLayout], scheme: str) -> np.ndarray:
    """Codes of shape ``[n, bytes_per_vector]``: ``int8`` for int8, ``uint8`` (two codes a byte) for int4."""
    check_scheme(scheme)
    levels = LEVELS[scheme]
    blocks = []
    for layout, block in zip(layouts, shape_parts(embeddings, layouts)):
        scaled = (np.clip(block, layout.low, layout.high) - layout.low) / (layout.high - layout.low)
        codes = np.rint(scaled * (levels - 1)).astype(np.uint8)
        if scheme == "int8":
            blocks.append((codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
        else:
            if codes.shape[1] % 2:
                codes = np.pad(codes, ((0, 0), (0, 1)))
            blocks.append((codes[:, 0::2] << 4) | codes[:, 1::2])
    packed = np.concatenate(blocks, axis=1)
    return packed.view(np.int8) if scheme == "int8" else packed


def decode_codes(codes: np.ndarray, layouts: Sequence[PartLayout], scheme: str) -> np.ndarray:
    """Float vectors ``[n, sum(dims)]`` from codes, each part times its weight."""
    check_scheme(scheme)
    levels = LEVELS[scheme]
    raw = np.asarray(codes).view(np.uint8)
    blocks, offset = [], 0
    for layout in layouts:
        if scheme == "int8":
            part = (raw[:, offset : offset + layout.dims].view(np.int8).astype(np.int16) + 128).astype(np.float32)
            offset += layout.dims
        else:
            width = (layout.dims + 1) // 2
            pairs = raw[:, offset : offset + width]
            part = (
                np.stack([pairs >> 4, pairs & 0x0F], axis=2).reshape(len(raw), -1)[:, : layout.dims].astype(np.float32)
            )
            offset += width
        blocks.append((layout.low + part / (levels - 1) * (layout.high - layout.low)) * layout.weight)
    return np.concatenate(blocks, axis=1)


def prepare_queries(embeddings: np.ndarray, layouts: Sequence[PartLayout]) -> np.ndarray:
    """Float query vectors in the stored layout: parts cut to ``dims``, re-normalized, weighted."""
    return np.concatenate([block * p.weight for p, block in zip(layouts, shape_parts(embeddings, layouts))], axis=1)


def score(queries: np.ndarray, doc_codes: np.ndarray, layouts: Sequence[PartLayout], scheme: str) -> np.ndarray:
    """Cosine similarity ``[n_queries, n_docs]`` of float queries against coded documents."""
    return unit_rows(prepare_queries(queries, layouts)) @ unit_rows(decode_codes(doc_codes, layouts, scheme)).T


def bytes_per_vector(layouts: Sequence[PartLayout], scheme: str | None) -> int:
    """Storage of one vector: float32 (``scheme=None``), int8 or packed int4."""
    if scheme is None:
        return 4 * sum(p.dims for p in layouts)
    check_scheme(scheme)
    return sum(p.dims if scheme == "int8" else (p.dims + 1) // 2 for p in layouts)


def dimension_ranges(embeddings: np.ndarray, scheme: str = "int8") -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(low, high)``: each column's central quantile interval (``CALIBRATION_TAIL`` clipped)."""
    check_scheme(scheme)
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if not np.isfinite(embeddings).all():
        raise ValueError("the model's outputs on the calibration corpus are not finite (NaN or inf); run `verify`")
    tail = CALIBRATION_TAIL[scheme]
    return np.quantile(embeddings, tail, axis=0), np.quantile(embeddings, 1 - tail, axis=0)


def dimension_codes(embeddings: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """int8 codes with one range per dimension (values outside are clipped to it)."""
    span = np.where(high > low, high - low, 1.0)
    scaled = (np.clip(embeddings, low, high) - low) / span
    return (np.rint(scaled * 255).astype(np.int16) - 128).astype(np.int8)


def decode_dimension_codes(codes: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Float vectors back from :func:`dimension_codes` codes."""
    span = np.where(high > low, high - low, 1.0)
    return low + (codes.astype(np.float32) + 128) / 255 * span
