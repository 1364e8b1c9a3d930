"""distill: a plain student that loads without remote code, learns the teacher, pins its inputs and resumes.

Tiny models: the teacher combines the tiny parts ``a`` and ``b`` (mean pooling) and is compressed (PCA) to 32
dims, the width of part ``x`` (``a``), its smallest part and so the default student.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from hub_export.distill import DistillOptions, distill_model
from hub_export.distill.targets import work_folder
from hub_export.folder import model_files
from tests.constants import QUERY_PROMPT

WORDS = (
    "the a is what of to and in for on snow flake search query passage represent this sentence relevant passages "
    "document cat dog sat mat fox jump over lazy quick brown hello world model vector text long short"
).split()
TEI_TYPES = {f"sentence_transformers.models.{kind}" for kind in ("Transformer", "Pooling", "Dense", "Normalize")}


def write_corpus(path: Path, count: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        body = ". ".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(3)) + "."
        lines.append(json.dumps({"_id": str(i), "title": f"title {i}", "text": body}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("distill-corpus") / "corpus.jsonl", 120)


@pytest.fixture(scope="module")
def teacher(tiny_parts, corpus, tmp_path_factory) -> Path:
    from hub_export.publish.build import PartOptions, build_model
    from hub_export.quality.compress import CompressOptions, compress_model

    root = tmp_path_factory.mktemp("teacher")
    parts = [
        PartOptions("x", str(tiny_parts["a"]), pooling="mean"),
        PartOptions("y", str(tiny_parts["b"]), pooling="mean"),
    ]
    combined = build_model(parts, root / "combined", prompts={"query": QUERY_PROMPT})
    folder = root / "teacher-32"
    compress_model(combined, folder, CompressOptions(str(corpus), [32], method="pca"), progress=False)
    return folder


def options(corpus: Path, **settings) -> DistillOptions:
    defaults = {"epochs": 2, "batch_size": 16, "lr": 1e-3, "checkpoint_steps": 10}
    return DistillOptions(str(corpus), **(defaults | settings))


@pytest.fixture(scope="module")
def student(teacher, corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("student") / "student"
    return out, distill_model(teacher, out, options(corpus), progress=False)


def test_the_student_is_a_plain_model_that_loads_without_remote_code(student, teacher) -> None:
    out, record = student
    files = model_files(out)
    assert not [f for f in files if f.endswith(".py")] and "distillation.json" in files
    assert "distillation-heldout.npz" not in files  # stays on this machine: never published
    assert {entry["type"] for entry in json.loads((out / "modules.json").read_text())} <= TEI_TYPES
    model = SentenceTransformer(str(out), device="cpu")  # no trust_remote_code
    assert model.prompts["query"] == QUERY_PROMPT and model.get_embedding_dimension() == 32
    assert np.allclose(np.linalg.norm(model.encode_query(["what is snow?"]), axis=1), 1.0, atol=1e-5)
    assert record["teacher"] == {**record["teacher"], "name": "teacher-32", "dimension": 32, "compressed": True}
    assert record["student"]["origin"] == "x" and record["student"]["part_of_teacher"] is True  # the smallest part
    assert record["training"]["attention_dropout"] == {"origin": 0.1, "training": 0.0}  # off in training only
    assert json.loads((out / "config.json").read_text())["attention_probs_dropout_prob"] == 0.1


def test_the_student_learns_the_teacher_on_held_out_texts(student) -> None:
    _, record = student
    held = record["held_out"]
    assert held["texts"] == 12 and record["texts"]["documents"] == 108 and record["queries"]["texts"] > 100
    assert held["after"]["mse"] < 0.5 * held["before"]["mse"] and held["after"]["spearman"] > held["before"]["spearman"]
    rotation = record["rotation"]
    assert rotation["mean_cosine_after"] > rotation["mean_cosine_before"] + 0.3  # Procrustes aligned the targets


def test_training_follows_the_teacher_from_the_rotated_targets(student, teacher) -> None:
    """The recorded rotation is orthogonal: the targets' cosines are the teacher's own."""
    from hub_export.distill.targets import procrustes

    rng = np.random.default_rng(0)
    targets, outputs = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    rotation = procrustes(targets, outputs)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(8), atol=1e-5)
    best = np.linalg.norm(targets @ rotation - outputs)
    for _ in range(20):  # no other orthogonal map does better
        other, _ = np.linalg.qr(rng.normal(size=(8, 8)))
        assert best <= np.linalg.norm(targets @ other - outputs) + 1e-6


def test_the_ranking_term_is_the_kl_of_each_querys_softmax_over_the_batchs_documents() -> None:
    """Against an independent numpy KL(teacher || student) of the in-batch softmax of cosines / 0.05."""
    from hub_export.distill.loss import DistillLoss

    rng = np.random.default_rng(0)
    student_q, student_d, teacher_q, teacher_d = (rng.normal(size=(6, 8)) for _ in range(4))
    teacher_q, teacher_d = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (teacher_q, teacher_d))

    def softmax(scores: np.ndarray) -> np.ndarray:
        exp = np.exp(scores - scores.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    unit = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (student_q, student_d)]
    wanted, got = softmax(teacher_q @ teacher_d.T / 0.05), softmax(unit[0] @ unit[1].T / 0.05)
    expected = float((wanted * np.log(wanted / got)).sum(axis=1).mean())
    loss = DistillLoss.__new__(DistillLoss)
    torch.nn.Module.__init__(loss)
    loss.temperature = 0.05
    tensors = [torch.tensor(v, dtype=torch.float64) for v in (student_q, student_d, teacher_q, teacher_d)]
    assert float(loss.ranking(tensors[:2], tensors[2:])) == pytest.approx(expected, abs=1e-9)
    assert float(loss.ranking(tensors[2:], tensors[2:])) == pytest.approx(0.0, abs=1e-9)  # the teacher itself


def test_a_ranking_student_pairs_each_document_with_its_first_pseudo_query() -> None:
    """Every text once an epoch: pairs (document, its first pseudo query), documents without one, the other queries."""
    from hub_export.distill.train import training_datasets

    training, queries = ["d0", "d1", "d2"], ["q0a", "q0b", "q2", "extra"]
    targets = {"documents": np.arange(6.0).reshape(3, 2), "queries": 10 + np.arange(8.0).reshape(4, 2)}
    prompts = {"query": "query: ", "document": ""}
    datasets, prompt_option = training_datasets(training, queries, [0, 0, 2], targets, prompts)
    assert datasets["pairs"]["query"] == ["q0a", "q2"] and datasets["pairs"]["document"] == ["d0", "d2"]
    assert np.asarray(datasets["pairs"]["label"]).tolist() == [[[10, 11], [0, 1]], [[14, 15], [4, 5]]]
    assert datasets["documents"]["text"] == ["d1"] and datasets["queries"]["text"] == ["q0b", "extra"]
    assert np.asarray(datasets["queries"]["label"]).tolist() == [[12, 13], [16, 17]]
    assert prompt_option == {"pairs": {"query": "query: "}, "queries": {"text": "query: "}}
    plain, plain_prompts = training_datasets(training, queries, [], targets, prompts)  # no ranking term
    assert list(plain) == ["documents", "queries"] and plain["documents"]["text"] == training
    assert plain_prompts == {"queries": "query: "}
    alone, alone_prompts = training_datasets(["d0"], ["q0"], [0], targets, prompts)
    assert list(alone) == ["pairs"] and alone_prompts == {"query": "query: "}  # one dataset: keyed by column


def test_a_ranking_term_trains_and_is_recorded(teacher, corpus, tmp_path) -> None:
    record = distill_model(teacher, tmp_path / "s", options(corpus, ranking_weight=0.01), progress=False)
    assert record["training"]["loss"] == (
        "MSELoss (sentence-transformers) + 0.01 x in-batch ranking KL (temperature 0.05)"
    )
    held = record["held_out"]  # the MSE still falls: the ranking term is beside it, not instead of it
    assert held["after"]["mse"] < 0.8 * held["before"]["mse"] and held["after"]["spearman"] > held["before"]["spearman"]
    assert SentenceTransformer(str(tmp_path / "s"), device="cpu").prompts["query"] == QUERY_PROMPT


def test_the_trainer_takes_its_batches_from_the_length_grouped_sampler(teacher, corpus, tmp_path, monkeypatch):
    from hub_export.distill.sampler import LengthGroupedBatchSampler

    handed: list[list[int]] = []
    original = LengthGroupedBatchSampler.__iter__

    def recorded(self):
        for batch in original(self):
            handed.append(batch)
            yield batch

    monkeypatch.setattr(LengthGroupedBatchSampler, "__iter__", recorded)
    record = distill_model(teacher, tmp_path / "s", options(corpus, epochs=1), progress=False)
    assert len(handed) == record["training"]["steps"] > 0
    assert record["training"]["batches"] == "grouped by token length"


@pytest.mark.parametrize("weight", [-0.1, float("nan"), float("inf")])
def test_a_ranking_weight_must_be_finite_and_not_negative(teacher, corpus, tmp_path, weight) -> None:
    with pytest.raises(ValueError, match=rf"^ranking_weight = {weight!r}: expected a finite number >= 0$"):
        distill_model(teacher, tmp_path / "s", options(corpus, ranking_weight=weight), progress=False)
    assert not (tmp_path / "s").exists()


def test_verify_and_push_treat_the_student_as_a_plain_model(student, tmp_path) -> None:
    import shutil

    from hub_export.folder import HELD_OUT_FILE
    from hub_export.publish.push import dry_run_listing
    from hub_export.publish.verify import run_verification

    out = Path(shutil.copytree(student[0], tmp_path / "student"))
    record = run_verification(out)
    assert record["passed"] and set(record["max_abs_diff"]) == {
        "reload (query)",
        "reload (document)",
        "held-out mse",
        "held-out spearman",
    }
    card = (out / "README.md").read_text()
    assert "**passed**" in card and 'SentenceTransformer("student")' in card and "trust_remote_code=True" not in card
    listing = dry_run_listing(out)
    assert "a real push would send these files" in listing and "distillation.json" in listing
    assert HELD_OUT_FILE not in listing and ".py" not in listing
    (out / HELD_OUT_FILE).unlink()  # as a published copy: the held-out material is not there
    again = run_verification(out)
    assert again["passed"] and "held-out mse" not in again["max_abs_diff"]
    assert "held-out fidelity not re-checked" in again["notes"][0]


def test_a_rerun_reuses_the_teachers_vectors_and_refuses_changed_texts(student, teacher, corpus, tmp_path, monkeypatch):
    import shutil

    from hub_export.distill import train

    out = tmp_path / "student"
    shutil.copytree(work_folder(student[0]), work_folder(out))
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("the teacher was loaded again"))
    again = distill_model(teacher, out, options(corpus, epochs=1), progress=False)
    assert again["held_out"]["before"] == student[1]["held_out"]["before"]
    changed = tmp_path / "corpus.jsonl"
    write_corpus(changed, 120, seed=1)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match=r"caches the vectors of other inputs: \{'texts': "):
        distill_model(teacher, out, options(changed, epochs=1), progress=False)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written, nothing deleted


def test_a_layer_pruned_student_keeps_the_layers_asked_for(teacher, corpus, tmp_path) -> None:
    record = distill_model(teacher, tmp_path / "s", options(corpus, layers=[1], epochs=1), progress=False)
    assert record["student"]["layers_kept"] == [1] and record["student"]["layers_of_origin"] == 2
    assert json.loads((tmp_path / "s" / "config.json").read_text())["num_hidden_layers"] == 1
    original = SentenceTransformer(str(teacher / "x"), device="cpu")
    pruned = SentenceTransformer(str(tmp_path / "s"), device="cpu")
    assert len(pruned[0].auto_model.encoder.layer) == 1
    kept = dict(pruned[0].auto_model.encoder.layer[0].named_parameters())
    origin = dict(original[0].auto_model.encoder.layer[1].named_parameters())
    assert set(kept) == set(origin)  # layer 1 of the origin, trained from there


def test_a_non_finite_loss_stops_at_its_step_and_writes_nothing(teacher, corpus, tmp_path, monkeypatch) -> None:
    from sentence_transformers.sentence_transformer.losses import MSELoss

    nan = torch.tensor(float("nan"), requires_grad=True)
    monkeypatch.setattr(MSELoss, "compute_loss_from_embeddings", lambda self, *a, **k: nan)
    with pytest.raises(ValueError, match=r"the training loss is not finite at step 1: nothing was written"):
        distill_model(teacher, tmp_path / "s", options(corpus), progress=False)
    assert not (tmp_path / "s").exists()


def test_a_killed_run_resumes_from_its_last_checkpoint(student, teacher, corpus, tmp_path) -> None:
    """kill -9 after the checkpoint of step 20; the same command finishes the run that ``student`` ran whole."""
    args = [sys.executable, "-m", "hub_export", "distill", str(teacher), "--texts", str(corpus), "--epochs", "2",
            "--batch-size", "16", "--lr", "1e-3", "--checkpoint-steps", "10", "--no-progress"]  # fmt: skip
    kill = os.environ | {"CONCAT_EMBED_TEST_KILL_AFTER_CHECKPOINT": "20"}
    killed = subprocess.run([*args, "--out", str(tmp_path / "killed")], env=kill, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "killed").exists()
    clock = work_folder(tmp_path / "killed") / "checkpoints" / "checkpoint-20" / "training-seconds.json"
    assert json.loads(clock.read_text())["seconds"] > 0
    clock.write_text('{"seconds": NaN}')  # edited: refused with its file and field, nothing written
    refused = subprocess.run([*args, "--out", str(tmp_path / "killed")], capture_output=True, text=True)
    assert refused.returncode == 2 and f"{clock}: 'seconds' = nan: must be a finite number >= 0" in refused.stderr
    assert not (tmp_path / "killed").exists()
    clock.write_text('{"seconds": 1000.0}')  # as if the killed run had trained 1000 s: the total must carry it
    resumed = subprocess.run([*args, "--out", str(tmp_path / "killed")], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = json.loads((tmp_path / "killed" / "distillation.json").read_text())
    assert record["training"]["resumed"] is True and record["training"]["steps"] == 56
    assert record["seconds"]["training"] > 1000  # the killed run's seconds (from its checkpoint) plus the resumed's
    assert not (work_folder(tmp_path / "killed") / "checkpoints").exists()  # removed once the student is written
    texts = ["what is snow?", "the quick brown fox jumps over the lazy dog"]
    a = SentenceTransformer(str(tmp_path / "killed"), device="cpu").encode(texts)
    b = SentenceTransformer(str(student[0]), device="cpu").encode(texts)
    assert np.abs(a - b).max() <= 1e-4  # the same run, interrupted or not (float sums follow thread counts)


def test_students_of_one_teacher_share_a_cache(student, teacher, corpus, tmp_path, monkeypatch) -> None:
    import shutil

    from hub_export.distill import train
    from hub_export.outdir import IDENTITY_FILE

    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("documents.npy", "queries.npy", "held-out.npy", IDENTITY_FILE):
        shutil.copyfile(work_folder(student[0]) / name, shared / name)
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("the teacher was loaded again"))
    record = distill_model(teacher, tmp_path / "pruned", options(corpus, layers=[0], cache=str(shared)), progress=False)
    assert record["student"]["layers_kept"] == [0] and not (work_folder(tmp_path / "pruned") / "documents.npy").exists()


def test_eval_embed_and_serve_take_a_student(student, tmp_path, capsys) -> None:
    from hub_export.cli import main
    from hub_export.runtime.embed import EmbedJob, read_output, run_embed
    from hub_export.serve.app import load_embedder
    from hub_export.serve.requests import tei_info
    from tests.constants import DATA

    out = student[0]
    assert main(["eval", str(out), "--sts", str(DATA / "stsb" / "test.tsv.gz"), "--limit", "20"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:3] == ["view", "setting", "sts"] and rows[1].split()[:2] == ["32d", "float32"]
    records = tmp_path / "docs.jsonl"
    records.write_text("".join(json.dumps({"_id": str(i), "text": f"snow flake number {i}"}) + "\n" for i in range(5)))
    run_embed(EmbedJob(str(out), str(records), str(tmp_path / "vectors"), quantization=None), progress=False)
    ids, vectors = read_output(tmp_path / "vectors")
    expected = SentenceTransformer(str(out), device="cpu").encode_document([f"snow flake number {i}" for i in range(5)])
    assert ids == [str(i) for i in range(5)] and np.abs(vectors - expected).max() <= 1e-5
    embedder = load_embedder(str(out))
    assert tei_info(embedder, "local")["dimension"] == 32 and embedder.model_id == "student"


def test_export_backends_puts_a_students_onnx_file_where_sentence_transformers_looks(student, tmp_path) -> None:
    import shutil

    from hub_export.publish.backends import export_backends

    out = Path(shutil.copytree(student[0], tmp_path / "student"))
    record = export_backends(out, onnx=True)
    assert record["parts"] == ["model"] and record["files"]["onnx/model.onnx"]["max_abs_diff"] <= 1e-4
    assert (out / "onnx" / "model.onnx").is_file() and "onnx/model.onnx" in model_files(out)


def test_a_student_reading_fewer_tokens_than_the_teacher_is_told_so(teacher, caplog) -> None:
    from hub_export.distill.student import load_student

    parts = json.loads((teacher / "concat_config.json").read_text())["parts"]
    longest = max(part["max_seq_length"] for part in parts)
    name = next(part["name"] for part in parts if part["max_seq_length"] == longest)
    with caplog.at_level("WARNING", logger="hub_export.distill.student"):
        model, _ = load_student(teacher, None, None, longest - 1)
    assert model.max_seq_length == longest - 1
    assert caplog.messages == [
        f"the student reads {longest - 1} tokens of a text, the teacher up to {longest} (part {name!r}): on longer "
        f"texts it learns from a shorter view than the teacher's (--max-seq-length {longest} reads as far)"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="hub_export.distill.student"):
        load_student(teacher, None, None, longest)
    assert caplog.messages == []


def test_the_advice_stops_at_the_students_position_limit(teacher, caplog, monkeypatch) -> None:
    from hub_export.distill import student as student_module
    from hub_export.modeling import position_limit

    monkeypatch.setattr(student_module, "teacher_token_limit", lambda _: (100_000, "y"))
    with caplog.at_level("WARNING", logger="hub_export.distill.student"):
        model, _ = student_module.load_student(teacher, None, None, 8)
    limit = position_limit(model[0])
    assert caplog.messages[-1].endswith(f"(--max-seq-length {limit}, its position limit, reads the most it can)"), (
        caplog.messages
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="hub_export.distill.student"):
        student_module.load_student(teacher, None, None, limit)
    assert caplog.messages[-1].endswith(f"(its position table ends at {limit} tokens)"), caplog.messages
