"""Corpus embedding: sharded Parquet, rejects, resume after a kill, multi-process and Ray engines."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sentence_transformers import SentenceTransformer

from hub_export.runtime.embed import CRASH_AFTER_SHARDS_ENV, EmbedJob, read_output, run_embed

GOOD = [{"_id": f"d{i}", "title": f"title {i}", "text": f"the quick brown fox number {i} jumps"} for i in range(23)]
BAD = [{"title": "no id"}, {"_id": "d3", "text": "dup"}, {"_id": "x1", "text": 5}, {"_id": "x2"}, "not an object"]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "{bad json\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", GOOD[:10] + BAD + GOOD[10:])


def expected_vectors(model_dir: Path) -> np.ndarray:
    model = SentenceTransformer(str(model_dir), trust_remote_code=True)
    return model.encode_document([f"{r['title']} {r['text']}" for r in GOOD])


def test_local_run_writes_shards_rejects_and_metadata(built_model, corpus, tmp_path) -> None:
    counts = run_embed(EmbedJob(str(built_model), str(corpus), str(tmp_path / "out"), shard_size=5), progress=False)
    assert counts | {"seconds": 0} == {
        "shards": 5,
        "written": 5,
        "skipped": 0,
        "embedded": 23,
        "rejected": 6,
        "seconds": 0,
    }
    ids, vectors = read_output(tmp_path / "out")
    assert ids == [r["_id"] for r in GOOD]
    assert np.abs(vectors - expected_vectors(built_model)).max() <= 1e-6
    table = pq.read_table(tmp_path / "out" / "shard-00000.parquet")
    vector_type = table.schema.field("vector").type
    assert vector_type.list_size == 96 and str(vector_type.value_type) == "float"
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert (
        meta["model"] == str(built_model) and meta["model_revision"].startswith("sha256:") and meta["dimension"] == "96"
    )
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == [None, "d3", "x1", "x2", None, None]
    assert "missing id field '_id'" in rejected[0]["reason"] and rejected[1]["reason"] == "duplicate id"
    assert "not strings" in rejected[2]["reason"] and "invalid JSON" in rejected[5]["reason"]


def test_parquet_input_float16_and_int8(built_model, tmp_path) -> None:
    import pyarrow as pa

    source = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(GOOD), source)
    run_embed(EmbedJob(str(built_model), str(source), str(tmp_path / "f16"), dtype="float16"), progress=False)
    ids, vectors = read_output(tmp_path / "f16")
    assert vectors.dtype == np.float16 and ids == [r["_id"] for r in GOOD]
    assert np.abs(vectors.astype(np.float32) - expected_vectors(built_model)).max() <= 1e-3
    with pytest.raises(ValueError, match="no int8 calibration: run `concat-embed calibrate`"):
        run_embed(EmbedJob(str(built_model), str(source), str(tmp_path / "i8"), dtype="int8"), progress=False)
    calibrated = tmp_path / "model"
    shutil.copytree(built_model, calibrated)
    from hub_export.quality.calibrate import calibrate_folder

    text_file = tmp_path / "sample.txt"
    text_file.write_text("\n".join(r["text"] for r in GOOD))
    calibrate_folder(calibrated, text_file)
    run_embed(EmbedJob(str(calibrated), str(source), str(tmp_path / "i8"), dtype="int8"), progress=False)
    _, codes = read_output(tmp_path / "i8")
    assert codes.dtype == np.int8 and codes.shape == (23, 96)


def test_bad_settings_name_valid_choices(built_model, corpus, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"valid: \['float32', 'float16', 'int8'\]"):
        run_embed(EmbedJob(str(built_model), str(corpus), str(tmp_path / "o"), dtype="bf16"), progress=False)
    with pytest.raises(ValueError, match=r"valid: \['local', 'ray'\]"):
        run_embed(EmbedJob(str(built_model), str(corpus), str(tmp_path / "o"), engine="spark"), progress=False)
    with pytest.raises(ValueError, match=r"valid: \[None, 'auto', 'int8-dynamic'\]"):
        run_embed(EmbedJob(str(built_model), str(corpus), str(tmp_path / "o"), quantization="int4"), progress=False)
    run_embed(EmbedJob(str(built_model), str(corpus), str(tmp_path / "o"), shard_size=5), progress=False)
    with pytest.raises(ValueError, match="was started with other settings .*shard_size"):
        run_embed(EmbedJob(str(built_model), str(corpus), str(tmp_path / "o"), shard_size=7), progress=False)
    with pytest.raises(ValueError, match="was started with other settings .*quantization"):
        job = EmbedJob(str(built_model), str(corpus), str(tmp_path / "o"), shard_size=5, quantization="int8-dynamic")
        run_embed(job, progress=False)


def test_int8_dynamic_job_stays_close_to_float(built_model, corpus, tmp_path) -> None:
    job = EmbedJob(str(built_model), str(corpus), str(tmp_path / "q"), quantization="int8-dynamic")
    run_embed(job, progress=False)
    ids, vectors = read_output(tmp_path / "q")
    assert ids == [r["_id"] for r in GOOD]
    cosines = np.sum(vectors * expected_vectors(built_model), axis=1) / np.sum(vectors * vectors, axis=1)
    assert 0.97 < cosines.min() and cosines.max() < 1.03
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["quantization"] == "int8-dynamic" and manifest["runtime"] == "torch+int8-dynamic"


def test_resume_after_kill_equals_uninterrupted_run(built_model, tmp_path) -> None:
    records = [{"_id": f"p{i}", "text": f"passage {i} " + "snow flake search " * 3} for i in range(200)]
    source = write_jsonl(tmp_path / "big.jsonl", records)
    args = [sys.executable, "-m", "hub_export", "embed", str(built_model), "--input", str(source),
            "--shard-size", "20", "--no-progress"]  # fmt: skip
    killed_dir = tmp_path / "killed"
    crash = os.environ | {CRASH_AFTER_SHARDS_ENV: "3"}  # the run kills itself (SIGKILL) after its 3rd shard
    killed = subprocess.run([*args, "--output", str(killed_dir)], env=crash, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(list(killed_dir.glob("shard-*.parquet"))) == 3
    assert (killed_dir / "rejected.jsonl.tmp").is_file() and not (killed_dir / "rejected.jsonl").exists()
    resumed = subprocess.run([*args, "--output", str(killed_dir)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    counts = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert (counts["skipped"], counts["written"], counts["rejected"]) == (3, 7, 1)
    assert not list(killed_dir.glob("*.tmp"))
    # the uninterrupted run in-process, with what the CLI's defaults resolve to (the exact model)
    straight = EmbedJob(str(built_model), str(source), str(tmp_path / "straight"), shard_size=20)
    run_embed(straight, progress=False)
    ids_a, vec_a = read_output(killed_dir)
    ids_b, vec_b = read_output(tmp_path / "straight")
    assert ids_a == ids_b == [r["_id"] for r in records]
    assert np.abs(vec_a - vec_b).max() <= 1e-6  # not bitwise: thread counts follow the machine's load


def test_multi_process_pool_matches_single_process(built_model, corpus, tmp_path) -> None:
    run_embed(EmbedJob(str(built_model), str(corpus), str(tmp_path / "one"), shard_size=5), progress=False)
    pooled = EmbedJob(str(built_model), str(corpus), str(tmp_path / "pool"), shard_size=5, devices=["cpu", "cpu"])
    run_embed(pooled, progress=False)
    (ids_a, a), (ids_b, b) = read_output(tmp_path / "one"), read_output(tmp_path / "pool")
    assert ids_a == ids_b and np.abs(a - b).max() <= 1e-5


@pytest.mark.slow
def test_ray_engine_matches_local(built_model, corpus, tmp_path) -> None:
    import ray

    run_embed(EmbedJob(str(built_model), str(corpus), str(tmp_path / "local"), shard_size=10), progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        job = EmbedJob(str(built_model), str(corpus), str(tmp_path / "ray"), shard_size=10, engine="ray", ray_workers=1)
        counts = run_embed(job, progress=False)
    finally:
        ray.shutdown()
    assert counts["embedded"] == 23 and counts["rejected"] == 6
    (ids_a, a), (ids_b, b) = read_output(tmp_path / "local"), read_output(tmp_path / "ray")
    assert ids_a == ids_b and np.abs(a - b).max() <= 1e-5


def test_resume_refuses_an_input_edited_in_place(built_model, tmp_path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", GOOD)
    job = EmbedJob(str(built_model), str(source), str(tmp_path / "out"), shard_size=5)
    run_embed(job, progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    edited = [dict(r) for r in GOOD]
    edited[2]["text"] = "an edited record"
    write_jsonl(source, edited[:7] + [{"_id": "new", "text": "a new record"}] + edited[7:])
    with pytest.raises(
        ValueError, match=r"the input .*in.jsonl changed since this output was started \(size \d+ -> \d+"
    ):
        run_embed(job, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_second_run_into_the_same_output_is_refused(built_model, corpus, tmp_path) -> None:
    from hub_export.runtime.embed import output_lock

    out = tmp_path / "out"
    out.mkdir()
    job = EmbedJob(str(built_model), str(corpus), str(out), shard_size=5)
    with output_lock(out):  # a first run holds the folder
        with pytest.raises(ValueError, match="another `concat-embed embed` run is writing to"):
            run_embed(job, progress=False)
        assert not (out / "manifest.json").exists()
    assert run_embed(job, progress=False)["embedded"] == 23


def test_bad_bytes_and_empty_ids_reject_their_line_only(built_model, tmp_path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [json.dumps(r).encode() for r in GOOD[:3]]
    lines.insert(1, b'{"_id": "latin", "text": "caf\xe9"}')
    lines.append(json.dumps({"_id": "", "text": "no id"}).encode())
    source.write_bytes(b"\n".join(lines) + b"\n")
    counts = run_embed(EmbedJob(str(built_model), str(source), str(tmp_path / "out")), progress=False)
    assert (counts["embedded"], counts["rejected"]) == (3, 2)
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert rejected == [
        {"id": None, "reason": "line 2: not valid UTF-8 (byte 0xe9 at column 30)"},
        {"id": None, "reason": "id field '_id' is empty"},
    ]


def test_prompt_typo_writes_nothing_and_the_corrected_run_works(built_model, corpus, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"unknown prompt name 'documnet' .*valid prompt names: \['document', 'query'\]"
    ):
        run_embed(EmbedJob(str(built_model), str(corpus), str(out), prompt_name="documnet"), progress=False)
    assert not out.exists()
    assert run_embed(EmbedJob(str(built_model), str(corpus), str(out)), progress=False)["embedded"] == 23
