"""ConcatEmbedding: parity with a plain-transformers reference, prompts, round trips, bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from tests.constants import QUERY_PROMPT
from tests.tiny_models import built_model_reference as reference
from tests.tiny_models import reference_part

TEXTS = ["what is snowflake?", "The quick brown fox jumps over the lazy dog.", "é ü 日本 text", "a"]


def encode(model: SentenceTransformer, method: str, texts: list[str], **kwargs) -> torch.Tensor:
    return torch.as_tensor(getattr(model, method)(texts, convert_to_numpy=True, **kwargs))


def test_dimension_is_sum_of_parts(loaded_model: SentenceTransformer) -> None:
    assert loaded_model.get_sentence_embedding_dimension() == 32 + 16 + 48
    assert loaded_model[0].get_embedding_dimension() == 96


@pytest.mark.parametrize(
    ("method", "kwargs", "query"),
    [
        ("encode_query", {}, True),
        ("encode_document", {}, False),
        ("encode", {"prompt_name": "query"}, True),
        ("encode", {"prompt_name": "document"}, False),
        ("encode", {}, False),
    ],
)
def test_parity_with_plain_transformers(loaded_model, tiny_parts, method, kwargs, query) -> None:
    ours = encode(loaded_model, method, TEXTS, **kwargs)
    expected = reference(tiny_parts, TEXTS, query)
    assert ours.shape == expected.shape == (len(TEXTS), 96)
    assert torch.max(torch.abs(ours - expected)).item() <= 1e-5


def test_explicit_prompt_reaches_every_part_unchanged(loaded_model, tiny_parts) -> None:
    ours = encode(loaded_model, "encode", TEXTS, prompt="custom: ")
    expected = torch.cat(
        [
            reference_part(tiny_parts["a"], TEXTS, "cls", "custom: "),
            reference_part(tiny_parts["b"], TEXTS, "mean", "custom: ", truncate_dim=16, weight=0.5),
            reference_part(tiny_parts["a2"], TEXTS, "lasttoken", "custom: ", max_length=32),
        ],
        dim=-1,
    )
    assert torch.max(torch.abs(ours - expected)).item() <= 1e-5


def test_norm_is_sqrt_of_squared_weights(loaded_model) -> None:
    norms = np.linalg.norm(loaded_model.encode(TEXTS), axis=1)
    np.testing.assert_allclose(norms, np.sqrt(1 + 0.25 + 1), atol=1e-5)


def test_normalize_output(tiny_parts, tmp_path) -> None:
    from hub_export.publish.build import PartOptions, build_model

    folder = build_model(
        [PartOptions("x", str(tiny_parts["a"])), PartOptions("y", str(tiny_parts["b"]), pooling="mean")],
        tmp_path / "m",
        normalize_output=True,
    )
    model = SentenceTransformer(str(folder), trust_remote_code=True)
    ours = encode(model, "encode", TEXTS)
    raw = torch.cat([reference_part(tiny_parts["a"], TEXTS, "cls"), reference_part(tiny_parts["b"], TEXTS, "mean")], -1)
    assert torch.max(torch.abs(ours - torch.nn.functional.normalize(raw, dim=-1))).item() <= 1e-5


@pytest.fixture(scope="module")
def shared_tokenizer_model(tiny_parts, tmp_path_factory) -> SentenceTransformer:
    """Two parts with one tokenizer and different token limits (64 and 16; ``TEXTS`` need 13)."""
    from hub_export.publish.build import PartOptions, build_model

    parts = [
        PartOptions("x", str(tiny_parts["a"])),
        PartOptions("y", str(tiny_parts["a2"]), max_seq_length=16),
    ]
    folder = build_model(parts, tmp_path_factory.mktemp("shared") / "model")
    return SentenceTransformer(str(folder), trust_remote_code=True)


@pytest.mark.parametrize(
    ("texts", "tokenizations"),
    [(TEXTS, 1), (TEXTS + [" ".join(["word"] * 20)], 2)],
    ids=["all-within-smaller-limit", "one-text-over-it"],
)
def test_shared_tokenization_is_reused_only_when_exact(
    shared_tokenizer_model, tiny_parts, monkeypatch, texts: list[str], tokenizations: int
) -> None:
    model = shared_tokenizer_model
    assert not model[0].shares_tokenizer  # token limits differ: no single-tokenizer AutoModel route
    remote = sys.modules[type(model[0]).__module__]
    calls: list[int] = []
    original = remote.tokenize_texts
    monkeypatch.setattr(remote, "tokenize_texts", lambda *a: calls.append(1) or original(*a))
    ours = encode(model, "encode_query", texts)
    assert len(calls) == tokenizations
    expected = torch.cat(
        [
            reference_part(tiny_parts["a"], texts, "cls", max_length=64),
            reference_part(tiny_parts["a2"], texts, "cls", max_length=16),
        ],
        -1,
    )
    assert torch.max(torch.abs(ours - expected)).item() <= 1e-5
    features = model[0].preprocess(texts)
    assert features["part1.input_ids"].shape[1] == min(16, features["part0.input_ids"].shape[1])


MIXED = [("word " * n).strip() for n in (1, 30, 3, 12, 7, 25, 2, 18, 5, 9)]


def test_part_streams_give_the_sequential_result(loaded_model: SentenceTransformer) -> None:
    """The CUDA per-part stream steps, run with torch.cpu's no-op streams, equal running the parts in turn."""
    module = loaded_model[0]
    features = module.preprocess(TEXTS + MIXED)
    with torch.inference_mode():
        on_streams = module._embed_parts_on_streams(dict(features), torch.cpu)
        in_turn = [module._embed_part(index, dict(features)) for index in range(len(module.pipelines))]
    assert len(on_streams) == len(in_turn) == 3
    for ours, expected in zip(on_streams, in_turn):
        assert torch.equal(ours, expected)


