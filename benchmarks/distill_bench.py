"""Distilling a combined model into plain students: quality, speed and training cost (a script, not a test).

Trains each student with ``concat-embed distill`` (one process each, so its peak memory is its own; the teacher's
vectors are encoded once into a shared ``--cache``, by the first student's process, whose peak then includes the
teacher's) on the SciFact corpus (documents and their sentences) and the STS-B *dev* sentences without their
scores, never on test queries or test pairs. Then reports SciFact test
nDCG@10 and STS-B test Spearman (x100) for the full concatenation, each part alone, the compressed teacher and
each student, with encoding speed against the teacher measured in the same run, training seconds and peak
memory, the CPU line on top.

    python benchmarks/distill_bench.py --pair ./minilm-mpnet --teacher ./minilm-mpnet-384 --work ./distill-work

Vectors for evaluation are cached per model in ``--work`` (with the model's content hash and the data files'
sha256): a rerun reads them; a changed model or data file encodes anew.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_bench import DATA, encode_chunked, say, scores  # noqa: E402

SPEED_DOCS, SPEED_SENTENCES = 256, 1024  # texts timed per model (SciFact passages, STS-B sentences)


def identity(model_dir: Path, max_seq_length: int | None = None) -> str:
    """What a model's evaluation vectors were encoded from: its files, token limit and the evaluation data."""
    from hub_export.folder import content_hash, file_sha256

    data = ("scifact/corpus.jsonl.gz", "scifact/queries.jsonl.gz", "stsb/test.tsv.gz")
    limit = [f"max_seq_length={max_seq_length}"] if max_seq_length else []
    model = f"model={content_hash(model_dir)}"
    return ";".join([model, *limit, *(f"{name}={file_sha256(DATA / name)}" for name in data)])


def eval_vectors(model_dir: Path, cache: Path, max_seq_length: int | None = None) -> dict[str, np.ndarray]:
    """SciFact corpus (documents), test queries (query prompt) and STS-B test sentences of one model (at its own
    token limit, or ``max_seq_length``), cached."""
    from hub_export.data import document_text, load_beir, load_sts
    from hub_export.folder import load_model

    wanted = identity(model_dir, max_seq_length)
    vectors = dict(np.load(cache, allow_pickle=False)) if cache.is_file() else {}
    if str(vectors.get("identity", "")) != wanted:
        vectors = {"identity": np.array(wanted)}
    if {"docs", "queries", "sts1", "sts2"} <= set(vectors):
        return vectors
    corpus, queries, qrels = load_beir(DATA / "scifact")
    first, second, _ = load_sts(DATA / "stsb" / "test.tsv.gz")
    model = load_model(model_dir, device="cpu")
    if max_seq_length:
        model.max_seq_length = max_seq_length
    encode_chunked(vectors, cache, "docs", [document_text(corpus[d]) for d in corpus],
                   functools.partial(model.encode_document, batch_size=32))  # fmt: skip
    encode_chunked(vectors, cache, "queries", [queries[q] for q in qrels], model.encode_query)
    encode_chunked(vectors, cache, "sts1", first, model.encode)
    encode_chunked(vectors, cache, "sts2", second, model.encode)
    return vectors


def texts_per_second(model_dir: Path, rounds: int = 2) -> dict[str, float]:
    """Best-of-``rounds`` encoding rate of SciFact passages and STS-B sentences (fp32, batch 32)."""
    from hub_export.data import load_sts, read_corpus_texts
    from hub_export.folder import load_model

    docs = read_corpus_texts(DATA / "scifact" / "corpus.jsonl.gz", SPEED_DOCS)
    first, second, _ = load_sts(DATA / "stsb" / "test.tsv.gz")
    sentences = (first + second)[:SPEED_SENTENCES]
    model = load_model(model_dir, device="cpu")
    model.encode(sentences[:64])  # warm up
    best = {"passages": 0.0, "sentences": 0.0}
    for _ in range(rounds):
        for name, texts in (("passages", docs), ("sentences", sentences)):
            started = time.perf_counter()
            model.encode(texts, batch_size=32)
            best[name] = max(best[name], len(texts) / (time.perf_counter() - started))
    return best


def distill_child(spec: dict) -> None:
    """``--child``: one distillation in this process; prints its record and this process's peak memory as JSON."""
    from hub_export.distill import DistillOptions, distill_model
    from hub_export.runtime.memory import return_freed_memory

    return_freed_memory()  # as ``concat-embed distill`` does
    record = distill_model(spec["teacher"], spec["out"], DistillOptions(**spec["options"]), progress=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps({"record": {k: v for k, v in record.items() if k != "probes"}, "peak_mb": peak_mb}))
    sys.stdout.write("\n")


