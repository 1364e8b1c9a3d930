"""Which layers to keep: every choice of K of a student's transformer layers, pruned and not trained, scored
against the teacher without labels, and on STS-B dev.

    python benchmarks/prune_screen.py STUDENT --held-out STUDENT/distillation-heldout.npz [--keep 3]

STUDENT is a distilled student (or any sentence-transformers folder); ``distillation-heldout.npz`` (written beside
every student) holds the held-out documents and the teacher's vectors of them. Each line: the kept layers, the
Spearman of the held-out documents' pairwise cosines against the teacher's (label-free; what
``distillation.json`` calls held-out fidelity), its MSE, and STS-B dev Spearman x 100; best first. The CPU line on
top.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("CONCAT_EMBED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    """Score every choice of ``--keep`` layers and print the table, best held-out fidelity first."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", type=Path)
    parser.add_argument("--held-out", type=Path, required=True, help="a student's distillation-heldout.npz")
    parser.add_argument("--keep", type=int, default=3, help="layers to keep")
    parser.add_argument("--max-seq-length", type=int, default=256)
    args = parser.parse_args()
    if not (args.student / "modules.json").is_file():  # a local folder only: a bare name would go to the Hub
        parser.error(f"{args.student}: not a sentence-transformers folder (no modules.json)")
    from sentence_transformers import SentenceTransformer

    from hub_export.data import load_sts
    from hub_export.distill.student import keep_layers, layer_list
    from hub_export.quality.evaluation import sts_score
    from hub_export.runtime.choice import cpu_summary
    from hub_export.vectors import cosine_rows, similarity_fidelity

    sys.stdout.write(cpu_summary() + "\n")
    try:
        held = np.load(args.held_out, allow_pickle=False)
        texts, teacher = [str(t) for t in held["texts"]], held["teacher"].astype(np.float32)
    except (OSError, ValueError, KeyError) as error:
        parser.error(f"{args.held_out}: not a student's distillation-heldout.npz (texts, teacher): {error}")
    if teacher.ndim != 2 or len(teacher) != len(texts) or len(texts) < 3 or not np.isfinite(teacher).all():
        parser.error(f"{args.held_out}: 'teacher' must hold one finite vector per text (at least 3 texts)")
    first, second, scores = load_sts(DATA / "stsb" / "dev.tsv.gz")
    found = layer_list(SentenceTransformer(str(args.student), device="cpu"))
    if found is None:
        parser.error(f"{args.student}: its transformer has no layer list (encoder.layer / layers) to prune")
    total = len(found[2])
    if not 1 <= args.keep <= total:
        parser.error(f"--keep {args.keep}: expected 1 to {total} (the student has {total} layers)")
    rows = []
    for keep in itertools.combinations(range(total), args.keep):
        model = SentenceTransformer(str(args.student), device="cpu")
        model.max_seq_length = args.max_seq_length
        keep_layers(model, list(keep))
        fidelity = similarity_fidelity(model.encode(texts, batch_size=32), teacher)
        sts = sts_score(cosine_rows(model.encode(first), model.encode(second)), scores, "STS-B dev")
        rows.append((fidelity["spearman"], fidelity["mse"], sts, keep))
    sys.stdout.write("| layers | held-out Spearman to the teacher | MSE | STS-B dev |\n|---|---|---|---|\n")
    for spearman, mse, sts, keep in sorted(rows, key=lambda row: row[0], reverse=True):
        cell = "n/a" if sts is None else f"{sts:.2f}"
        sys.stdout.write(f"| {', '.join(map(str, keep))} | {spearman:.3f} | {mse:.2e} | {cell} |\n")


if __name__ == "__main__":
    main()