def test_cpu_chunks_trim_padding_and_match_whole_batches(built_model, tiny_parts) -> None:
    model = SentenceTransformer(str(built_model), trust_remote_code=True, device="cpu")
    module = model[0]
    remote = sys.modules[type(module).__module__]
    module.cpu_chunk_bytes = None
    whole = encode(model, "encode_query", MIXED, batch_size=16)
    chunks: list[tuple[int, int, int]] = []  # (the part's token budget, rows, width) of every chunk
    original = remote.row_chunks

    def spy(features, max_tokens):
        for chunk in original(features, max_tokens):
            chunks.append((max_tokens, *chunk["input_ids"].shape))
            yield chunk

    remote.row_chunks = spy
    try:
        # 200 tokens of the widest tiny part (96-wide feed-forward): 200 / 300 / 240 tokens for gamma / alpha / beta,
        # so each part's 10 texts (padded to <= 64 tokens) run in chunks of several rows.
        module.cpu_chunk_bytes = 4 * 96 * 200
        chunked = encode(model, "encode_query", MIXED, batch_size=16)
    finally:
        remote.row_chunks = original
    assert sorted({budget for budget, _, _ in chunks}) == [200, 240, 300]  # every part was chunked with its budget
    assert all(rows * width <= budget for budget, rows, width in chunks)  # within each part's budget
    assert max(rows for _, rows, _ in chunks) > 1 and len(chunks) > 3 * 2  # multi-row chunks, several per part
    assert len({width for _, _, width in chunks}) > 2  # trailing padding trimmed per chunk
    assert torch.max(torch.abs(chunked - whole)).item() <= 1e-6
    assert torch.max(torch.abs(chunked - reference(tiny_parts, MIXED, query=True))).item() <= 1e-5


def test_row_chunks_keep_left_padded_width() -> None:
    from modeling import row_chunks

    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
    features = {"input_ids": mask * 7, "attention_mask": mask, "scale": torch.tensor(2.0)}
    chunks = list(row_chunks(features, max_tokens=8))
    assert [tuple(c["input_ids"].shape) for c in chunks] == [(2, 4), (2, 4)]
    assert all(c["scale"].item() == 2.0 for c in chunks)  # tensors that are not per row pass through
    assert torch.equal(torch.cat([c["attention_mask"] for c in chunks]), mask)
    right = {"input_ids": mask.flip(1), "attention_mask": mask.flip(1)}
    assert [tuple(c["attention_mask"].shape) for c in row_chunks(right, max_tokens=8)] == [(2, 3), (2, 4)]


