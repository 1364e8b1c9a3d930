"""The model card (``README.md``) of a combined model folder: ``card_template.md`` rendered with huggingface_hub's
``ModelCard``, whose ``ModelCardData`` writes the YAML metadata (escaped)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hub_export.folder import (
    BACKENDS_FILE,
    CARD_FILE,
    CONFIG_FILE,
    DISTILLATION_FILE,
    MODULES_FILE,
    ST_CONFIG_FILE,
    VERIFICATION_FILE,
    compression_record,
    is_distilled,
    read_json,
)

TEMPLATE = Path(__file__).with_name("card_template.md")
STUDENT_TEMPLATE = Path(__file__).with_name("student_card_template.md")
TAGS = ["sentence-transformers", "feature-extraction", "sentence-similarity", "concat-embed"]


def diff_cell(diff: object) -> str:
    """A recorded verification difference as printed in the report and the card (a number or ``non-finite``)."""
    return f"{diff:.2e}" if isinstance(diff, (int, float)) else str(diff)


def cell(value: object) -> str:
    """Text safe inside a Markdown table cell (no line breaks, ``|`` escaped)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _optional_json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _anchor_text(compression: dict[str, Any]) -> str:
    """What besides the documents trained the projection (queries, corpus sentences or titles as pseudo queries)."""
    used = []
    if isinstance(queries := compression.get("queries"), dict) and queries.get("texts"):
        used.append(f"{queries['texts']} queries from `{queries.get('name')}`")
    if isinstance(pseudo := compression.get("pseudo_queries"), dict) and pseudo.get("texts"):
        used.append(f"{pseudo['texts']} corpus {pseudo.get('source')} as pseudo queries")
    return f", trained with {' and '.join(used)}" if used else ""