def train(args: argparse.Namespace, name: str, student: str, layers: list[int] | None) -> dict:
    """Distil one student (skipped when its folder is complete: the benchmark resumes), in its own process."""
    out = args.work / name
    result_file = args.work / f"{name}.result.json"
    if result_file.is_file() and (out / "distillation.json").is_file():
        return json.loads(result_file.read_text())
    options = {"texts": str(DATA / "scifact" / "corpus.jsonl.gz"), "student": student, "layers": layers,
               "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "queries": str(args.sts_sentences),
               "sentences_per_doc": args.sentences_per_doc or None, "eval_sts": str(DATA / "stsb" / "dev.tsv.gz"),
               "cache": str(args.work / "teacher-cache"), "max_seq_length": args.max_seq_length,
               "ranking_weight": args.ranking_weight}  # fmt: skip
    spec = {"teacher": str(args.teacher), "out": str(out), "options": options}
    say(f"distilling {name} ({student}, layers {layers or 'all'})")
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def sts_dev_sentences(work: Path) -> Path:
    """The STS-B dev sentences (no scores), one a line: general-domain training text."""
    from hub_export.data import load_sts

    first, second, _ = load_sts(DATA / "stsb" / "dev.tsv.gz")
    path = work / "stsb-dev-sentences.txt"
    path.write_text("\n".join(dict.fromkeys(s.strip() for s in first + second if s.strip())) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--pair", type=Path, help="the uncompressed combined model (parts minilm_l6 and mpnet)")
    parser.add_argument("--teacher", type=Path, help="the same model compressed (the teacher)")
    parser.add_argument("--work", type=Path, help="folder for the students, the teacher's vectors and the caches")
    parser.add_argument(
        "--students", default="minilm_l6,minilm_l6:0+3+5", help="PART[:LAYERS] (PART: a part name or a student folder)"
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--sentences-per-doc", type=int, default=0, help="pseudo queries per abstract (0: all)")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--ranking-weight", type=float, default=0.0, help="distill's --ranking-weight")
    parser.add_argument("--tag", default="", help="appended to the students' folder names (another recipe, same work)")
    args = parser.parse_args()
    if args.child:
        distill_child(json.loads(args.child))
        return
    if not (args.pair and args.teacher and args.work):
        parser.error("give --pair, --teacher and --work")
    from hub_export.folder import read_projection
    from hub_export.runtime.choice import cpu_summary
    from hub_export.vectors import project, unit_rows

    say(cpu_summary() + f"; torch threads {__import__('torch').get_num_threads()}, fp32")
    args.work.mkdir(parents=True, exist_ok=True)
    args.sts_sentences = sts_dev_sentences(args.work)
    students = {}
    for spec in args.students.split(","):
        part, _, layers = spec.partition(":")
        kept = [int(i) for i in layers.split("+")] if layers else None
        name = f"student-{Path(part).name}" + (f"-layers{''.join(map(str, kept))}" if kept else "") + args.tag
        students[name] = (part, kept, train(args, name, part, kept))
    pair = eval_vectors(args.pair, args.work / "eval-pair.npz")
    weight, bias = read_projection(args.teacher)
    views = {
        "full concatenation": {k: unit_rows(v) for k, v in pair.items() if k != "identity"},
        "minilm_l6 alone": {k: unit_rows(v[:, :384]) for k, v in pair.items() if k != "identity"},
        "mpnet alone": {k: unit_rows(v[:, 384:]) for k, v in pair.items() if k != "identity"},
        "teacher (compressed)": {k: project(v, weight, bias) for k, v in pair.items() if k != "identity"},
    }
    if args.max_seq_length != 256:  # the part read at the students' token limit: what reading further alone gives
        alone = eval_vectors(args.pair / "minilm_l6", args.work / f"eval-minilm_l6-{args.max_seq_length}.npz",
                             args.max_seq_length)  # fmt: skip
        views[f"minilm_l6 alone, {args.max_seq_length} tokens"] = {k: v for k, v in alone.items() if k != "identity"}
    for name in students:
        vectors = eval_vectors(args.work / name, args.work / f"eval-{name}.npz")
        views[name] = {k: v for k, v in vectors.items() if k != "identity"}
    quality = {name: scores(v["queries"], v["docs"], v["sts1"], v["sts2"]) for name, v in views.items()}
    speed = {"teacher (compressed)": texts_per_second(args.teacher),
             "minilm_l6 alone": texts_per_second(args.pair / "minilm_l6"),
             "mpnet alone": texts_per_second(args.pair / "mpnet")}  # fmt: skip
    speed |= {name: texts_per_second(args.work / name) for name in students}
    say("")
    say("| model | dims | SciFact nDCG@10 | STS-B | passages/s | x teacher | sentences/s | x teacher |")
    say("|---|---|---|---|---|---|---|---|")
    teacher_speed = speed["teacher (compressed)"]
    for name, (ndcg, sts) in quality.items():
        dims = views[name]["docs"].shape[1]
        rate = speed.get(name)
        cells = (
            f"{rate['passages']:.1f} | {rate['passages'] / teacher_speed['passages']:.2f} | "
            f"{rate['sentences']:.1f} | {rate['sentences'] / teacher_speed['sentences']:.2f}"
            if rate
            else "| | |"
        )
        say(f"| {name} | {dims} | {ndcg:.2f} | {sts:.2f} | {cells} |")
    say("")
    base, teacher = quality["minilm_l6 alone"], quality["teacher (compressed)"]
    for name, (_, _, result) in students.items():
        record, (ndcg, sts) = result["record"], quality[name]
        gaps = [(ours - b) / (t - b) if t != b else float("nan") for ours, b, t in zip((ndcg, sts), base, teacher)]
        say(f"{name}: closes {100 * gaps[0]:.0f}% (SciFact) / {100 * gaps[1]:.0f}% (STS-B) of the gap between "
            f"minilm_l6 alone and the teacher; keeps {100 * sts / teacher[1]:.1f}% of the teacher's STS-B; "
            f"training {record['seconds']['training']:.0f} s ({record['training']['steps']} steps), teacher encoding "
            f"{record['seconds']['teacher_encoding']:.0f} s, peak RSS {result['peak_mb']:.0f} MB; held-out Spearman "
            f"{record['held_out']['before']['spearman']:.4f} -> "
            f"{record['held_out']['after']['spearman']:.4f}")  # fmt: skip
    full = [n for n, (_, k, _) in students.items() if k is None]
    for name, (_, kept, _) in students.items():
        if kept and full:
            ratio = speed[name]["passages"] / speed[full[0]]["passages"]
            say(f"{name}: {ratio:.2f}x the passages/s of {full[0]}")


if __name__ == "__main__":
    main()
