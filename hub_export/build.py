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

from hub_export.card import write_card
from hub_export.hub import resolve_source
from hub_export.modeling import ConcatEmbedding, PartSpec, embedding_dimension_of, pooling_mode_of
from hub_export.sources import load_source

logger = logging.getLogger(__name__)

MODELING_FILE = (Path(__file__).parent / "modeling.py").resolve()
MODULES_TEMPLATE = (Path(__file__).parent / "modules.json").resolve()
AUTO_MAP = {"AutoConfig": "modeling.ConcatConfig", "AutoModel": "modeling.ConcatModel"}


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
    token: str | None = None,
    cache_dir: str | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Build a combined model folder that loads with ``SentenceTransformer(dir, trust_remote_code=True)``.

    Args:
        parts: The parts, in concatenation order (at least two).
        output_dir: The folder to write; existing model files in it are replaced.
        prompts: Model-wide prompts; ``query`` and ``document`` default to ``""``.
        normalize_output: L2-normalize the concatenated vector.
        token: Hub token for private parts (else ``HF_TOKEN`` / the stored login).
        cache_dir: Hub cache folder for downloaded parts.
        allow_pickle: Accept parts whose weights are pickles.

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
        resolved = resolve_source(options.source, token=token, cache_dir=cache_dir, allow_pickle=allow_pickle)
        pipeline = load_source(resolved.path, options.pooling)
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
                source=resolved.source,
                revision=resolved.revision,
                license=resolved.license,
            )
        )
        pipelines.append(pipeline)
    concat = ConcatEmbedding(pipelines, specs, normalize_output=normalize_output)
    concat.model_prompts = prompts
    return write_model_folder(concat, prompts, output_dir)


def supports_auto_model(concat: ConcatEmbedding) -> bool:
    """The ``AutoModel`` route needs one shared tokenizer and no per-part prompt overrides."""
    return concat.shares_tokenizer and not any(spec.prompts for spec in concat.specs)


def write_model_folder(concat: ConcatEmbedding, prompts: dict[str, str], output_dir: str | Path) -> Path:
    """Write ``concat`` with the root files that make it a sentence-transformers model.

    Root: ``modules.json`` (from the repository template), ``modeling.py`` (copied),
    ``concat_config.json``, ``config_sentence_transformers.json``, the model card, one subfolder
    per part and, when :func:`supports_auto_model`, ``config.json`` + the shared tokenizer for
    ``AutoModel`` / ``AutoTokenizer``.
    """
    output_dir = Path(output_dir)
    for spec in concat.specs:
        shutil.rmtree(output_dir / spec.subfolder, ignore_errors=True)
    for stale in ("config.json", "verification.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (output_dir / stale).unlink(missing_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    concat.save(str(output_dir))
    shutil.copyfile(MODULES_TEMPLATE, output_dir / "modules.json")
    shutil.copyfile(MODELING_FILE, output_dir / "modeling.py")
    versions = {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "pytorch": torch.__version__,
    }
    config = {"__version__": versions, "prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (output_dir / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2) + "\n")
    if supports_auto_model(concat):
        transformer = concat.pipelines[0][0]
        transformer.tokenizer.model_max_length = transformer.max_seq_length
        transformer.tokenizer.save_pretrained(str(output_dir))
        auto_config = {
            "model_type": "concat-embedding",
            "architectures": ["ConcatModel"],
            "auto_map": AUTO_MAP,
            "hidden_size": concat.get_embedding_dimension(),
        }
        (output_dir / "config.json").write_text(json.dumps(auto_config, indent=2) + "\n")
    write_card(output_dir)
    logger.info("Wrote %s (%d parts, %d dims)", output_dir, len(concat.specs), concat.get_embedding_dimension())
    return output_dir