def part_rows(parts: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The Parts table: one row of display cells per entry of ``concat_config.json``."""
    rows = []
    for part in parts:
        source = part.get("source") or ""
        if part.get("license"):
            source = f"{source} ({part['license']})"
        rows.append(
            {
                "name": cell(part["name"]),
                "source": cell(source),
                "revision": cell((part.get("revision") or "local")[:12]),
                "dimension": cell(part["dimension"]),
                "pooling": cell(part["pooling"]),
                "max_seq_length": cell(part.get("max_seq_length")),
                "weight": cell(part.get("weight", 1.0)),
                "truncate": cell(part.get("truncate_dim") or "-"),
                "prompts": cell(
                    ", ".join(f"{k}={v!r}" for k, v in (part.get("prompts") or {}).items()) or "model-wide"
                ),
                "own_code": "yes (trust_remote_code)" if part.get("trust_remote_code") else "no",
            }
        )
    return rows


def compression_context(compression: dict[str, Any]) -> dict[str, Any]:
    """The Compression section's values from ``compression.json``."""
    if isinstance(kept := compression.get("neighbours_kept_at_10"), dict):
        measure = (
            "of each corpus document's 10 nearest documents (full vector), the share it keeps among its 10 nearest"
        )
        rows = [{"dims": k, "value": f"{100 * v:.1f}%" if isinstance(v, float) else cell(v)} for k, v in kept.items()]
    else:  # written before neighbours_kept_at_10
        measure = "similarity fidelity (Pearson r of pairwise cosines vs the full concatenation, held-out corpus)"
        fidelity = compression.get("similarity_fidelity") or {}
        rows = [{"dims": k, "value": f"{v:.4f}" if isinstance(v, float) else cell(v)} for k, v in fidelity.items()]
    return {
        "source_dimension": compression["source_dimension"],
        "dimension": compression["dims"][0],
        "method": compression["method"],
        "corpus": cell(compression["corpus"]["name"]),
        "texts": compression["corpus"]["texts"],
        "sha": compression["corpus"]["sha256"][:12],
        "anchors": cell(_anchor_text(compression)),
        "dims": ", ".join(map(str, compression["dims"])),
        "measure": measure,
        "rows": rows,
    }


def backend_rows(files: dict[str, Any]) -> list[dict[str, str]]:
    """The exported-runtimes table (``backends.json`` entries are read as untrusted)."""
    rows = []
    for name, entry in files.items():
        entry = entry if isinstance(entry, dict) else {}
        int8 = f"yes ({entry['cpu']})" if entry.get("cpu") else "yes" if entry.get("int8") else "no"
        change = entry.get("sts_change")
        change = f"{change:+.2f}" if isinstance(change, float) and math.isfinite(change) else "not measured"
        rows.append({"file": cell(name), "backend": cell(entry.get("backend")), "int8": int8,
                     "diff": diff_cell(entry.get("max_abs_diff")), "change": change,
                     "precision": cell(entry.get("precision") or "not recorded")})  # fmt: skip
    return rows


def verification_context(verification: dict[str, Any]) -> dict[str, Any]:
    """The Verification section's values from ``verification.json``."""
    return {
        "probes": verification["probes"],
        "verdict": "passed" if verification["passed"] else "FAILED",
        "tolerance": f"{verification['tolerance']:g}",
        "rows": [{"check": cell(name), "diff": diff_cell(diff)} for name, diff in verification["max_abs_diff"].items()],
    }


def render_card(model_dir: str | Path, repo_id: str | None = None) -> str:
    """Render the model card of ``model_dir`` from its configuration and records (a combined or a distilled one)."""
    from huggingface_hub import ModelCard, ModelCardData

    from hub_export.modeling import parse_concat_config  # torch comes with it: only when a card is rendered

    model_dir = Path(model_dir)
    if is_distilled(model_dir) and not (model_dir / CONFIG_FILE).is_file():
        return render_student_card(model_dir, repo_id)
    config = read_json(model_dir / CONFIG_FILE)
    specs, _ = parse_concat_config(config, CONFIG_FILE)
    parts = config["parts"]
    prompts = (_optional_json(model_dir / ST_CONFIG_FILE) or {}).get("prompts", {})
    repo_id = repo_id or model_dir.name
    licenses = sorted({p["license"] for p in parts if p.get("license")})
    card_data = ModelCardData(
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        license=licenses[0] if len(licenses) == 1 else "other" if licenses else None,
        base_model=[p["source"] for p in parts if p.get("revision")] or None,
        tags=TAGS,
    )
    concat_dimension = sum(spec.output_dimension for spec in specs)
    compression = compression_record(model_dir)
    verification = _optional_json(model_dir / VERIFICATION_FILE)
    backends = _optional_json(model_dir / BACKENDS_FILE)
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        parts=part_rows(parts),
        shaped=any(p.get("truncate_dim") or p.get("weight", 1.0) != 1.0 for p in parts),
        normalize_output=bool(config.get("normalize_output")),
        concat_dimension=concat_dimension,
        dimension=compression["dims"][0] if compression else concat_dimension,
        prompts=", ".join(f"`{k}` = {v!r}" for k, v in prompts.items()) or "none",
        query_prompt_literal=repr(prompts.get("query", "")),
        auto_model=(model_dir / "config.json").is_file(),
        compression=compression_context(compression) if compression else None,
        backends=backend_rows(backends.get("files", {})) if isinstance(backends, dict) else None,
        verification=verification_context(verification) if verification else None,
    )
    return str(card)


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def render_student_card(model_dir: Path, repo_id: str | None = None) -> str:
    """The card of a distilled student, in the style of sentence-transformers' generated cards."""
    from huggingface_hub import ModelCard, ModelCardData

    record = read_json(model_dir / DISTILLATION_FILE)
    modules = read_json(model_dir / MODULES_FILE)
    verification = _optional_json(model_dir / VERIFICATION_FILE)
    repo_id = repo_id or model_dir.name
    teacher, student, training = record["teacher"], record["student"], record["training"]
    held = record["held_out"]
    card_data = ModelCardData(
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=["sentence-transformers", "feature-extraction", "sentence-similarity", "distillation", "concat-embed"],
    )
    types = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    card = ModelCard.from_template(
        card_data,
        template_path=str(STUDENT_TEMPLATE),
        title=repo_id.split("/")[-1],
        repo_id=repo_id,
        teacher=cell(teacher["name"]),
        teacher_sha=str(teacher.get("content_sha256", ""))[:12],
        teacher_compressed=bool(teacher.get("compressed")),
        dimension=teacher["dimension"],
        origin=cell(student["origin"]),
        kept=", ".join(map(str, student["layers_kept"])) if student.get("layers_kept") else "",
        origin_layers=student.get("layers_of_origin"),
        max_seq_length=student.get("max_seq_length"),
        prompts=", ".join(f"`{k}` = {v!r}" for k, v in (record.get("prompts") or {}).items() if v) or "none",
        architecture="SentenceTransformer(\n" + "".join(f"  ({i}): {t}\n" for i, t in enumerate(types)) + ")",
        has_dense="Dense" in types,
        documents=record["texts"]["documents"],
        texts=cell(record["texts"]["name"]),
        texts_sha=str(record["texts"]["sha256"])[:12],
        queries=record["queries"]["texts"],
        query_source=cell(record["queries"]["source"]),
        loss=cell(training["loss"]),
        epochs=training["epochs"],
        steps=training["steps"],
        batch_size=training["batch_size"],
        lr=training["lr"],
        teacher_seconds=record["seconds"]["teacher_encoding"],
        training_seconds=record["seconds"]["training"],
        held_out=held["texts"],
        before_mse=_number(held["before"]["mse"], ".3e"),
        before_spearman=_number(held["before"]["spearman"], ".4f"),
        after_mse=_number(held["after"]["mse"], ".3e"),
        after_spearman=_number(held["after"]["spearman"], ".4f"),
        sts={"name": record["eval_sts"]["name"], "value": _number(record["eval_sts"]["spearman"], ".2f")}
        if record.get("eval_sts")
        else None,
        verification=verification_context(verification) if verification else None,
    )
    return str(card)


def write_card(model_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write ``README.md`` into ``model_dir``."""
    path = Path(model_dir) / CARD_FILE
    path.write_text(render_card(model_dir, repo_id), encoding="utf-8")
    return path
