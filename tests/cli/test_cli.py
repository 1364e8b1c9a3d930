"""The command line: build's options reach the config, bad options get errors naming valid choices, the reference
in docs/cli.md covers every command and option."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from hub_export.cli import main


def test_build_writes_every_option(tiny_parts, tmp_path, capsys) -> None:
    out = tmp_path / "m"
    code = main(
        [
            "build",
            "--part", f"arctic={tiny_parts['a']}",
            "--part", f"bge={tiny_parts['b']}",
            "--pooling", "bge=mean",
            "--prompt", "query=Represent this sentence for searching relevant passages: ",
            "--part-prompt", "bge.query=q: ",
            "--max-seq-length", "bge=48",
            "--weight", "bge=0.5",
            "--truncate-dim", "arctic=8",
            "--normalize-output",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    config = json.loads((out / "concat_config.json").read_text())
    arctic, bge = config["parts"]
    assert (arctic["pooling"], arctic["truncate_dim"], arctic["weight"]) == ("cls", 8, 1.0)
    assert (bge["pooling"], bge["max_seq_length"], bge["weight"], bge["prompts"]) == ("mean", 48, 0.5, {"query": "q: "})
    assert config["normalize_output"] is True
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {
        "query": "Represent this sentence for searching relevant passages: ",
        "document": "",
    }
    modules = json.loads((out / "modules.json").read_text())
    assert modules == [{"idx": 0, "name": "0", "path": "", "type": "modeling.ConcatEmbedding"}]
    assert (out / "modeling.py").is_file() and (out / "arctic" / "modules.json").is_file()


def test_build_from_sentence_transformers_folder_keeps_its_pooling(tiny_parts, built_model, tmp_path) -> None:
    out = tmp_path / "m"
    main(["build", "--part", f"x={built_model / 'beta'}", "--part", f"y={tiny_parts['a']}", "--out", str(out)])
    config = json.loads((out / "concat_config.json").read_text())
    assert [p["pooling"] for p in config["parts"]] == ["mean", "cls"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weight", "zzz=2"], "unknown part 'zzz'; valid parts: ['x', 'y']"),
        (["--pooling", "y=median"], "unknown pooling 'median'; valid modes: ['cls', 'mean'"),
        (["--truncate-dim", "x=-3"], "expected a positive integer"),
        (["--max-seq-length", "x"], "--max-seq-length expects KEY=VALUE"),
        (["--part-prompt", "x=oops"], "expected PART.PROMPT_NAME=TEXT"),
        (["--truncate-dim", "x=999"], "truncate_dim = 999"),
    ],
)
def test_bad_options_exit_2_with_clear_message(tiny_parts, tmp_path, capsys, extra, message) -> None:
    args = ["build", "--part", f"x={tiny_parts['a']}", "--part", f"y={tiny_parts['b']}", "--out", str(tmp_path / "m")]
    with pytest.raises(SystemExit) as exc:
        main([*args, *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_single_part_and_missing_source_are_rejected(tiny_parts, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["build", "--part", f"x={tiny_parts['a']}", "--out", str(tmp_path / "m")])
    assert exc.value.code == 2
    assert "a combined model needs at least 2 parts, got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["build", "--part", "x=/nonexistent", "--part", f"y={tiny_parts['a']}", "--out", str(tmp_path / "m")])
    assert exc.value.code == 2
    assert "/nonexistent" in capsys.readouterr().err


def test_cli_reference_documents_every_command_and_option() -> None:
    from hub_export.cli import make_parser

    reference = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", reference, flags=re.MULTILINE | re.DOTALL))
    parser = make_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(sections) == sorted(commands)
    for name, command in commands.items():
        for action in command._actions:
            for flag in action.option_strings:
                assert flag in sections[name], f"docs/cli.md: `{name}` does not mention {flag}"


@pytest.mark.parametrize(
    ("argv", "hidden", "extra"),
    [
        (["serve", "{model}"], "fastapi", "serve"),
        (["serve", "{model}", "--engine", "ray"], "ray", "ray"),
        (["eval", "{model}", "--beir", "{data}/scifact"], "pytrec_eval", "eval"),
        (["eval", "{model}", "--sts", "{data}/stsb/test.tsv.gz"], "scipy", "eval"),
        (["compare", "{model}/alpha", "{model}/beta", "--beir", "{data}/scifact"], "matplotlib", "eval"),
        (["embed", "{model}", "--input", "{data}/scifact/corpus.jsonl.gz", "--output", "{out}"], "pyarrow", "embed"),
        (["export-backends", "{model}", "--int8"], "onnxscript", "backends"),
        (["export-backends", "{model}", "--openvino"], "openvino", "backends"),
    ],
)
def test_missing_extra_is_one_line_before_any_work(built_model, tmp_path, capsys, monkeypatch, argv, hidden, extra):
    import sentence_transformers

    from hub_export.cli import options
    from tests.constants import DATA

    real = options.find_spec
    monkeypatch.setattr(options, "find_spec", lambda name: None if name == hidden else real(name))
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", lambda *a, **k: pytest.fail("a model loaded"))
    argv = [arg.format(model=built_model, data=DATA, out=tmp_path / "out") for arg in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err == (
        f"concat-embed {argv[0]}: error: needs {hidden} (not installed): pip install 'concat-embed[{extra}]' "
        f"(in a checkout: pip install -e '.[{extra}]')"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["embed", "serve"])
def test_embed_and_serve_run_the_exact_model_unless_a_fast_path_is_asked_for(model_copy, command) -> None:
    """Even where the folder has this CPU's int8 files, the defaults give the model's own vectors."""
    from hub_export.cli import make_parser
    from hub_export.modeling import ONNX_INT8_FILES
    from hub_export.runtime.choice import Runtime, choose_runtime

    for part in ("alpha", "beta", "gamma"):
        for name in ONNX_INT8_FILES.values():
            (model_copy / part / name).parent.mkdir(exist_ok=True)
            (model_copy / part / name).write_bytes(b"int8 graph")
    argv = [command, str(model_copy)] + (["--input", "x.jsonl", "--output", "o"] if command == "embed" else [])
    args = make_parser().parse_args(argv)
    assert choose_runtime(args.model, args.backend, args.quantization) == Runtime("torch", None)
    fast = make_parser().parse_args([*argv, "--backend", "auto", "--quantization", "auto"])
    assert choose_runtime(fast.model, fast.backend, fast.quantization) == Runtime("onnx", "auto")


def test_a_mistyped_option_prints_the_commands_own_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--part", "a=b", "--prat", "x=y", "--out", "o"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("usage: concat-embed build ")
    assert err.strip().splitlines()[-1] == "concat-embed build: error: unrecognized arguments: --prat x=y"


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_serve_on_a_busy_port_names_it_before_loading_anything(built_model, capsys, monkeypatch, engine) -> None:
    from hub_export.serve import app

    monkeypatch.setattr(app, "load_embedder", lambda *a, **k: pytest.fail("the model loaded"))
    busy = app.bound_socket("127.0.0.1", 0)
    port = busy.getsockname()[1]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", str(built_model), "--port", str(port), "--engine", engine])
    finally:
        busy.close()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"concat-embed serve: error: cannot listen on 127.0.0.1:{port}: Address already in use")


def test_distill_returns_freed_memory_before_it_trains(monkeypatch, capsys) -> None:
    """The process exists to train: the allocator returns freed activations (hub_export.runtime.memory)."""
    import hub_export.distill
    import hub_export.runtime.memory

    calls = []
    monkeypatch.setattr(hub_export.runtime.memory, "return_freed_memory", lambda: calls.append("memory") or True)

    def distill(*args, **kwargs):
        calls.append("distill")
        raise ValueError("stopped here")

    monkeypatch.setattr(hub_export.distill, "distill_model", distill)
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "teacher", "--texts", "t.txt", "--out", "o"])
    assert exit_info.value.code == 2 and calls == ["memory", "distill"]
    assert capsys.readouterr().err == "concat-embed distill: error: stopped here\n"
