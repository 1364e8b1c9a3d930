"""``concat-embed verify``: compare a model folder with its parts loaded on their own, in a fresh process.

The child process (``python -m hub_export.verify DIR``) loads DIR through
``SentenceTransformer(DIR, trust_remote_code=True)`` and, independently, each part folder as a
plain sentence-transformers model; it writes ``verification.json`` into DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from hub_export.files import content_hash
from hub_export.quantize import unit_rows

PROBES = [
    "what is snowflake?",
    "Snowflake is a cloud data platform that separates storage from compute.",
    " ".join(["A long passage about embeddings, retrieval and vector search."] * 400),
    "naïve café — 日本語のテキスト, Ελληνικά, emoji 🚀",
    "",
]
DEFAULT_TOLERANCE = 1e-5
TASKS = ("query", "document")


def reference_embeddings(model_dir: Path) -> tuple[dict[str, np.ndarray], list[tuple[str, slice]]]:
    """The expected concatenation per task (query, document) from each part loaded on its own.

    Returns:
        ``{task: [probes, total_dim]}`` and each part's column range.
    """
    from sentence_transformers import SentenceTransformer

    config = json.loads((model_dir / "concat_config.json").read_text())
    prompts = json.loads((model_dir / "config_sentence_transformers.json").read_text()).get("prompts", {})
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


def compute_verification(model_dir: Path, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Run every check and return the verification record (written to ``verification.json``)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), trust_remote_code=True, device="cpu")
    diffs: dict[str, float] = {}
    references, views = reference_embeddings(model_dir)
    for task in TASKS:
        ours = model.encode(PROBES, prompt_name=task, convert_to_numpy=True).astype(np.float64)
        expected = references[task]
        if ours.shape != expected.shape:
            raise ValueError(f"{model_dir}: model outputs {ours.shape}, parts give {expected.shape}")
        for name, cols in views + [("concat", slice(None))]:
            diffs[name] = max(diffs.get(name, 0.0), float(np.abs(ours[:, cols] - expected[:, cols]).max()))
        if (model_dir / "config.json").is_file():
            auto = auto_model_embeddings(model_dir, model.prompts.get(task, ""))
            diffs[f"AutoModel ({task})"] = float(np.abs(auto - expected).max())
    return {
        "passed": all(diff <= tolerance for diff in diffs.values()),
        "tolerance": tolerance,
        "probes": len(PROBES),
        "max_abs_diff": diffs,
        "auto_model_route": (model_dir / "config.json").is_file(),
        "content_sha256": content_hash(model_dir),
    }


def run_verification(model_dir: str | Path, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Verify ``model_dir`` in a fresh Python process (outside the project folder) and return the record."""
    model_dir = Path(model_dir).resolve()
    if not (model_dir / "concat_config.json").is_file():
        raise ValueError(f"{model_dir}: not a combined model folder (no concat_config.json)")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as cwd:
        run = subprocess.run(
            [sys.executable, "-m", "hub_export.verify", str(model_dir), "--tolerance", str(tolerance)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
    if run.returncode != 0:
        raise ValueError(f"verification of {model_dir} crashed:\n{run.stderr[-3000:]}")
    return json.loads((model_dir / "verification.json").read_text())


def format_report(record: dict) -> str:
    """The per-check table printed by ``concat-embed verify``."""
    width = max(len(name) for name in record["max_abs_diff"])
    lines = [f"{'check':<{width}}  max |diff|  status"]
    for name, diff in record["max_abs_diff"].items():
        lines.append(f"{name:<{width}}  {diff:10.2e}  {'ok' if diff <= record['tolerance'] else 'FAIL'}")
    verdict = "PASSED" if record["passed"] else "FAILED"
    lines.append(f"{verdict}: {record['probes']} probes x (query, document), tolerance {record['tolerance']:g}")
    return "\n".join(lines)


def main() -> None:
    """Child-process entry point: verify and write ``verification.json``."""
    parser = argparse.ArgumentParser(prog="python -m hub_export.verify")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    args = parser.parse_args()
    record = compute_verification(args.model_dir, args.tolerance)
    (args.model_dir / "verification.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
