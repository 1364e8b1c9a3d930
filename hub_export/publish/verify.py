"""``concat-embed verify``: compare a model folder with its parts loaded on their own, in a fresh process.

The child process (``python -m hub_export.publish.verify DIR``) loads DIR through
``SentenceTransformer(DIR, trust_remote_code=True)`` and, independently, each part folder as a
plain sentence-transformers model; it writes ``verification.json`` into DIR.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hub_export.folder import (
    CONFIG_FILE,
    DISTILLATION_FILE,
    HELD_OUT_FILE,
    MODULES_FILE,
    ST_CONFIG_FILE,
    VERIFICATION_FILE,
    check_model_folder,
    content_hash,
    is_combined,
    is_distilled,
    load_model,
    read_json,
    read_projection,
    write_json,
)
from hub_export.publish.card import diff_cell, write_card
from hub_export.vectors import project, similarity_fidelity, unit_rows

PROBES = [
    "what is snowflake?",
    "Snowflake is a cloud data platform that separates storage from compute.",
    " ".join(["A long passage about embeddings, retrieval and vector search."] * 400),
    "naïve café — 日本語のテキスト, Ελληνικά, emoji 🚀",
    "",
]
DEFAULT_TOLERANCE = 1e-5
NON_FINITE = "non-finite"  # recorded instead of a number when an output or reference holds NaN or inf
TASKS = ("query", "document")
# The module types Text Embeddings Inference reads from modules.json (it runs no other code).
TEI_MODULE_TYPES = tuple(
    f"sentence_transformers.models.{name}" for name in ("Transformer", "Pooling", "Dense", "Normalize")
)
logger = logging.getLogger(__name__)


def reference_embeddings(model_dir: Path) -> tuple[dict[str, np.ndarray], list[tuple[str, slice]]]:
    """The expected concatenation per task (query, document) from each part loaded on its own.

    Returns:
        ``{task: [probes, total_dim]}`` and each part's column range.
    """
    from sentence_transformers import SentenceTransformer

    config = read_json(model_dir / CONFIG_FILE)
    prompts = read_json(model_dir / ST_CONFIG_FILE).get("prompts", {})
    blocks: dict[str, list[np.ndarray]] = {task: [] for task in TASKS}
    views, start = [], 0
    for part in config["parts"]:
        model = SentenceTransformer(str(model_dir / part["subfolder"]), device="cpu")
        model.max_seq_length = part["max_seq_length"] or model.max_seq_length
        for task in TASKS:
            prompt = part["prompts"].get(task, prompts.get(task, ""))
            block = unit_rows(model.encode(PROBES, prompt=prompt, convert_to_numpy=True).astype(np.float64))
            if part["truncate_dim"]:
                block = unit_rows(block[:, : part["truncate_dim"]])
            blocks[task].append(block * part["weight"])
        width = blocks[TASKS[0]][-1].shape[1]
        views.append((part["name"], slice(start, start + width)))
        start += width
    expected = {task: np.concatenate(task_blocks, axis=1) for task, task_blocks in blocks.items()}
    if config.get("normalize_output"):
        expected = {task: unit_rows(value) for task, value in expected.items()}
    return expected, views


def auto_model_embeddings(model_dir: Path, prompt: str) -> np.ndarray:
    """Embeddings through the ``AutoModel`` + ``AutoTokenizer`` route, as the model card shows it."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [prompt + text for text in PROBES]
    tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        return model(**tokens).float().numpy()


def max_abs_diff(ours: np.ndarray, expected: np.ndarray) -> float | str:
    """The largest absolute difference, or ``NON_FINITE`` when either side holds NaN or inf."""
    if not (np.isfinite(ours).all() and np.isfinite(expected).all()):
        return NON_FINITE
    return float(np.abs(ours - expected).max()) if ours.size else 0.0


def worst(a: float | str, b: float | str) -> float | str:
    """The worse of two differences (a non-finite one is worse than any number)."""
    return NON_FINITE if NON_FINITE in (a, b) else max(a, b)


def within(diff: Any, tolerance: float) -> bool:
    """Whether a recorded difference passes: a finite number no larger than the tolerance (NaN never does)."""
    return isinstance(diff, (int, float)) and math.isfinite(diff) and diff <= tolerance


def check_tolerance(tolerance: Any) -> float:
    """Refuse a tolerance that is not a finite number > 0."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance):
        raise ValueError(f"tolerance = {tolerance!r}: expected a finite number > 0")
    if tolerance <= 0:
        raise ValueError(f"tolerance = {tolerance!r}: expected a finite number > 0")
    return float(tolerance)


def compute_verification(model_dir: Path, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Run every check and return the verification record (written to ``verification.json``)."""
    if is_distilled(model_dir) and not is_combined(model_dir):
        return compute_student_verification(model_dir, tolerance)
    model = load_model(model_dir, device="cpu")
    diffs: dict[str, float] = {}
    references, views = reference_embeddings(model_dir)
    projection = read_projection(model_dir)  # a compressed model: parts -> concatenation -> stored projection
    checks = views + [("concat", slice(None))] if projection is None else [("compressed", slice(None))]
    for task in TASKS:
        ours = model.encode(PROBES, prompt_name=task, convert_to_numpy=True).astype(np.float64)
        expected = references[task] if projection is None else project(references[task], *projection)
        if ours.shape != expected.shape:
            raise ValueError(f"{model_dir}: model outputs {ours.shape}, parts give {expected.shape}")
        for name, cols in checks:
            diffs[name] = worst(diffs.get(name, 0.0), max_abs_diff(ours[:, cols], expected[:, cols]))
        if (model_dir / "config.json").is_file():
            auto = auto_model_embeddings(model_dir, model.prompts.get(task, ""))
            diffs[f"AutoModel ({task})"] = max_abs_diff(auto, expected)
    return {
        "passed": all(within(diff, tolerance) for diff in diffs.values()),
        "tolerance": tolerance,
        "probes": len(PROBES),
        "max_abs_diff": diffs,
        "auto_model_route": (model_dir / "config.json").is_file(),
        "content_sha256": content_hash(model_dir),
    }


