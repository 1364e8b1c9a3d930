"""``concat-embed distill``: train one plain sentence-transformers model to reproduce a combined model's vectors.

The teacher (a combined model folder, compressed or not) encodes the training texts once: the documents of a
corpus with its document prompt, their sentences (and any ``queries``) with its query prompt, and a held-out
sample of documents. The student (one of its parts, or any sentence-transformers folder; optionally with only
some layers) starts from its own weights; the teacher's vectors are first rotated toward the student's own
starting outputs (orthogonal Procrustes: cosines unchanged), then sentence-transformers' trainer minimizes the
MSE between them (``losses.MSELoss``) over batches of texts of similar token length
(:class:`~hub_export.distill.sampler.LengthGroupedBatchSampler`), with checkpoints in the work folder, so that the
same command resumes an interrupted run. The result is a plain folder (Transformer, Pooling, [Dense], Normalize;
no Python file) that loads without ``trust_remote_code`` and that Text Embeddings Inference reads;
``distillation.json`` records the teacher, the texts, the student's origin and layers, the training and the
held-out fidelity.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hub_export.data import check_pseudo_queries, load_sts, pseudo_query_sources, read_corpus_texts
from hub_export.distill.student import StudentOrigin, drop_attention_dropout, load_student
from hub_export.distill.targets import procrustes, work_folder
from hub_export.encoding import cached_vectors
from hub_export.folder import (
    DISTILLATION_FILE,
    HELD_OUT_FILE,
    ST_CONFIG_FILE,
    check_model_folder,
    content_hash,
    file_sha256,
    is_compressed,
    is_finite_number,
    load_model,
    read_json,
    write_json,
)
from hub_export.outdir import cache_folder, check_output, write_whole
from hub_export.vectors import cosine_rows, similarity_fidelity, unit_rows

logger = logging.getLogger(__name__)

ROTATION_SAMPLE = 4096  # training texts the rotation is fitted on
MIN_TEXTS = 10  # documents a distillation needs: at least 3 are held out to measure it
# Test hook: the process kills itself (SIGKILL) once a checkpoint at or after this step is saved, so a test
# interrupts a run at a deterministic point instead of racing a clock.
KILL_AFTER_CHECKPOINT_ENV = "CONCAT_EMBED_TEST_KILL_AFTER_CHECKPOINT"
BATCHES = "grouped by token length"  # how training batches are formed (LengthGroupedBatchSampler), as recorded
RANKING_TEMPERATURE = 0.05  # of the ranking term's softmax over a batch's cosines (sentence-transformers' scale 20)


@dataclass
class DistillOptions:
    """What ``distill`` was asked for (the CLI's options)."""

    texts: str
    student: str | None = None  # a part name of the teacher or a sentence-transformers folder; None: smallest part
    layers: list[int] | None = None  # transformer layers of the student to keep; None: all
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-4
    max_seq_length: int | None = None
    queries: str | None = None
    pseudo_queries: str = "sentences"
    sentences_per_doc: int | None = None
    limit: int | None = None
    eval_sts: str | None = None
    held_out: int = 500
    seed: int = 0
    checkpoint_steps: int = 500
    cache: str | None = None  # where the teacher's vectors are kept; None: beside the output (.<out>.distill)
    ranking_weight: float = 0.0  # weight of the in-batch ranking term on (pseudo query, document) pairs; 0: MSE only

    def check(self) -> None:
        """Refuse options that are out of range, naming the option and the valid values."""
        check_pseudo_queries(self.pseudo_queries)
        for name in ("epochs", "batch_size", "held_out", "checkpoint_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r}: expected a positive integer")
        if not is_finite_number(self.lr) or not self.lr > 0:
            raise ValueError(f"lr = {self.lr!r}: expected a finite number > 0")
        if not is_finite_number(self.ranking_weight) or not self.ranking_weight >= 0:
            raise ValueError(f"ranking_weight = {self.ranking_weight!r}: expected a finite number >= 0")


def _callbacks(loss: Any, clock: _TrainingClock) -> list[Any]:
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            loss.step = state.global_step

        def on_save(self, args, state, control, **kwargs):
            clock.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            kill_after = int(os.environ.get(KILL_AFTER_CHECKPOINT_ENV, "0") or 0)
            if kill_after and state.global_step >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    return [Steps()]


class _TrainingClock:
    """Training seconds over every run of one training: each checkpoint keeps the total so far, a resumed run
    starts from its checkpoint's."""

    FILE = "training-seconds.json"

    def __init__(self, resumed_from: Path | None) -> None:
        self.before = 0.0
        earlier = resumed_from / self.FILE if resumed_from is not None else None
        if earlier is not None and earlier.is_file():
            record = read_json(earlier)
            seconds = record.get("seconds") if isinstance(record, dict) else None
            if not (is_finite_number(seconds) and seconds >= 0):
                raise ValueError(f"{earlier}: 'seconds' = {seconds!r}: must be a finite number >= 0")
            self.before = float(seconds)
        self.started = time.perf_counter()

    def total(self) -> float:
        """Seconds of this training so far: the checkpoint's and this run's."""
        return self.before + time.perf_counter() - self.started

    def save(self, checkpoint: Path) -> None:
        """Keep the total so far in a checkpoint the trainer has just written."""
        if checkpoint.is_dir():
            write_json(checkpoint / self.FILE, {"seconds": round(self.total(), 1)})


class _CachedTeacher:
    """Hands sentence-transformers' ``MSEEvaluator`` the teacher's cached vectors instead of encoding again."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def encode(self, sentences: list[str], **kwargs: Any) -> np.ndarray:
        return self.vectors


def held_out_positions(count: int, wanted: int, seed: int) -> np.ndarray:
    """The documents held out of training (seeded): ``wanted``, at most a tenth of them, at least three."""
    size = max(3, min(wanted, count // 10))
    return np.sort(np.random.default_rng(seed).permutation(count)[:size])


def distill_model(
    teacher_dir: str | Path, output_dir: str | Path, options: DistillOptions, progress: bool = True
) -> dict[str, Any]:
    """Distil the combined model in ``teacher_dir`` into a plain student written to ``output_dir``.

    Returns:
        The ``distillation.json`` record.

    Raises:
        ValueError: On a teacher that is not a combined model folder, a bad texts file (file and line named),
            a student that names no part or whose width differs from the teacher's, layers out of range or
            not increasing, changed inputs beside an earlier run, a non-finite loss (the step named), or an
            output folder that holds other files. Nothing is written to ``output_dir`` then.
    """
    teacher_dir, output_dir = Path(teacher_dir), Path(output_dir)
    options.check()
    check_model_folder(teacher_dir)
    student_path = Path(options.student).expanduser() if options.student else None
    sources = [teacher_dir] + ([student_path] if student_path is not None and student_path.is_dir() else [])
    output_dir = check_output(output_dir, sources)
    documents = read_corpus_texts(options.texts, options.limit)
    if len(documents) < MIN_TEXTS:
        raise ValueError(
            f"{options.texts}: {len(documents)} texts; distillation needs at least {MIN_TEXTS} (some are held out)"
        )
    held = held_out_positions(len(documents), options.held_out, options.seed)
    held_set = set(held.tolist())
    kept = [position for position in range(len(documents)) if position not in held_set]
    training = [documents[position] for position in kept]
    held_texts = [documents[position] for position in held]
    sources = pseudo_query_sources(
        options.texts, options.pseudo_queries, options.limit, options.seed, options.sentences_per_doc, held_set
    )
    queries = [text for _, text in sources] + (read_corpus_texts(options.queries) if options.queries else [])
    training_index = {position: i for i, position in enumerate(kept)}
    origins = [training_index[position] for position, _ in sources]  # each pseudo query's training document
    sts = load_sts(options.eval_sts) if options.eval_sts else None
    student, origin = load_student(teacher_dir, options.student, options.layers, options.max_seq_length)
    teacher_config = read_json(teacher_dir / ST_CONFIG_FILE) if (teacher_dir / ST_CONFIG_FILE).is_file() else {}
    prompts = teacher_config.get("prompts") if isinstance(teacher_config, dict) else None
    student.prompts = {"query": "", "document": ""} | (prompts if isinstance(prompts, dict) else {})
    student.default_prompt_name = None
    identity = {
        "teacher": content_hash(teacher_dir),
        "texts": {"name": Path(options.texts).name, "sha256": file_sha256(options.texts), "limit": options.limit},
        "queries": {"name": Path(options.queries).name, "sha256": file_sha256(options.queries)}
        if options.queries
        else None,
        "pseudo_queries": {"source": options.pseudo_queries, "per_document": options.sentences_per_doc},
        "held_out": {"count": len(held), "seed": options.seed},
    }
    work = cache_folder(work_folder(output_dir), identity)
    cache = cache_folder(Path(options.cache).expanduser(), identity) if options.cache else work
    started = time.perf_counter()
    targets = teacher_targets(teacher_dir, cache, training, queries, held_texts, progress)
    encoded = time.perf_counter()
    rotation = rotation_to_student(work, student, training, queries, targets, options.seed)
    targets = {key: value @ rotation["matrix"] for key, value in targets.items()}
    before = similarity_fidelity(student.encode_document(held_texts), targets["held-out"])
    steps, resumed, training_seconds, attention_dropout = train_student(
        student, work, (training, queries, held_texts), origins, targets, sts, options, origin, progress
    )
    after = similarity_fidelity(student.encode_document(held_texts), targets["held-out"])
    record = {
        "teacher": {
            "name": teacher_dir.resolve().name,
            "content_sha256": identity["teacher"],
            "dimension": int(targets["held-out"].shape[1]),
            "compressed": is_compressed(teacher_dir),
        },
        "texts": {"name": Path(options.texts).name, "documents": len(training), "sha256": identity["texts"]["sha256"]},
        "queries": {
            "texts": len(queries),
            "source": options.pseudo_queries,
            "per_document": options.sentences_per_doc,
            "file": Path(options.queries).name if options.queries else None,
        },
        "student": {
            "origin": origin.name,
            "part_of_teacher": origin.part,
            "layers_of_origin": origin.layers,
            "layers_kept": origin.kept,
            "max_seq_length": student.max_seq_length,
        },
        "training": {
            "epochs": options.epochs,
            "steps": steps,
            "batch_size": options.batch_size,
            "lr": options.lr,
            "loss": loss_name(options.ranking_weight),
            "seed": options.seed,
            "resumed": resumed,
            "batches": BATCHES,
            "attention_dropout": {
                "origin": attention_dropout,
                "training": 0.0 if attention_dropout is not None else None,
            },
        },
        "rotation": {key: value for key, value in rotation.items() if key != "matrix"},
        "held_out": {"texts": len(held_texts), "before": before, "after": after},
        "seconds": {"teacher_encoding": round(encoded - started, 1), "training": training_seconds},
        "prompts": student.prompts,
    }
    if sts is not None:
        name = Path(options.eval_sts).name
        record["eval_sts"] = {"name": name, "spearman": _sts_spearman(student, sts, name)}
    write_whole(output_dir, lambda staging: write_student(student, staging, record, held_texts, targets["held-out"]))
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    (work / "training.json").unlink(missing_ok=True)
    logger.info("teacher vectors stay cached in %s for reruns; delete it to free the space", work)
    return record


def teacher_targets(
    teacher_dir: Path, work: Path, training: list[str], queries: list[str], held: list[str], progress: bool
) -> dict[str, np.ndarray]:
    """The teacher's unit vectors of the training documents, the queries and the held-out documents (cached);
    the teacher loads only when something is missing."""
    teacher = None

    def encoder(method: str) -> Any:
        def encode(texts: list[str], **kwargs: Any) -> np.ndarray:
            nonlocal teacher
            if teacher is None:
                teacher = load_model(teacher_dir)
            return getattr(teacher, method)(texts, **kwargs)

        return encode

    targets = {
        "documents": cached_vectors(
            work, "documents", training, encoder("encode_document"), "teacher: documents", progress
        ),
        "held-out": cached_vectors(
            work, "held-out", held, encoder("encode_document"), "teacher: held-out documents", progress
        ),
    }
    if queries:
        targets["queries"] = cached_vectors(
            work, "queries", queries, encoder("encode_query"), "teacher: queries", progress
        )
    return targets


def rotation_to_student(
    work: Path, student: Any, training: list[str], queries: list[str], targets: dict[str, np.ndarray], seed: int
) -> dict[str, Any]:
    """The orthogonal map that brings the teacher's vectors closest to the student's starting outputs, fitted on a
    sample of the training texts (once; a resumed run reads it back), with the mean cosines before and after."""
    path = work / "rotation.npz"
    rng = np.random.default_rng(seed)
    rows = [("documents", i) for i in range(len(training))] + [("queries", i) for i in range(len(queries))]
    sample = [rows[i] for i in sorted(rng.permutation(len(rows))[:ROTATION_SAMPLE])]
    docs = [i for kind, i in sample if kind == "documents"]
    asked = [i for kind, i in sample if kind == "queries"]
    outputs = [student.encode_document([training[i] for i in docs])] if docs else []
    outputs += [student.encode_query([queries[i] for i in asked])] if asked else []
    start = unit_rows(np.concatenate(outputs).astype(np.float32))
    wanted = np.concatenate([targets["documents"][docs]] + ([targets["queries"][asked]] if asked else []))
    if path.is_file():
        matrix = np.load(path, allow_pickle=False)["matrix"]
    else:
        matrix = procrustes(wanted, start)
        np.savez(path, matrix=matrix)
    return {
        "matrix": matrix,
        "fitted_on": len(sample),
        "mean_cosine_before": float((wanted * start).sum(axis=1).mean()),
        "mean_cosine_after": float(((wanted @ matrix) * start).sum(axis=1).mean()),
    }


def train_student(
    student: Any,
    work: Path,
    texts: tuple[list[str], list[str], list[str]],
    origins: list[int],
    targets: dict[str, np.ndarray],
    sts: tuple[list[str], list[str], np.ndarray] | None,
    options: DistillOptions,
    origin: StudentOrigin,
    progress: bool,
) -> tuple[int, bool, float, float | None]:
    """Train with sentence-transformers' trainer on ``texts`` (training documents, queries, held-out documents);
    resume from the work folder's last checkpoint when the settings are the same. ``origins`` holds the training
    document of each of the first queries (the pseudo queries): with a ranking term, each document forms a pair
    with its first pseudo query (:func:`training_datasets`).

    Returns:
        The number of optimizer steps, whether the run resumed, the training seconds of all its runs (a resumed
        run adds its own to those its checkpoint recorded; steps repeated after the checkpoint count), and the
        attention dropout the student had (turned off for training: :func:`drop_attention_dropout`).
    """
    import torch
    from datasets import DatasetDict
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.evaluation import (
        EmbeddingSimilarityEvaluator,
        MSEEvaluator,
        SequentialEvaluator,
    )
    from transformers.trainer_utils import get_last_checkpoint

    settings = {
        key: value for key, value in asdict(options).items() if key not in ("texts", "queries", "eval_sts", "cache")
    }
    settings["student"] = origin.name
    settings["batches"] = BATCHES
    checkpoints = work / "checkpoints"
    earlier = sorted(checkpoints.glob("checkpoint-*")) if checkpoints.is_dir() else []
    if earlier:
        record = work / "training.json"
        previous = read_json(record) if record.is_file() else None
        if previous != settings:
            changed = {k: ((previous or {}).get(k), v) for k, v in settings.items() if (previous or {}).get(k) != v}
            raise ValueError(
                f"{checkpoints} holds a run with other settings {changed} (then, now): rerun with the same settings "
                f"to resume it, or delete {checkpoints}"
            )
    else:
        shutil.rmtree(checkpoints, ignore_errors=True)
        write_json(work / "training.json", settings)
    training, queries, held_texts = texts
    datasets, prompt_option = training_datasets(
        training, queries, origins if options.ranking_weight else [], targets, student.prompts
    )
    evaluators = [
        MSEEvaluator(
            held_texts, held_texts, _CachedTeacher(targets["held-out"]), name="held-out", batch_size=options.batch_size
        )  # fmt: skip
    ]
    if sts is not None:
        scores = (sts[2] - sts[2].min()) / max(float(np.ptp(sts[2])), 1e-12)
        evaluators.append(EmbeddingSimilarityEvaluator(sts[0], sts[1], scores.tolist(), name="sts-dev"))
    steps_per_epoch = sum(math.ceil(len(d) / options.batch_size) for d in datasets.values())
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size,
        learning_rate=options.lr,
        warmup_ratio=0.1,
        save_strategy="steps",
        save_steps=options.checkpoint_steps,
        save_total_limit=2,
        eval_strategy="steps",
        eval_steps=options.checkpoint_steps,
        logging_steps=max(1, min(50, steps_per_epoch // 10)),
        seed=options.seed,
        report_to="none",
        disable_tqdm=not progress,
        prompts=prompt_option or None,
        multi_dataset_batch_sampler="proportional",
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    from hub_export.distill.loss import DistillLoss

    attention_dropout = drop_attention_dropout(student)
    loss = DistillLoss(student, options.ranking_weight, RANKING_TEMPERATURE)
    latest = get_last_checkpoint(str(checkpoints)) if earlier else None  # the one the trainer resumes from
    clock = _TrainingClock(Path(latest) if latest else None)
    from hub_export.distill.sampler import LengthGroupedBatchSampler
    from hub_export.runtime.batching import token_lengths

    token_counts = functools.partial(token_lengths, student)

    class Trainer(SentenceTransformerTrainer):  # the sampler through a method: the arguments stay picklable
        def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
            return LengthGroupedBatchSampler(
                dataset, batch_size, drop_last, valid_label_columns, generator, seed, token_counts=token_counts
            )

    trainer = Trainer(
        model=student,
        args=arguments,
        train_dataset=DatasetDict(datasets) if len(datasets) > 1 else next(iter(datasets.values())),
        loss=loss,
        evaluator=SequentialEvaluator(evaluators),
        callbacks=_callbacks(loss, clock),
    )
    if not progress:  # without bars the trainer prints each log line; the record holds what matters
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    result = trainer.train(resume_from_checkpoint=latest)
    return int(result.global_step), bool(earlier), round(clock.total(), 1), attention_dropout


def loss_name(ranking_weight: float) -> str:
    """The loss as ``distillation.json`` records it."""
    name = "MSELoss (sentence-transformers)"
    if ranking_weight:
        name += f" + {ranking_weight} x in-batch ranking KL (temperature {RANKING_TEMPERATURE})"
    return name


def training_datasets(
    training: list[str], queries: list[str], origins: list[int], targets: dict[str, np.ndarray], prompts: dict
) -> tuple[dict[str, Any], Any]:
    """The trainer's datasets and its ``prompts`` option.

    Without ``origins``: the documents and the queries, one column each. With them (a ranking term): ``pairs``, each
    training document with its first pseudo query (two columns; the label holds both teacher vectors), then the
    documents without a pseudo query and the other queries alone — every text once an epoch, as without.
    """
    from datasets import Dataset

    document_prompt, query_prompt = prompts.get("document", ""), prompts.get("query", "")
    first: dict[int, int] = {}
    for query, document in enumerate(origins):
        first.setdefault(document, query)
    paired_queries = set(first.values())
    alone = [i for i in range(len(training)) if i not in first]
    rest = [i for i in range(len(queries)) if i not in paired_queries]
    datasets: dict[str, Any] = {}
    if first:
        docs, asked = list(first), list(first.values())
        label = np.stack([targets["queries"][asked], targets["documents"][docs]], axis=1)
        datasets["pairs"] = Dataset.from_dict(
            {"query": [queries[i] for i in asked], "document": [training[i] for i in docs], "label": label}
        )
    if alone:
        datasets["documents"] = Dataset.from_dict(
            {"text": [training[i] for i in alone], "label": targets["documents"][alone]}
        )
    if rest:
        datasets["queries"] = Dataset.from_dict({"text": [queries[i] for i in rest], "label": targets["queries"][rest]})
    if not first:
        if len(datasets) == 1:
            return datasets, document_prompt or None
        named = {"documents": document_prompt, "queries": query_prompt}
        return datasets, {n: t for n, t in named.items() if t} or None
    columns = {
        "pairs": {"query": query_prompt, "document": document_prompt},
        "documents": {"text": document_prompt},
        "queries": {"text": query_prompt},
    }
    nested = {name: {c: t for c, t in columns[name].items() if t} for name in datasets}
    if len(datasets) == 1:  # the pairs alone: not a DatasetDict, so the prompts are keyed by column
        return datasets, nested["pairs"] or None
    return datasets, {name: value for name, value in nested.items() if value} or None


def _sts_spearman(student: Any, sts: tuple[list[str], list[str], np.ndarray], name: str) -> float | None:
    """The student's STS Spearman x 100 on the ``--eval-sts`` pairs (``None`` where it is undefined)."""
    from hub_export.quality.evaluation import sts_score

    return sts_score(cosine_rows(student.encode(sts[0]), student.encode(sts[1])), sts[2], name)


def write_student(
    student: Any, folder: Path, record: dict[str, Any], held_texts: list[str], held_targets: np.ndarray
) -> None:
    """The student as a plain sentence-transformers folder in the classic layout (the module types Text Embeddings
    Inference reads), ``distillation.json`` with probe vectors for ``verify``, the held-out material and the card."""
    from hub_export.modeling import save_part
    from hub_export.publish.card import write_card
    from hub_export.publish.verify import PROBES

    save_part(student, str(folder), student.prompts)
    record["probes"] = {
        task: student.encode(PROBES, prompt_name=task, convert_to_numpy=True).astype(float).tolist()
        for task in ("query", "document")
    }
    write_json(folder / DISTILLATION_FILE, record)
    np.savez(folder / HELD_OUT_FILE, texts=np.array(held_texts), teacher=held_targets.astype(np.float32))
    write_card(folder)


__all__ = ["DistillOptions", "distill_model", "work_folder"]
