"""Assemble a combined model folder from part sources."""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import sentence_transformers
import torch
import transformers

from hub_export.folder import MODULES_FILE, REMOTE_CODE_FILE, RESERVED_NAMES, ST_CONFIG_FILE, write_json
from hub_export.modeling import (
    SAFE_NAME,
    SAFE_NAME_RULE,
    ConcatEmbedding,
    PartSpec,
    check_token_limit,
    embedding_dimension_of,
    pooling_mode_of,
)
from hub_export.outdir import check_output, write_whole
from hub_export.publish.card import write_card
from hub_export.publish.sources import load_source, read_own_prompts, resolve_source

logger = logging.getLogger(__name__)

MODELING_FILE = (Path(__file__).parents[1] / "modeling.py").resolve()
MODULES_TEMPLATE = (Path(__file__).parents[1] / "modules.json").resolve()
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
    trust_remote_code: bool = False


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
        output_dir: The folder to write: new, empty, or a previous build of this tool (whose files
            are then replaced by exactly the new model's files, once the new model is complete).
        prompts: Model-wide prompts; ``query`` and ``document`` default to ``""``.
        normalize_output: L2-normalize the concatenated vector.
        token: Hub token for private parts (else ``HF_TOKEN`` / the stored login).
        cache_dir: Hub cache folder for downloaded parts.
        allow_pickle: Accept parts whose weights are pickles.

    Returns:
        The output folder.

    Raises:
        ValueError: On fewer than two parts, duplicate or unsafe names, any invalid part setting,
            or an output folder that holds other files or overlaps a source.
    """
    if len(parts) < 2:
        raise ValueError(f"a combined model needs at least 2 parts, got {len(parts)}")
    prompts = {"query": "", "document": ""} | (prompts or {})
    check_part_options(parts, prompts)
    local_sources = [Path(o.source).expanduser() for o in parts if Path(o.source).expanduser().exists()]
    output_dir = check_output(output_dir, local_sources)
    pipelines, specs = [], []
    for options in parts:
        resolved = resolve_source(options.source, token=token, cache_dir=cache_dir, allow_pickle=allow_pickle)
        check_output(output_dir, [resolved.path])
        pipeline = load_source(resolved.path, options.pooling, trust_remote_code=options.trust_remote_code)
        if options.max_seq_length is not None:
            check_token_limit(pipeline[0], options.max_seq_length, f"part {options.name!r}")
            pipeline[0].max_seq_length = options.max_seq_length
        specs.append(
            PartSpec(
                name=options.name,
                subfolder=options.name,
                dimension=next(d for d in map(embedding_dimension_of, reversed(pipeline)) if d is not None),
                pooling=pooling_mode_of(pipeline[1]),
                max_seq_length=pipeline[0].max_seq_length,
                prompts=part_prompts(options, read_own_prompts(resolved.path), prompts),
                weight=options.weight,
                truncate_dim=options.truncate_dim,
                source=resolved.source,
                revision=resolved.revision,
                license=resolved.license,
                trust_remote_code=options.trust_remote_code,
            )
        )
        pipelines.append(pipeline)
    concat = ConcatEmbedding(pipelines, specs, normalize_output=normalize_output)
    concat.model_prompts = prompts
    return write_whole(output_dir, lambda staging: write_model_folder(concat, prompts, staging, name=output_dir.name))


def part_prompts(options: PartOptions, own: dict[str, str], prompts: dict[str, str]) -> dict[str, str]:
    """A part's prompt texts that differ from the model-wide ones: its own (from its folder), then ``options.prompts``.

    A part keeps the prompts it was trained with (e5-style ``query: ``) unless the user overrides them;
    its prompt names that the combined model does not have are left out, with a warning naming them.
    """
    if unnamed := sorted(set(own) - set(prompts)):
        logger.warning(
            "part %r: its own prompt(s) %s have no model-wide name and are not used; give them a name with "
            "--prompt NAME=TEXT, or its text for an existing name with --part-prompt %s.NAME=TEXT",
            options.name,
            {name: own[name] for name in unnamed},
            options.name,
        )
    kept = {name: text for name, text in own.items() if name in prompts and text != prompts[name]}
    return kept | options.prompts


def check_part_options(parts: list[PartOptions], prompts: dict[str, str]) -> None:
    """Refuse unsafe or duplicate part names, non-finite weights and per-part prompts for unknown prompt names.

    Raises:
        ValueError: Naming the part, the option and the valid choices.
    """
    names = [options.name for options in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"part names must be unique, got {names}")
    for options in parts:
        if not isinstance(options.name, str) or not SAFE_NAME.fullmatch(options.name):
            raise ValueError(f"part name {options.name!r} is not allowed: use {SAFE_NAME_RULE}")
        if options.name.casefold() in RESERVED_NAMES:
            raise ValueError(
                f"part name {options.name!r} is the name of one of the model folder's own files or folders; "
                "choose another name"
            )
        if not math.isfinite(options.weight) or options.weight <= 0:
            raise ValueError(f"part {options.name!r}: weight {options.weight}: expected a finite number > 0")
        if unknown := sorted(set(options.prompts) - set(prompts)):
            raise ValueError(
                f"part {options.name!r}: prompt {unknown[0]!r}: unknown prompt name {unknown[0]!r}; "
                f"valid prompt names: {sorted(prompts)} (add others as model-wide prompts)"
            )


def supports_auto_model(concat: ConcatEmbedding) -> bool:
    """The ``AutoModel`` route needs one shared tokenizer and no per-part prompt overrides."""
    return concat.shares_tokenizer and not any(spec.prompts for spec in concat.specs)


def write_model_folder(
    concat: ConcatEmbedding, prompts: dict[str, str], output_dir: str | Path, name: str | None = None
) -> Path:
    """Write ``concat`` with the root files that make it a sentence-transformers model.

    Root: ``modules.json`` (from the repository template), ``modeling.py`` (copied),
    ``concat_config.json``, ``config_sentence_transformers.json``, the model card, one subfolder
    per part and, when :func:`supports_auto_model`, ``config.json`` + the shared tokenizer for
    ``AutoModel`` / ``AutoTokenizer``.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    concat.save(str(output_dir))
    shutil.copyfile(MODULES_TEMPLATE, output_dir / MODULES_FILE)
    shutil.copyfile(MODELING_FILE, output_dir / REMOTE_CODE_FILE)
    versions = {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "pytorch": torch.__version__,
    }
    config = {"__version__": versions, "prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    write_json(output_dir / ST_CONFIG_FILE, config)
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
        write_json(output_dir / "config.json", auto_config)
    write_card(output_dir, name)
    logger.info("Wrote %s (%d parts, %d dims)", output_dir, len(concat.specs), concat.get_embedding_dimension())
    return output_dir