def compute_student_verification(model_dir: Path, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """What verification means for a distilled student (a plain model).

    - It loads without remote code, and its ``modules.json`` holds only the module types Text Embeddings
      Inference reads (Transformer, Pooling, Dense, Normalize, by their classic names).
    - Reloaded, it gives the outputs recorded when it was written (``distillation.json``'s probes).
    - Where the held-out material is beside it (the machine that distilled it), the recorded held-out
      fidelity is reproduced (MSE and Spearman, each within the tolerance).
    """
    modules = read_json(model_dir / MODULES_FILE)
    types = [entry.get("type") for entry in modules] if isinstance(modules, list) else []
    unreadable = [kind for kind in types if kind not in TEI_MODULE_TYPES]
    record = read_json(model_dir / DISTILLATION_FILE)
    model = load_model(model_dir, device="cpu", trust_remote_code=False)
    diffs: dict[str, float | str] = {}
    for task in TASKS:
        ours = model.encode(PROBES, prompt_name=task, convert_to_numpy=True).astype(np.float64)
        recorded = np.asarray(record.get("probes", {}).get(task, []), dtype=np.float64)
        diffs[f"reload ({task})"] = max_abs_diff(ours, recorded) if ours.shape == recorded.shape else NON_FINITE
    notes = []
    held_out = model_dir / HELD_OUT_FILE
    if held_out.is_file():
        material = np.load(held_out, allow_pickle=False)
        again = similarity_fidelity(model.encode_document(list(material["texts"])), material["teacher"])
        for key in ("mse", "spearman"):
            diffs[f"held-out {key}"] = max_abs_diff(
                np.array([again[key]]), np.array([record["held_out"]["after"][key]])
            )
    else:
        notes.append(f"held-out fidelity not re-checked: no {HELD_OUT_FILE} (it stays on the machine that distilled)")
    if unreadable:
        notes.append(f"modules.json holds types Text Embeddings Inference does not read: {unreadable}")
    return {
        "passed": not unreadable and all(within(diff, tolerance) for diff in diffs.values()),
        "tolerance": tolerance,
        "probes": len(PROBES),
        "max_abs_diff": diffs,
        "modules": types,
        "notes": notes,
        "content_sha256": content_hash(model_dir),
    }


def run_verification(model_dir: str | Path, tolerance: float | None = None) -> dict:
    """Verify ``model_dir`` in a fresh Python process (outside the project folder), refresh its model card
    with the result, and return the record (also written to ``verification.json``)."""
    tolerance = DEFAULT_TOLERANCE if tolerance is None else check_tolerance(tolerance)
    model_dir = Path(model_dir).resolve()
    check_model_folder(model_dir, students=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as cwd:
        run = subprocess.run(
            [sys.executable, "-m", "hub_export.publish.verify", str(model_dir), "--tolerance", str(tolerance)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
    if run.returncode != 0:
        lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
        logger.info("verification child process stderr:\n%s", run.stderr[-5000:])
        raise RuntimeError(
            f"verification of {model_dir} failed: {lines[-1] if lines else f'exit code {run.returncode}'} "
            "(run with -v for the child's log)"
        )
    record = read_json(model_dir / VERIFICATION_FILE)
    write_card(model_dir)
    return record


def format_report(record: dict) -> str:
    """The per-check table printed by ``concat-embed verify``."""
    width = max(len(name) for name in record["max_abs_diff"])
    lines = [f"{'check':<{width}}  max |diff|  status"]
    for name, diff in record["max_abs_diff"].items():
        lines.append(f"{name:<{width}}  {diff_cell(diff):>10}  {'ok' if within(diff, record['tolerance']) else 'FAIL'}")
    verdict = "PASSED" if record["passed"] else "FAILED"
    lines.append(f"{verdict}: {record['probes']} probes x (query, document), tolerance {record['tolerance']:g}")
    lines += [f"note: {note}" for note in record.get("notes", [])]
    return "\n".join(lines)


def main() -> None:
    """Child-process entry point: verify and write ``verification.json``."""
    parser = argparse.ArgumentParser(prog="python -m hub_export.publish.verify")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    args = parser.parse_args()
    record = compute_verification(args.model_dir, check_tolerance(args.tolerance))
    write_json(args.model_dir / VERIFICATION_FILE, record)


if __name__ == "__main__":
    main()