@pytest.mark.parametrize("value", [0, -1, 2.5, "12MB"])
def test_bad_cpu_chunk_bytes_is_refused(loaded_model, value) -> None:
    with pytest.raises(ValueError, match="positive int"):
        loaded_model[0].cpu_chunk_bytes = value


def test_save_load_round_trip_is_exact(loaded_model, built_model, tmp_path) -> None:
    loaded_model.save(str(tmp_path / "copy"))
    again = SentenceTransformer(str(tmp_path / "copy"), trust_remote_code=True)
    for method in ("encode_query", "encode_document"):
        assert torch.equal(encode(loaded_model, method, TEXTS), encode(again, method, TEXTS))
    original = json.loads((built_model / "concat_config.json").read_text())
    assert json.loads((tmp_path / "copy" / "concat_config.json").read_text()) == original
    assert again.prompts["query"] == QUERY_PROMPT


def test_each_part_loads_on_its_own(built_model, tiny_parts) -> None:
    part = SentenceTransformer(str(built_model / "alpha"))
    ours = torch.as_tensor(part.encode_query(TEXTS))
    assert torch.max(torch.abs(ours - reference_part(tiny_parts["a"], TEXTS, "cls", QUERY_PROMPT))).item() <= 1e-5
    beta = SentenceTransformer(str(built_model / "beta"))
    assert beta.prompts["query"] == "find: "


def test_model_kwargs_reach_every_part(built_model) -> None:
    # float64: bf16 is kept at float32 on CPUs without native bf16 (test_backends), so it would prove nothing here
    model = SentenceTransformer(str(built_model), trust_remote_code=True, model_kwargs={"torch_dtype": torch.float64})
    dtypes = {next(pipeline[0].parameters()).dtype for pipeline in model[0].pipelines}
    assert dtypes == {torch.float64}
    assert np.isfinite(model.encode(TEXTS)).all()


def test_max_seq_length_is_per_part_and_settable(built_model, tiny_parts) -> None:
    model = SentenceTransformer(str(built_model), trust_remote_code=True)
    assert [p[0].max_seq_length for p in model[0].pipelines] == [64, 64, 32]
    assert model.max_seq_length == 64
    model.max_seq_length = 8
    assert [p[0].max_seq_length for p in model[0].pipelines] == [8, 8, 8]
    long_text = ["snow flake search " * 10]
    cut = torch.as_tensor(model.encode_query(long_text))
    expected = torch.cat(
        [
            reference_part(tiny_parts["a"], long_text, "cls", QUERY_PROMPT, max_length=8),
            reference_part(tiny_parts["b"], long_text, "mean", "find: ", max_length=8, truncate_dim=16, weight=0.5),
            reference_part(tiny_parts["a2"], long_text, "lasttoken", QUERY_PROMPT, max_length=8),
        ],
        dim=-1,
    )
    assert torch.max(torch.abs(cut - expected)).item() <= 1e-5


def test_empty_list_and_empty_string(loaded_model, tiny_parts) -> None:
    assert loaded_model.encode([]).shape == (0,)
    empty = encode(loaded_model, "encode", [""])
    assert empty.shape == (1, 96) and torch.isfinite(empty).all()
    assert torch.max(torch.abs(empty - reference(tiny_parts, [""], query=False))).item() <= 1e-5


def test_very_long_text_is_truncated_per_part(loaded_model, tiny_parts) -> None:
    long_text = ["snow flake " * 10_000]
    assert len(long_text[0]) > 100_000
    ours = encode(loaded_model, "encode_query", long_text)
    assert torch.max(torch.abs(ours - reference(tiny_parts, long_text, query=True))).item() <= 1e-5


@pytest.mark.parametrize(("texts", "position", "kind"), [(["ok", None], 1, "NoneType"), ([3], 0, "int")])
def test_non_string_items_raise_type_error_naming_position(loaded_model, texts, position, kind) -> None:
    with pytest.raises(TypeError, match=rf"batch item {position} is {kind}"):
        loaded_model.encode(texts)


