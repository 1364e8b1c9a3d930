"""The student of a distillation: one of the teacher's parts (default: the smallest) or any sentence-transformers
folder, optionally with only some of its transformer layers, checked against the teacher's width."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub_export.folder import CONFIG_FILE, MODULES_FILE, compression_record, read_json

logger = logging.getLogger(__name__)


@dataclass
class StudentOrigin:
    """Where a student comes from: a part of the teacher (``part``) or a folder, and its layers."""

    path: Path
    name: str  # the part's name, or the folder's name (never a local path: it is published)
    part: bool
    layers: int  # transformer layers of the origin
    kept: list[int] | None = None


def _teacher_parts(teacher: Path) -> list[Any]:
    """The teacher's parts as ``concat_config.json`` describes them (validated)."""
    from hub_export.modeling import parse_concat_config

    specs, _ = parse_concat_config(read_json(teacher / CONFIG_FILE), CONFIG_FILE)
    return specs


def teacher_dimension(teacher: Path) -> int:
    """The width of the teacher's vector: its compression's first dimension, else the parts' widths together."""
    record = compression_record(teacher)
    if record:
        return int(record["dims"][0])
    return sum(spec.output_dimension for spec in _teacher_parts(teacher))


def teacher_token_limit(teacher: Path) -> tuple[int, str] | None:
    """The longest token limit among the teacher's parts and that part's name (how much of a long text the teacher
    reads); ``None`` where no part records one."""
    specs = _teacher_parts(teacher)
    limits = [(spec.max_seq_length, spec.name) for spec in specs if spec.max_seq_length is not None]
    return max(limits, key=lambda item: item[0]) if limits else None  # the first part of the longest limit


def _weights_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*.safetensors") if path.is_file())


def resolve_student(teacher: Path, student: str | None) -> tuple[Path, str, bool]:
    """The student's folder, its published name, and whether it is one of the teacher's parts.

    ``None`` picks the teacher's smallest part (fewest weight bytes).

    Raises:
        ValueError: If ``student`` names no part and no sentence-transformers folder (the parts listed).
    """
    config = read_json(teacher / CONFIG_FILE)
    parts = {part["name"]: teacher / part["subfolder"] for part in config["parts"]}
    if student is None:
        name = min(parts, key=lambda part: _weights_size(parts[part]))
        return parts[name], name, True
    if student in parts:
        return parts[student], student, True
    folder = Path(student).expanduser()
    if folder.is_dir() and (folder / MODULES_FILE).is_file():
        return folder, folder.resolve().name, False
    raise ValueError(
        f"student {student!r} is neither a part of {teacher.name} ({sorted(parts)}) nor a sentence-transformers "
        "folder (with modules.json)"
    )


def layer_list(model: Any) -> tuple[Any, str, Any] | None:
    """``(owner, attribute, ModuleList)`` of a Transformer module's layers (``encoder.layer`` for BERT / MPNet /
    RoBERTa, ``layers`` for others), or None when none is found."""
    from torch import nn

    auto_model = model[0].auto_model
    for owner in (getattr(auto_model, "encoder", None), auto_model):
        for attribute in ("layer", "layers"):
            layers = getattr(owner, attribute, None) if owner is not None else None
            if isinstance(layers, nn.ModuleList) and len(layers):
                return owner, attribute, layers
    return None


def keep_layers(model: Any, keep: Sequence[int]) -> int:
    """Keep only the transformer layers ``keep`` (strictly increasing, in range) of a loaded student, in place.

    Returns:
        How many layers the model had.

    Raises:
        ValueError: If the indices are out of range or not strictly increasing, or no layer list is found.
    """
    from torch import nn

    found = layer_list(model)
    if found is None:
        raise ValueError("layers: this student's transformer has no layer list (encoder.layer / layers) to prune")
    owner, attribute, layers = found
    total = len(layers)
    keep = list(keep)
    if not keep or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < total for i in keep):
        raise ValueError(f"layers {keep}: each must be an integer in [0, {total - 1}] (the student has {total} layers)")
    if any(a >= b for a, b in zip(keep, keep[1:])):
        raise ValueError(f"layers {keep}: must be strictly increasing, e.g. 0,2,4")
    setattr(owner, attribute, nn.ModuleList([copy.deepcopy(layers[i]) for i in keep]))
    model[0].auto_model.config.num_hidden_layers = len(keep)
    return total


