"""Assemble a combined model folder from part sources."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import sentence_transformers
import torch
import transformers

from hub_export.modeling import ConcatEmbedding, PartSpec, embedding_dimension_of, pooling_mode_of
from hub_export.sources import load_source

logger = logging.getLogger(__name__)

MODELING_FILE = (Path(__file__).parent / "modeling.py").resolve()
MODULES_TEMPLATE = MODELING_FILE.parent / "modules.json"


@dataclass
class PartOptions:
    """What the user asked for one part: its source and how to shape it."""

    name: str
    source: str
    pooling: str | None = None
    max_seq_length: int | None = None
    weight: float = 1.0
    truncate_dim: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)


def build_model(
    parts: list[PartOptions],
    output_dir: str | Path,
    prompts: dict[str, str] | None = None,
    normalize_output: bool = False,
) -> Path:
    """Build a combined model folder that loads with ``SentenceTransformer(dir, trust_remote_code=True)``.

    Args:
        parts: The parts, in concatenation order (at least two).
        output_dir: The folder to write; existing model files in it are replaced.
        prompts: Model-wide prompts; ``query`` and ``document`` default to ``""``.
        normalize_output: L2-normalize the concatenated vector.

    Returns:
        The output folder.

    Raises:
        ValueError: On fewer than two parts, duplicate names, or any invalid part setting.
    """
    if len(parts) < 2:
        raise ValueError(f"a combined model needs at least 2 parts, got {len(parts)}")
    prompts = {"query": "", "document": ""} | (prompts or {})
    pipelines, specs = [], []
    for options in parts:
        pipeline = load_source(options.source, options.pooling)
        if options.max_seq_length is not None:
            pipeline[0].max_seq_length = options.max_seq_length
        specs.append(
            PartSpec(
                name=options.name,
                subfolder=options.name,
                dimension=next(d for d in map(embedding_dimension_of, reversed(pipeline)) if d is not None),
                pooling=pooling_mode_of(pipeline[1]),
                max_seq_length=pipeline[0].max_seq_length,
                prompts=options.prompts,
                weight=options.weight,
                truncate_dim=options.truncate_dim,
                source=options.source,
            )
        )
        pipelines.append(pipeline)
    concat = ConcatEmbedding(pipelines, specs, normalize_output=normalize_output)
    concat.model_prompts = prompts
    return write_model_folder(concat, prompts, output_dir)


def write_model_folder(concat: ConcatEmbedding, prompts: dict[str, str], output_dir: str | Path) -> Path:
    """Write ``concat`` with the root files that make it a sentence-transformers model.

    Root: ``modules.json`` (from the repository template), ``modeling.py`` (copied),
    ``concat_config.json``, ``config_sentence_transformers.json``; one subfolder per part.
    """
    output_dir = Path(output_dir)
    for spec in concat.specs:
        shutil.rmtree(output_dir / spec.subfolder, ignore_errors=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    concat.save(str(output_dir))
    shutil.copyfile(MODULES_TEMPLATE, output_dir / "modules.json")
    shutil.copyfile(MODELING_FILE, output_dir / "modeling.py")
    config = {
        "__version__": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        },
        "prompts": prompts,
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (output_dir / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2) + "\n")
    logger.info("Wrote %s (%d parts, %d dims)", output_dir, len(concat.specs), concat.get_embedding_dimension())
    return output_dir