def test_unknown_prompt_name_lists_valid_names(loaded_model) -> None:
    with pytest.raises(ValueError, match="query"):
        loaded_model.encode(["x"], prompt_name="nope")


def broken_copy(built_model: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(built_model, folder)
    config = json.loads((folder / "concat_config.json").read_text())
    edit(config)
    (folder / "concat_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda c: c["parts"][1].update(subfolder="missing"), r"concat_config.json: parts\[1\].subfolder = 'missing'"),
        (lambda c: c["parts"][0].update(dimension=31), r"parts\[0\].dimension = 31 but"),
        (lambda c: c["parts"][0].update(pooling="median"), r"parts\[0\].pooling = 'median'.*'cls', 'mean'"),
        (lambda c: c["parts"][0].update(pooling="mean"), r"parts\[0\].pooling = 'mean' but .* uses 'cls'"),
        (lambda c: c["parts"][1].update(truncate_dim=99), r"parts\[1\].truncate_dim = 99"),
        (lambda c: c["parts"][0].update(colour="red"), r"parts\[0\]: unknown field\(s\) \['colour'\]"),
        (lambda c: c.update(parts=c["parts"][:1]), r"concat_config.json: 'parts' must be a list of at least 2"),
        (lambda c: c["parts"][2].update(name="alpha"), r"parts\[\*\].name must be unique"),
    ],
)
def test_bad_config_names_file_and_field(built_model, tmp_path, edit, pattern) -> None:
    folder = broken_copy(built_model, tmp_path, edit)
    with pytest.raises(ValueError, match=pattern):
        SentenceTransformer(str(folder), trust_remote_code=True)