def drop_attention_dropout(model: Any) -> float | None:
    """Turn off the dropout of the attention probabilities (kept: the dropout of hidden states) for training.

    With it on, torch's attention keeps each layer's batch x heads x tokens x tokens probabilities for the
    backward pass; without it, the fused kernel keeps none. Measured on all-MiniLM-L6-v2 (batch 32, 256 tokens,
    CPU): peak memory 5.0 -> 2.3 GB and each step about 1.7x faster. The saved ``config.json`` is unchanged (the
    setting only acts in training).

    Returns:
        The dropout probability it had (``None`` where no self-attention dropout was found).
    """
    from torch import nn

    found = None
    for module in model.modules():
        dropout = getattr(module, "dropout", None)
        if type(module).__name__.endswith("SelfAttention") and isinstance(dropout, nn.Dropout):
            found, dropout.p = dropout.p, 0.0
    return found


def _warn_shorter_view(model: Any, longest: tuple[int, str] | None) -> None:
    """Say when the student reads fewer tokens than the teacher's longest part, and how far it could read."""
    from hub_export.modeling import position_limit

    reads = model.max_seq_length
    if not longest or reads is None or reads >= longest[0]:
        return
    limit = position_limit(model[0])
    reach = min(longest[0], limit) if limit else longest[0]
    if reach == longest[0]:
        advice = f"--max-seq-length {reach} reads as far"
    elif reach == reads:
        advice = f"its position table ends at {limit} tokens"
    else:
        advice = f"--max-seq-length {reach}, its position limit, reads the most it can"
    logger.warning(
        "the student reads %d tokens of a text, the teacher up to %d (part %r): on longer texts it learns from a "
        "shorter view than the teacher's (%s)", reads, longest[0], longest[1], advice,
    )  # fmt: skip


def load_student(
    teacher: Path, student: str | None, layers: Sequence[int] | None, max_seq_length: int | None
) -> tuple[Any, StudentOrigin]:
    """Load the student (its own code never runs), prune its layers, set its token limit and check its width.

    Raises:
        ValueError: If the student's width differs from the teacher's (with the ``compress`` command that would
            make a teacher of the student's width), or as :func:`resolve_student` / :func:`keep_layers`.
    """
    from sentence_transformers import SentenceTransformer

    from hub_export.modeling import check_token_limit, embedding_dimension_of

    path, name, part = resolve_student(teacher, student)
    model = SentenceTransformer(str(path), device="cpu", trust_remote_code=False)
    width, wanted = embedding_dimension_of(model), teacher_dimension(teacher)
    if width != wanted:
        raise ValueError(
            f"student {name!r} outputs {width} dims, the teacher {wanted}: distil from a teacher of the student's "
            f"width, made with `concat-embed compress {teacher.name} --dims {width} --out TEACHER-{width}` "
            f"(its vector keeps the concatenation's neighbourhoods at {width} dims)"
        )
    if not any(type(module).__name__ == "Normalize" for module in model):  # the targets are unit vectors
        from sentence_transformers.models import Normalize

        model.append(Normalize())
    found = layer_list(model)
    total = len(found[2]) if found else 0
    if layers is not None:
        total = keep_layers(model, layers)
    if max_seq_length is not None:
        check_token_limit(model[0], max_seq_length, f"student {name!r}")
        model.max_seq_length = max_seq_length
    _warn_shorter_view(model, teacher_token_limit(teacher))
    logger.info("student %s: %d of %d layers, %d dims", name, len(layers or []) or total, total, width)
    return model, StudentOrigin(path, name, part, total, list(layers) if layers is not None else None)
