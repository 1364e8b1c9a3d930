"""Every bad input the CLI and the Python API take gets its own clear error, and nothing is written.

Table-driven: each CLI case is ``(id, argv builder, exit code, message)`` run through
``hub_export.cli.main`` in-process (stderr captured); each API case is ``(id, call, error type,
message)``. The files the cases read are made once per module by :func:`bad` below.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub_export.cli import main

GOOD = [{"_id": f"d{i}", "title": f"title {i}", "text": f"the quick brown fox number {i}"} for i in range(23)]


@dataclass
class Files:
    """Paths the cases use: good inputs, bad inputs and copies of the built model with one defect each."""

    root: Path
    parts: dict[str, Path]
    model: Path

    def __getattr__(self, name: str) -> Path:
        return self.root / name


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def edited_model(built_model: Path, folder: Path, edit: Callable[[dict], None] | None = None, raw: str = "") -> Path:
    shutil.copytree(built_model, folder)
    if edit is not None:
        config = json.loads((folder / "concat_config.json").read_text())
        edit(config)
        raw = json.dumps(config)
    if raw:
        (folder / "concat_config.json").write_text(raw)
    return folder


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_parts, built_model) -> Files:
    root = tmp_path_factory.mktemp("bad")
    corpus = "".join(json.dumps(r) + "\n" for r in GOOD)
    write(root / "corpus.jsonl", corpus)
    write(root / "corpus.csv", corpus)
    gz = gzip.compress(corpus.encode())
    write(root / "truncated.jsonl.gz", gz[: len(gz) // 2])
    write(root / "notext.jsonl", '{"_id": "1", "title": "no text"}\n')
    write(root / "badjson.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    write(root / "latin1.txt", "caf\xe9 au lait\n".encode("latin-1"))
    write(root / "empty.txt", "\n\n")
    write(root / "sts_noheader.tsv", "4.0\ta cat\ta dog\n")
    write(root / "sts_badscore.tsv", "score\tsentence1\tsentence2\nhigh\ta cat\ta dog\n")
    write(root / "sts_nan.tsv", "score\tsentence1\tsentence2\nnan\ta cat\ta dog\n")
    write(root / "sts_short.tsv", "score\tsentence1\tsentence2\n3.0\tonly one sentence\n")
    write(root / "sts_one.tsv", "score\tsentence1\tsentence2\n3.0\ta cat\ta dog\n")
    write(root / "sts_header.tsv", "score\tsentence1\tsentence2\n")
    write(
        root / "pairs.tsv",
        "score\tsentence1\tsentence2\n" + "".join(f"{i % 5}.0\ta cat {i}\ta dog {i}\n" for i in range(8)),
    )
    beir = root / "beir_empty"
    write(beir / "corpus.jsonl", "")
    write(beir / "queries.jsonl", '{"_id": "q1", "text": "what?"}\n')
    write(beir / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    write(root / "beir_noqrels" / "corpus.jsonl", corpus)
    write(root / "user_dir" / "notes.txt", "my notes")
    write(root / "a_file", "not a folder")
    pickled = root / "pickled"
    shutil.copytree(tiny_parts["a"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    write(pickled / "onnx" / "unused.safetensors", b"stray")
    indexed = root / "indexed"  # pickle weights behind a safetensors index (its weight_map points at the .bin)
    shutil.copytree(pickled, indexed)
    write(indexed / "model.safetensors.index.json", json.dumps({"weight_map": {"embeddings.x": "pytorch_model.bin"}}))
    escaping = root / "escaping"  # an index pointing outside its folder
    shutil.copytree(pickled, escaping)
    write(escaping / "model.safetensors.index.json", json.dumps({"weight_map": {"a": "../pickled/x.safetensors"}}))
    (root / "no_model").mkdir()
    edited_model(built_model, root / "m_badjson", raw='{"parts": [')
    edited_model(built_model, root / "m_nan_weight", raw=(built_model / "concat_config.json").read_text().replace(
        '"weight": 0.5', '"weight": NaN'))  # fmt: skip
    edited_model(built_model, root / "m_inf_weight", lambda c: c["parts"][0].update(weight=float("inf")))
    edited_model(built_model, root / "m_long", lambda c: c["parts"][0].update(max_seq_length=100000))
    edited_model(built_model, root / "m_star", lambda c: c["parts"][0].update(name="*"))
    edited_model(built_model, root / "m_up", lambda c: c["parts"][0].update(subfolder="../alpha"))
    edited_model(built_model, root / "m_nan_range", lambda c: c["parts"][0].update(
        code_ranges={"int8": {"low": float("nan"), "high": 1.0, "dims": 8}}))  # fmt: skip
    edited_model(built_model, root / "m_trust", lambda c: c["parts"][0].update(trust_remote_code="yes"))
    write(edited_model(built_model, root / "m_modules") / "alpha" / "modules.json", "[{")
    write(edited_model(built_model, root / "m_sbert") / "alpha" / "sentence_bert_config.json", '{"max_seq_length": }')
    write(edited_model(built_model, root / "m_pooling") / "beta" / "1_Pooling" / "config.json", "{'mode': 1}")
    write(edited_model(built_model, root / "m_stconfig") / "config_sentence_transformers.json", '{"prompts": {,}}')
    write(edited_model(built_model, root / "m_part_stconfig") / "gamma" / "config_sentence_transformers.json", "{")
    write(edited_model(built_model, root / "m_verif") / "verification.json", "{passed: true}")
    write(edited_model(built_model, root / "m_record") / ".concat-embed-build.json", '{"files": ["../../etc/passwd"]}')
    write(edited_model(built_model, root / "m_compressed") / "compression.json", '{"dims": [8]}')
    from hub_export.publish.build import PartOptions, build_model

    halves = [
        PartOptions("alpha", str(tiny_parts["a"]), truncate_dim=16),
        PartOptions("half", str(tiny_parts["a2"]), truncate_dim=16),
    ]
    build_model(halves, root / "t32")  # 32 dims: as wide as its part alpha, a student it can teach
    return Files(root, tiny_parts, built_model)


def select(f: Files, names: str, *extra: str, data: Path | None = None) -> list[str]:
    """``select`` over the tiny parts named (comma-separated; an unknown name takes part a's folder)."""
    parts = [arg for name in names.split(",") for arg in ("--part", f"{name}={f.parts.get(name, f.parts['a'])}")]
    return ["select", *parts, "--sts", str(data or f.root / "pairs.tsv"), "--no-progress", "--cache", str(f.o), *extra]


def distill(f: Files, teacher: Path, texts: Path, *extra: str) -> list[str]:
    return ["distill", str(teacher), "--texts", str(texts), "--out", str(f.o), "--no-progress", *extra]


def build(f: Files, *extra: str, parts: tuple[str, ...] = ()) -> list[str]:
    parts = parts or (f"x={f.parts['a']}", f"y={f.parts['b']}")
    return ["build", *[arg for part in parts for arg in ("--part", part)], *extra]


def embed(f: Files, *extra: str, input: Path | None = None) -> list[str]:
    return ["embed", str(f.model), "--input", str(input or f.root / "corpus.jsonl"), "--no-progress", *extra]


CLI_CASES = [
    # build: numbers must be finite and in range
    ("weight-inf", lambda f: build(f, "--weight", "x=inf", "--out", str(f.o)), 2, "--weight 'x=inf': expected a finite number > 0, got 'inf'"),
    ("weight-1e309", lambda f: build(f, "--weight", "x=1e309", "--out", str(f.o)), 2, "expected a finite number > 0, got '1e309'"),
    ("weight-nan", lambda f: build(f, "--weight", "y=nan", "--out", str(f.o)), 2, "expected a finite number > 0, got 'nan'"),
    ("weight-zero", lambda f: build(f, "--weight", "y=0", "--out", str(f.o)), 2, "expected a finite number > 0, got '0'"),
    ("weight-word", lambda f: build(f, "--weight", "y=heavy", "--out", str(f.o)), 2, "expected a finite number > 0, got 'heavy'"),
    ("max-seq-over-limit", lambda f: build(f, "--max-seq-length", "x=100000", "--out", str(f.o)), 2, "part 'x'.max_seq_length = 100000: exceeds the part's position limit of 64 tokens"),
    ("max-seq-zero", lambda f: build(f, "--max-seq-length", "x=0", "--out", str(f.o)), 2, "expected a positive integer, got '0'"),
    ("truncate-zero", lambda f: build(f, "--truncate-dim", "x=0", "--out", str(f.o)), 2, "--truncate-dim 'x=0': expected a positive integer"),
    ("truncate-too-big", lambda f: build(f, "--truncate-dim", "x=999", "--out", str(f.o)), 2, "truncate_dim = 999"),
    # build: names
    ("part-prompt-typo", lambda f: build(f, "--part-prompt", "x.qurey=q: ", "--out", str(f.o)), 2, "part 'x': prompt 'qurey': unknown prompt name 'qurey'; valid prompt names: ['document', 'query']"),
    ("part-prompt-no-dot", lambda f: build(f, "--part-prompt", "x=oops", "--out", str(f.o)), 2, "expected PART.PROMPT_NAME=TEXT"),
    ("name-star", lambda f: build(f, "--out", str(f.o), parts=(f"*={f.parts['a']}", f"y={f.parts['b']}")), 2, "part name '*' is not allowed: use 1-64 letters"),
    ("name-slash", lambda f: build(f, "--out", str(f.o), parts=(f"a/b={f.parts['a']}", f"y={f.parts['b']}")), 2, "part name 'a/b' is not allowed"),
    ("name-dot", lambda f: build(f, "--out", str(f.o), parts=(f".={f.parts['a']}", f"y={f.parts['b']}")), 2, "part name '.' is not allowed"),
    ("name-dotdot", lambda f: build(f, "--out", str(f.o), parts=(f"..={f.parts['a']}", f"y={f.parts['b']}")), 2, "part name '..' is not allowed"),
    ("name-pipe", lambda f: build(f, "--out", str(f.o), parts=(f"a|b={f.parts['a']}", f"y={f.parts['b']}")), 2, "part name 'a|b' is not allowed"),
    ("name-hidden", lambda f: build(f, "--out", str(f.o), parts=(f".git={f.parts['a']}", f"y={f.parts['b']}")), 2, "part name '.git' is not allowed"),
    ("name-glob", lambda f: build(f, "--out", str(f.o), parts=(f"a[1]={f.parts['a']}", f"y={f.parts['b']}")), 2, "part name 'a[1]' is not allowed"),
    ("name-duplicate", lambda f: build(f, "--out", str(f.o), parts=(f"x={f.parts['a']}", f"x={f.parts['b']}")), 2, "--part names must be unique"),
    ("trust-unknown-part", lambda f: build(f, "--part-trust-remote-code", "zzz", "--out", str(f.o)), 2, "--part-trust-remote-code 'zzz=': unknown part 'zzz'"),
    ("pooling-unknown", lambda f: build(f, "--pooling", "y=median", "--out", str(f.o)), 2, "unknown pooling 'median'; valid modes"),
    # build: sources and the output folder
    ("out-equals-source", lambda f: build(f, "--out", str(f.parts["a"])), 2, "is inside the source"),
    ("out-inside-source", lambda f: build(f, "--out", str(f.parts["a"] / "sub")), 2, "is inside the source"),
    ("out-user-folder", lambda f: build(f, "--out", str(f.user_dir)), 2, "is not empty and was not written by concat-embed (it holds 'notes.txt')"),
    ("out-is-file", lambda f: build(f, "--out", str(f.a_file)), 2, "is a file; give a new or empty folder"),
    ("out-bad-record", lambda f: build(f, "--out", str(f.m_record)), 2, ".concat-embed-build.json: 'files' must be a list of relative paths"),
    ("source-is-file", lambda f: build(f, "--out", str(f.o), parts=(f"x={f.a_file}", f"y={f.parts['b']}")), 2, "is a file; expected a model folder or a Hub id"),
    ("source-missing", lambda f: build(f, "--out", str(f.o), parts=("x=/nonexistent/model", f"y={f.parts['b']}")), 2, "neither an existing folder nor a Hub id"),
    ("pickle-behind-safetensors-index", lambda f: build(f, "--out", str(f.o), parts=(f"x={f.indexed}", f"y={f.parts['b']}")), 2, "model.safetensors.index.json points at 'pytorch_model.bin', which is not a safetensors file in its folder"),
    ("index-outside-its-folder", lambda f: build(f, "--out", str(f.o), parts=(f"x={f.escaping}", f"y={f.parts['b']}")), 2, "model.safetensors.index.json points at '../pickled/x.safetensors', which is not a safetensors file in its folder"),
    ("pickle-with-stray-safetensors", lambda f: build(f, "--out", str(f.o), parts=(f"x={f.pickled}", f"y={f.parts['b']}")), 2, "has no safetensors weights (only ['pytorch_model.bin']); pass --allow-pickle"),
    ("single-part", lambda f: build(f, "--out", str(f.o), parts=(f"x={f.parts['a']}",)), 2, "needs at least 2 parts"),
    # verify
    ("verify-tolerance-nan", lambda f: ["verify", str(f.model), "--tolerance", "nan"], 2, "argument --tolerance: expected a finite number > 0, got 'nan'"),
    ("verify-tolerance-inf", lambda f: ["verify", str(f.model), "--tolerance", "inf"], 2, "expected a finite number > 0, got 'inf'"),
    ("verify-tolerance-negative", lambda f: ["verify", str(f.model), "--tolerance", "-1"], 2, "expected a finite number > 0, got '-1'"),
    ("verify-not-a-model", lambda f: ["verify", str(f.no_model)], 2, "not a combined model folder (no concat_config.json)"),
    # push
    ("push-repo-id-space", lambda f: ["push", str(f.model), "--repo-id", "bad repo", "--dry-run"], 2, "repo id 'bad repo' is not a Hub repo id: expected org/name"),
    ("push-repo-id-depth", lambda f: ["push", str(f.model), "--repo-id", "a/b/c", "--token", "t"], 2, "repo id 'a/b/c' is not a Hub repo id"),
    ("push-repo-id-dashes", lambda f: ["push", str(f.model), "--repo-id", "org/na--me", "--dry-run"], 2, "no '--' or '..'"),
    ("push-verification-json", lambda f: ["push", str(f.m_verif), "--repo-id", "me/x", "--token", "t"], 2, "verification.json: invalid JSON at line 1 column 2"),
    # calibrate
    ("calibrate-limit-negative", lambda f: ["calibrate", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--limit", "-1"], 2, "argument --limit: expected an integer >= 0 (0 = no limit), got '-1'"),
    ("calibrate-no-text", lambda f: ["calibrate", str(f.model), "--corpus", str(f.root / "notext.jsonl")], 2, "notext.jsonl: line 1: field 'text' must be a string (missing)"),
    ("calibrate-bad-json", lambda f: ["calibrate", str(f.model), "--corpus", str(f.root / "badjson.jsonl")], 2, "badjson.jsonl: line 2: invalid JSON at column 10"),
    ("calibrate-truncated-gzip", lambda f: ["calibrate", str(f.model), "--corpus", str(f.root / "truncated.jsonl.gz")], 2, "truncated.jsonl.gz: truncated or corrupt gzip data"),
    ("calibrate-missing-corpus", lambda f: ["calibrate", str(f.model), "--corpus", str(f.root / "nope.jsonl")], 2, "nope.jsonl' is not a file"),
    ("calibrate-not-utf8", lambda f: ["calibrate", str(f.model), "--corpus", str(f.root / "latin1.txt")], 2, "latin1.txt: line 1: not valid UTF-8 (byte 0xe9 at column 4)"),
    ("calibrate-empty", lambda f: ["calibrate", str(f.model), "--corpus", str(f.root / "empty.txt")], 2, "empty.txt: no texts found"),
    ("calibrate-dims-word", lambda f: ["calibrate", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--dims", "alpha=big"], 2, "--dims 'alpha=big': expected a positive integer"),
    # eval
    ("eval-limit-negative", lambda f: ["eval", str(f.model), "--sts", str(f.root / "sts_nan.tsv"), "--limit", "-5"], 2, "expected an integer >= 0 (0 = no limit), got '-5'"),
    ("eval-sts-no-header", lambda f: ["eval", str(f.model), "--sts", str(f.root / "sts_noheader.tsv")], 2, "sts_noheader.tsv: header lacks ['score', 'sentence1', 'sentence2']"),
    ("eval-sts-bad-score", lambda f: ["eval", str(f.model), "--sts", str(f.root / "sts_badscore.tsv")], 2, "sts_badscore.tsv: line 2: expected a finite score and two sentences"),
    ("eval-sts-nan-score", lambda f: ["eval", str(f.model), "--sts", str(f.root / "sts_nan.tsv")], 2, "sts_nan.tsv: line 2: expected a finite score"),
    ("eval-sts-one-sentence", lambda f: ["eval", str(f.model), "--sts", str(f.root / "sts_short.tsv")], 2, "sts_short.tsv: line 2: expected a finite score and two sentences"),
    ("eval-beir-empty-corpus", lambda f: ["eval", str(f.model), "--beir", str(f.beir_empty)], 2, "corpus.jsonl: no documents"),
    ("eval-beir-no-qrels", lambda f: ["eval", str(f.model), "--beir", str(f.beir_noqrels)], 2, "no qrels/test.tsv; expected a BEIR folder"),
    ("eval-nothing", lambda f: ["eval", str(f.model)], 2, "nothing to evaluate: pass --sts FILE and/or --beir DIR"),
    ("eval-device-cuda", lambda f: ["eval", str(f.model), "--sts", str(f.root / "sts_nan.tsv"), "--device", "cuda:0"], 2, "device 'cuda:0' is not available on this machine; available: ['cpu']"),
    ("eval-device-name", lambda f: ["eval", str(f.model), "--sts", str(f.root / "sts_nan.tsv"), "--device", "gpu0"], 2, "device 'gpu0' is not a torch device; valid: cpu, cuda, cuda:N, mps"),
    ("eval-batch-zero", lambda f: ["eval", str(f.model), "--sts", str(f.root / "sts_nan.tsv"), "--batch-size", "0"], 2, "expected a positive integer, got '0'"),
    # compare
    ("compare-k-zero", lambda f: ["compare", str(f.model / "alpha"), str(f.model / "beta"), "--beir", str(f.beir_empty), "--k", "0"], 2, "argument --k: expected a positive integer, got '0'"),
    ("compare-empty-corpus", lambda f: ["compare", str(f.model / "alpha"), str(f.model / "beta"), "--beir", str(f.beir_empty)], 2, "corpus.jsonl: no documents"),
    ("compare-one-model", lambda f: ["compare", str(f.model / "alpha"), "--beir", str(f.beir_empty)], 2, "compare needs at least 2 models, got 1"),
    # embed
    ("embed-id-field-typo", lambda f: embed(f, "--output", str(f.o), "--id-field", "_idd"), 2, "no valid record in"),
    ("embed-prompt-typo", lambda f: embed(f, "--output", str(f.o), "--prompt-name", "documnet"), 2, "unknown prompt name 'documnet' for"),
    ("embed-devices-cuda", lambda f: embed(f, "--output", str(f.o), "--devices", "cuda:0"), 2, "device 'cuda:0' is not available on this machine"),
    ("embed-dtype", lambda f: embed(f, "--output", str(f.o), "--dtype", "bf16"), 2, "argument --dtype: invalid choice: 'bf16' (choose from 'float32', 'float16', 'int8')"),
    ("embed-engine", lambda f: embed(f, "--output", str(f.o), "--engine", "spark"), 2, "argument --engine: invalid choice: 'spark' (choose from 'local', 'ray')"),
    ("embed-quantization", lambda f: embed(f, "--output", str(f.o), "--quantization", "int4"), 2, "argument --quantization: invalid choice: 'int4' (choose from 'auto', 'none', 'int8-dynamic')"),
    ("embed-backend", lambda f: embed(f, "--output", str(f.o), "--backend", "tpu"), 2, "argument --backend: invalid choice: 'tpu' (choose from 'auto', 'torch', 'onnx', 'openvino')"),
    ("embed-backend-files-missing", lambda f: embed(f, "--output", str(f.o), "--backend", "onnx"), 2, "alpha/onnx/model.onnx not found; make it with `concat-embed export-backends MODEL --onnx`"),
    ("embed-backend-with-devices", lambda f: embed(f, "--output", str(f.o), "--backend", "onnx", "--devices", "cpu,cpu"), 2, "backend 'onnx' runs in this process; use it without --devices / --engine ray"),
    ("embed-shard-zero", lambda f: embed(f, "--output", str(f.o), "--shard-size", "0"), 2, "argument --shard-size: expected a positive integer, got '0'"),
    ("embed-truncated-gzip", lambda f: embed(f, "--output", str(f.o), input=f.root / "truncated.jsonl.gz"), 2, "truncated.jsonl.gz: truncated or corrupt gzip data"),
    ("embed-missing-input", lambda f: embed(f, "--output", str(f.o), input=f.root / "nope.jsonl"), 2, "nope.jsonl' is not a file"),
    ("embed-wrong-extension", lambda f: embed(f, "--output", str(f.o), input=f.root / "corpus.csv"), 2, "expected .jsonl, .jsonl.gz or .parquet"),
    ("embed-output-is-file", lambda f: embed(f, "--output", str(f.a_file)), 2, "a_file' is a file; give a folder"),
    # compress
    ("compress-dims-increasing", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o), "--dims", "12,24"], 2, "dims [12, 24]: must be strictly decreasing"),
    ("compress-dims-zero", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o), "--dims", "24,0"], 2, "--dims '24,0': expected a positive integer, got '0'"),
    ("compress-dims-too-large", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o), "--dims", "200"], 2, "dims 200: each dimension must be an integer in [1, 96]"),
    ("compress-corpus-too-small", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o), "--dims", "48"], 2, "23 texts are fewer than the largest dimension 48"),
    ("compress-method", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o), "--method", "svd"], 2, "argument --method: invalid choice: 'svd' (choose from 'pca', 'trained')"),
    ("compress-out-user-folder", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.user_dir), "--dims", "8"], 2, "is not empty and was not written by concat-embed"),
    ("compress-out-inside-model", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.model / "small"), "--dims", "8"], 2, "is inside the source"),
    ("compress-pseudo-queries", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o), "--dims", "8", "--pseudo-queries", "title"], 2, "argument --pseudo-queries: invalid choice: 'title' (choose from 'sentences', 'titles', 'none')"),
    ("compress-sentences-per-doc", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o), "--dims", "8", "--sentences-per-doc", "-1"], 2, "expected an integer >= 0 (0 = no limit), got '-1'"),
    ("compress-epochs-zero", lambda f: ["compress", str(f.model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o), "--dims", "8", "--epochs", "0"], 2, "expected a positive integer, got '0'"),
    ("compress-twice", lambda f: ["compress", str(f.m_compressed), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o), "--dims", "8"], 2, "is already compressed (compression.json); compress its uncompressed source instead"),
    ("compress-not-a-model", lambda f: ["compress", str(f.no_model), "--corpus", str(f.root / "corpus.jsonl"), "--out", str(f.o)], 2, "not a combined model folder (no concat_config.json)"),
    ("embed-text-fields-empty", lambda f: embed(f, "--output", str(f.o), "--text-fields", ","), 2, "id_field and text_fields must name fields"),
    # export-backends, and calibrate on a compressed model
    ("export-int8-for", lambda f: ["export-backends", str(f.model), "--int8", "--int8-for", "sse2"], 2, "int8 CPU family 'sse2': expected one of ['avx512_vnni', 'avx512', 'avx2', 'arm64']"),
    ("export-not-a-model", lambda f: ["export-backends", str(f.no_model)], 2, "not a combined model folder (no concat_config.json)"),
    ("calibrate-not-a-model", lambda f: ["calibrate", str(f.no_model), "--corpus", str(f.root / "corpus.jsonl")], 2, "not a combined model folder (no concat_config.json)"),
    ("calibrate-stconfig-invalid-json", lambda f: ["calibrate", str(f.m_stconfig), "--corpus", str(f.root / "corpus.jsonl")], 2, "config_sentence_transformers.json: invalid JSON at line 1 column 14"),
    ("calibrate-part-stconfig-invalid-json", lambda f: ["calibrate", str(f.m_part_stconfig), "--corpus", str(f.root / "corpus.jsonl")], 2, "gamma/config_sentence_transformers.json: invalid JSON at line 1 column 2"),
    ("calibrate-pooling-invalid-json", lambda f: ["calibrate", str(f.m_pooling), "--corpus", str(f.root / "corpus.jsonl")], 2, "beta/1_Pooling/config.json: invalid JSON at line 1 column 2"),
    ("serve-port-too-large", lambda f: ["serve", str(f.model), "--port", "70000"], 2, "argument --port: expected a port number in [0, 65535] (0 = any free port), got '70000'"),
    ("serve-port-negative", lambda f: ["serve", str(f.model), "--port", "-1"], 2, "argument --port: expected a port number in [0, 65535] (0 = any free port), got '-1'"),
    ("distill-empty-texts", lambda f: distill(f, f.model, f.root / "empty.txt"), 2, "empty.txt: no texts found"),
    ("distill-malformed-texts", lambda f: distill(f, f.model, f.root / "badjson.jsonl"), 2, "badjson.jsonl: line 2: invalid JSON at column 10"),
    ("distill-too-few-texts", lambda f: distill(f, f.model, f.user_dir / "notes.txt"), 2, "notes.txt: 1 texts; distillation needs at least 10"),
    ("distill-teacher-not-combined", lambda f: distill(f, f.user_dir, f.root / "corpus.jsonl"), 2, "user_dir: not a combined model folder (no concat_config.json)"),
    ("distill-width-differs", lambda f: distill(f, f.model, f.root / "corpus.jsonl", "--student", "alpha"), 2, "student 'alpha' outputs 32 dims, the teacher 96: distil from a teacher of the student's width, made with `concat-embed compress model --dims 32"),
    ("distill-student-unknown", lambda f: distill(f, f.t32, f.root / "corpus.jsonl", "--student", "gamma"), 2, "student 'gamma' is neither a part of t32 (['alpha', 'half']) nor a sentence-transformers folder"),
    ("distill-layers-out-of-range", lambda f: distill(f, f.t32, f.root / "corpus.jsonl", "--student", "alpha", "--layers", "0,5"), 2, "layers [0, 5]: each must be an integer in [0, 1] (the student has 2 layers)"),
    ("distill-layers-not-increasing", lambda f: distill(f, f.t32, f.root / "corpus.jsonl", "--student", "alpha", "--layers", "1,0"), 2, "layers [1, 0]: must be strictly increasing, e.g. 0,2,4"),
    ("distill-ranking-weight-negative", lambda f: distill(f, f.t32, f.root / "corpus.jsonl", "--ranking-weight", "-1"), 2, "argument --ranking-weight: expected a finite number >= 0, got '-1'"),
    ("distill-ranking-weight-nan", lambda f: distill(f, f.t32, f.root / "corpus.jsonl", "--ranking-weight", "nan"), 2, "argument --ranking-weight: expected a finite number >= 0, got 'nan'"),
    ("distill-layers-word", lambda f: distill(f, f.t32, f.root / "corpus.jsonl", "--layers", "first"), 2, "argument --layers: expected layer indices separated by commas, e.g. 0,2,4; got 'first'"),
    ("distill-lr-nan", lambda f: distill(f, f.t32, f.root / "corpus.jsonl", "--lr", "nan"), 2, "argument --lr: expected a finite number > 0, got 'nan'"),
    ("distill-out-user-folder", lambda f: ["distill", str(f.t32), "--texts", str(f.root / "corpus.jsonl"), "--out", str(f.user_dir)], 2, "is not empty and was not written by concat-embed (it holds 'notes.txt')"),
    ("select-one-candidate", lambda f: select(f, "a"), 2, "select needs at least 2 candidates, got 1"),
    ("select-duplicate-names", lambda f: select(f, "a,a"), 2, "candidate names must be unique, got ['a', 'a']"),
    ("select-unsafe-name", lambda f: select(f, "a,a/b"), 2, "candidate name 'a/b' is not allowed"),
    ("select-candidate-fails", lambda f: ["select", "--part", f"a={f.parts['a']}", "--part", f"gone={f.root / 'no_model'}", "--sts", str(f.root / "pairs.tsv"), "--no-progress"], 2, "candidate 'gone' ("),
    ("select-max-parts-zero", lambda f: select(f, "a,b", "--max-parts", "0"), 2, "argument --max-parts: expected a positive integer, got '0'"),
    ("select-max-parts-above", lambda f: select(f, "a,b", "--max-parts", "3"), 2, "max_parts = 3: expected an integer in [1, 2] (the candidates)"),
    ("select-holdout-zero", lambda f: select(f, "a,b", "--holdout", "0"), 2, "argument --holdout: expected a share strictly between 0 and 1, e.g. 0.5; got '0'"),
    ("select-holdout-one", lambda f: select(f, "a,b", "--holdout", "1"), 2, "expected a share strictly between 0 and 1"),
    ("select-holdout-nan", lambda f: select(f, "a,b", "--holdout", "nan"), 2, "expected a share strictly between 0 and 1, e.g. 0.5; got 'nan'"),
    ("select-no-pairs", lambda f: select(f, "a,b", data=f.root / "sts_one.tsv"), 2, "sts_one.tsv: 1 usable pairs; select needs at least 2 (half are held out)"),
    ("select-only-header", lambda f: select(f, "a,b", data=f.root / "sts_header.tsv"), 2, "sts_header.tsv: no sentence pairs (only a header)"),
    ("select-no-data", lambda f: ["select", "--part", f"a={f.parts['a']}", "--part", f"b={f.parts['b']}"], 2, "one of the arguments --sts --beir --corpus is required"),
    ("select-build-user-folder", lambda f: select(f, "a,b", "--build", str(f.user_dir)), 2, "is not empty and was not written by concat-embed (it holds 'notes.txt')"),
    ("calibrate-compressed-dims", lambda f: ["calibrate", str(f.m_compressed), "--corpus", str(f.root / "corpus.jsonl"), "--dims", "alpha=4"], 2, "is compressed: dims do not apply"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "code", "message"), [case[1:] for case in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_rejects_bad_input_with_one_line(bad, tmp_path, capsys, argv, code, message) -> None:
    files = Files(bad.root, bad.parts, bad.model)
    files.__dict__["o"] = tmp_path / "out"  # this case's own output folder (the others are bad.root / name)
    with pytest.raises(SystemExit) as exit_info:
        main(argv(files))
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    last = err.strip().splitlines()[-1]  # argparse's own errors print the usage lines first
    assert last.startswith(f"concat-embed {argv(files)[0]}: error: ") and message in last, err
    assert "Traceback" not in err, err
    assert not (tmp_path / "out").exists(), "a refused command left an output folder behind"


def load(folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")


def set_model_length(f: Files) -> None:
    load(f.model).max_seq_length = 100000


def compress_api(f: Files, **settings) -> None:
    from hub_export.quality.compress import CompressOptions, compress_model

    compress_model(f.model, f.root / "api-out", CompressOptions(str(f.root / "corpus.jsonl"), [8], **settings), False)


def choose_runtime_api(f: Files, **settings) -> None:
    from hub_export.runtime.choice import choose_runtime

    choose_runtime(str(f.model), **settings)


def run_job(f: Files, **settings) -> None:
    from hub_export.runtime.embed import EmbedJob, run_embed

    run_embed(EmbedJob(str(f.model), str(f.root / "corpus.jsonl"), str(f.root / "api-out"), **settings), False)


def verify_nan_tolerance(f: Files) -> None:
    from hub_export.publish.verify import run_verification

    run_verification(f.model, float("nan"))


def compare_k0(f: Files) -> None:
    from hub_export.quality.compare import compare_models

    compare_models([str(f.model / "alpha"), str(f.model / "beta")], f.beir_empty, k=0)


def calibrate_negative(f: Files) -> None:
    from hub_export.quality.calibrate import calibrate_folder

    calibrate_folder(f.model, f.root / "corpus.jsonl", limit=-1)


def build_api(f: Files, **options) -> None:
    from hub_export.publish.build import PartOptions, build_model

    build_model([PartOptions("x", str(f.parts["a"]), **options), PartOptions("y", str(f.parts["b"]))], f.root / "o")


API_CASES = [
    ("config-invalid-json", lambda f: load(f.m_badjson), ValueError, "concat_config.json: invalid JSON at line 1 column 12: Expecting value"),
    ("config-weight-nan", lambda f: load(f.m_nan_weight), ValueError, "parts[1].weight = nan: expected a finite number > 0"),
    ("config-weight-inf", lambda f: load(f.m_inf_weight), ValueError, "parts[0].weight = inf: expected a finite number > 0"),
    ("config-max-seq-over-limit", lambda f: load(f.m_long), ValueError, "parts[0].max_seq_length = 100000: exceeds the part's position limit of 64 tokens"),
    ("config-name-star", lambda f: load(f.m_star), ValueError, "parts[0].name = '*': expected 1-64 letters"),
    ("config-subfolder-up", lambda f: load(f.m_up), ValueError, "parts[0].subfolder = '../alpha': expected a relative folder inside the model"),
    ("config-range-nan", lambda f: load(f.m_nan_range), ValueError, "parts[0].code_ranges = {'int8': {'low': nan"),
    ("config-trust-not-bool", lambda f: load(f.m_trust), ValueError, "parts[0].trust_remote_code = 'yes': expected true or false"),
    ("part-modules-invalid-json", lambda f: load(f.m_modules), ValueError, "alpha/modules.json: invalid JSON at line 1 column 3"),
    ("part-sbert-config-invalid-json", lambda f: load(f.m_sbert), ValueError, "alpha/sentence_bert_config.json: invalid JSON at line 1 column 20"),
    ("part-pooling-config-invalid-json", lambda f: load(f.m_pooling), ValueError, "beta/1_Pooling/config.json: invalid JSON at line 1 column 2"),
    ("max-seq-setter", set_model_length, ValueError, "part 'alpha'.max_seq_length = 100000: exceeds the part's position limit of 64 tokens"),
    ("verify-tolerance-nan", verify_nan_tolerance, ValueError, "tolerance = nan: expected a finite number > 0"),
    ("compare-k-zero", compare_k0, ValueError, "k = 0: expected a positive integer"),
    ("calibrate-limit-negative", calibrate_negative, ValueError, "limit = -1: expected a positive integer or None"),
    ("embed-batch-zero", lambda f: run_job(f, batch_size=0), ValueError, "batch_size = 0: expected a positive integer"),
    ("embed-shard-bool", lambda f: run_job(f, shard_size=True), ValueError, "shard_size = True: expected a positive integer"),
    ("build-weight-nan", lambda f: build_api(f, weight=float("nan")), ValueError, "part 'x': weight nan: expected a finite number > 0"),
    ("build-prompt-name", lambda f: build_api(f, prompts={"qurey": "q"}), ValueError, "unknown prompt name 'qurey'"),
    ("encode-lone-surrogate", lambda f: load(f.model).encode(["ok", "bad \ud800 text"]), ValueError, "accepts only valid Unicode text; batch item 0 holds a lone surrogate at character 4"),
    ("embed-dtype-api", lambda f: run_job(f, dtype="bf16"), ValueError, "unknown dtype 'bf16'; valid: ['float32', 'float16', 'int8']"),
    ("embed-engine-api", lambda f: run_job(f, engine="spark"), ValueError, "unknown engine 'spark'; valid: ['local', 'ray']"),
    ("compress-method-api", lambda f: compress_api(f, method="svd"), ValueError, "unknown method 'svd'; valid: ['pca', 'trained']"),
    ("compress-pseudo-api", lambda f: compress_api(f, pseudo_queries="title"), ValueError, "unknown pseudo_queries 'title'; valid: ['sentences', 'titles', 'none']"),
    ("runtime-backend-api", lambda f: choose_runtime_api(f, backend="tpu"), ValueError, "backend 'tpu': expected one of ['auto', 'torch', 'onnx', 'openvino']"),
    ("runtime-quantization-api", lambda f: choose_runtime_api(f, quantization="int4"), ValueError, "quantization 'int4': expected one of ['auto', 'none', 'int8-dynamic']"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "message"), [case[1:] for case in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_rejects_bad_input(bad, call, error, message) -> None:
    with pytest.raises(error) as info:
        call(bad)
    assert message in str(info.value)
    assert not (bad.root / "api-out").exists() and not (bad.root / "o").exists()