def test_loads_in_a_process_without_the_project_and_imports_no_optional_runtime(built_model, tmp_path) -> None:
    # transformers imports every `import` statement of remote code first: onnxruntime / openvino must not be one
    script = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('modeling') is None, 'a module named modeling is importable'\n"
        "from sentence_transformers import SentenceTransformer\n"
        "m = SentenceTransformer(sys.argv[1], trust_remote_code=True)\n"
        "print(m.encode_query(['what is snowflake?']).shape)\n"
        "print('runtimes', sorted(k for k in ('onnxruntime', 'openvino', 'nncf', 'onnx') if k in sys.modules))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-c", script, str(built_model)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "(1, 96)" in run.stdout and "runtimes []" in run.stdout
    folder = tmp_path / "no_code"
    shutil.copytree(built_model, folder)
    (folder / "modeling.py").unlink()
    run = subprocess.run(
        [sys.executable, "-c", script, str(folder)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode != 0
    assert "modeling" in run.stderr.strip().splitlines()[-1], run.stderr[-2000:]  # the missing remote code is named


@pytest.mark.parametrize("how", ["trust_remote_code", "model_kwargs"])
def test_parts_do_not_run_their_own_code_unless_built_so(model_copy, tmp_path, how) -> None:
    folder = model_copy
    marker = tmp_path / "part-code-ran"
    part = folder / "alpha"
    (part / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig, BertModel\n"
        "class EvilConfig(BertConfig):\n    model_type = 'bert'\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n"
    )
    config = json.loads((part / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (part / "config.json").write_text(json.dumps(config))
    kwargs = {"model_kwargs": {"trust_remote_code": True}} if how == "model_kwargs" else {}
    model = SentenceTransformer(str(folder), trust_remote_code=True, **kwargs)
    assert not marker.exists(), "a part's own code ran although it was not built with trust_remote_code"
    assert type(model[0].pipelines[0][0].auto_model).__name__ == "BertModel"
    assert json.loads((folder / "concat_config.json").read_text())["parts"][0]["trust_remote_code"] is False
    assert "| no |" in (folder / "README.md").read_text()


def test_cpu_share_gives_fewer_threads_while_other_processes_hold_cores(monkeypatch) -> None:
    from hub_export.modeling import CpuShare

    # (monotonic s, machine busy CPU s, this process's CPU s), as /proc/stat and os.times report them
    samples = iter([(0.0, 0.0, 0.0), (1.0, 2.0, 0.2), (1.2, 2.2, 0.4), (3.0, 4.0, 2.2), (4.0, 4.9, 2.3)])
    share = CpuShare()
    monkeypatch.setattr(share, "_sample", lambda: next(samples))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert share.threads(2) == 2  # first sample: nothing known yet
    assert share.threads(2) == 1  # 1.8 of 2 cores went to other processes
    assert share.threads(2) == 1  # 0.2 s later: too short to judge, keep the last answer
    assert share.threads(2) == 2  # the machine's busy time was all ours
    assert share.threads(2) == 1  # others used 0.8 cores: round(2 - 0.8) = 1


def test_cpu_share_without_proc_stat_keeps_the_ceiling(monkeypatch) -> None:
    from hub_export.modeling import CpuShare

    share = CpuShare()
    monkeypatch.setattr(share, "_sample", lambda: None)
    assert share.threads(4) == 4


def test_forward_runs_with_the_governed_threads_and_restores_them(loaded_model, monkeypatch) -> None:
    concat = loaded_model[0]
    original, ceiling = torch.get_num_threads(), 2
    torch.set_num_threads(ceiling)  # the process's count, whatever the run's default
    seen = []
    monkeypatch.setattr(concat._cpu_share, "threads", lambda wanted: 1)
    hook = concat.pipelines[0].register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    try:
        expected = loaded_model.encode(["hello world"])
        concat.adaptive_threads = False
        unchanged = loaded_model.encode(["hello world"])
        after = torch.get_num_threads()
    finally:
        hook.remove()
        concat.adaptive_threads = True
        torch.set_num_threads(original)
    assert seen == [1, ceiling] and after == ceiling
    assert np.abs(expected - unchanged).max() <= 1e-6


def test_two_models_in_two_threads_leave_torch_threads_as_found(built_model, loaded_model, monkeypatch) -> None:
    """Model a lowers torch's (process-wide) thread count to 2; model b starts while a runs and lowers it to 1.

    Read naively, b would take a's 2 for the count to restore and leave its thread, and threads started
    later, at 2 threads for good.
    """
    import threading

    other = SentenceTransformer(str(built_model), trust_remote_code=True, device="cpu")
    a, b = loaded_model[0], other[0]
    monkeypatch.setattr(a._cpu_share, "threads", lambda ceiling: 2)
    monkeypatch.setattr(b._cpu_share, "threads", lambda ceiling: 1)
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def pausing(module, name: str, entered: threading.Event, wait_for: threading.Event):
        original = module._embed_part

        def embed_part(index, features):
            if index == 0 and not entered.is_set():
                seen[name] = torch.get_num_threads()
                entered.set()
                assert wait_for.wait(timeout=600), "the other thread never arrived"
            return original(index, features)

        monkeypatch.setattr(module, "_embed_part", embed_part)

    pausing(a, "a", a_inside, b_inside)
    pausing(b, "b", b_inside, a_done)
    errors, after_pass, fresh = [], [], []

    def run(model, before: threading.Event | None, after: threading.Event | None) -> None:
        try:
            if before is not None:
                assert before.wait(timeout=600)
            model.encode(["hello world"])
            after_pass.append(torch.get_num_threads())
        except BaseException as error:  # reported by the main thread
            errors.append(error)
            b_inside.set(), a_done.set()
        finally:
            if after is not None:
                after.set()

    original = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        threads = [threading.Thread(target=run, args=(loaded_model, None, a_done)),
                   threading.Thread(target=run, args=(other, a_inside, None))]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        later = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert seen == {"a": 2, "b": 1}
        assert after_pass == [4, 4] and fresh == [4] and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(original)


def test_loading_draws_no_weight_loading_bars(built_model, capfd) -> None:
    """transformers draws a "Loading weights" bar for every model it loads; a combined model loads several."""
    capfd.readouterr()
    SentenceTransformer(str(built_model), trust_remote_code=True, device="cpu")
    assert "Loading weights" not in capfd.readouterr().err
