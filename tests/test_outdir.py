"""Output folders: never delete what the tool did not write, replace a previous build whole, publish no local paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hub_export.folder import BUILD_RECORD as RECORD
from hub_export.folder import model_files
from hub_export.publish import build as build_module
from hub_export.publish.build import PartOptions, build_model


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def parts(tiny_parts: dict[str, Path], names: str = "xy") -> list[PartOptions]:
    sources = {"x": tiny_parts["a"], "y": tiny_parts["b"], "z": tiny_parts["a2"]}
    return [PartOptions(name, str(sources[name])) for name in names]


def test_user_folder_is_refused_and_its_files_stay(tiny_parts, tmp_path) -> None:
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    (out / "x" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and was not written by concat-embed"):
        build_model(parts(tiny_parts), out)
    assert tree(out) == {"x/notes.txt": b"mine"}


def test_output_equal_to_a_source_is_refused_and_the_source_is_intact(tiny_parts, tmp_path) -> None:
    before = tree(tiny_parts["a"])
    with pytest.raises(ValueError, match="is inside the source"):
        build_model(parts(tiny_parts), tiny_parts["a"])
    assert tree(tiny_parts["a"]) == before


def test_rebuild_leaves_exactly_the_new_models_files(tiny_parts, tmp_path) -> None:
    out = build_model(parts(tiny_parts, "xyz"), tmp_path / "out")
    (out / "verification.json").write_text("{}")  # written later by `verify`: the tool's own file
    assert (out / "z").is_dir()
    build_model(parts(tiny_parts, "xy"), out)
    fresh = build_model(parts(tiny_parts, "xy"), tmp_path / "fresh")
    assert sorted(tree(out)) == sorted(tree(fresh))
    assert not (out / "z").exists() and not (out / "verification.json").exists()
    assert json.loads((out / RECORD).read_text())["files"] == sorted(n for n in tree(out) if n != RECORD)


def test_user_file_added_to_a_build_blocks_the_rebuild(tiny_parts, tmp_path) -> None:
    out = build_model(parts(tiny_parts), tmp_path / "out")
    (out / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"holds files concat-embed did not write \(\['x/mine.txt'\]\)"):
        build_model(parts(tiny_parts), out)
    assert (out / "x" / "mine.txt").read_text() == "keep me"


def test_failed_rebuild_keeps_the_previous_model_and_leaves_no_staging(tiny_parts, tmp_path, monkeypatch) -> None:
    out = build_model(parts(tiny_parts), tmp_path / "out")
    before = tree(out)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build_module, "write_card", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_model(parts(tiny_parts, "xz"), out)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_published_files_hold_no_local_paths(tiny_parts, tmp_path) -> None:
    out = build_model(parts(tiny_parts), tmp_path / "out")
    sources = {str(tiny_parts["a"].parent), str(Path.home()), str(tmp_path)}
    for name in model_files(out):
        text = (out / name).read_bytes()
        assert not any(source.encode() in text for source in sources if len(source) > 1), name
    config = json.loads((out / "concat_config.json").read_text())
    assert [p["source"] for p in config["parts"]] == ["a", "b"]
    assert "| x | a |" in (out / "README.md").read_text()


def test_files_are_not_added_below_a_linked_folder(tmp_path) -> None:
    from hub_export.outdir import add_files

    folder, outside, staged = tmp_path / "model", tmp_path / "outside", tmp_path / "staged"
    (folder / "alpha").mkdir(parents=True)
    outside.mkdir()
    (folder / "alpha" / "onnx").symlink_to(outside, target_is_directory=True)
    (staged / "alpha" / "onnx").mkdir(parents=True)
    (staged / "alpha" / "onnx" / "model.onnx").write_bytes(b"graph")
    with pytest.raises(ValueError, match=r"\['alpha/onnx'\] is a symbolic link; replace it with a real folder"):
        add_files(folder, staged)
    assert list(outside.iterdir()) == [] and not (folder / RECORD).exists()


def test_staging_folders_of_ended_runs_are_removed_and_nothing_else(tmp_path) -> None:
    import subprocess

    from hub_export.outdir import _owner, staging_folder, write_whole

    out = tmp_path / "out"
    host = _owner().split("-")[0]
    ended = subprocess.Popen(["true"])
    ended.wait()  # its pid ran on this host and has ended
    stale = tmp_path / f".out.{host}-{ended.pid}.k2x_9q.partial"
    running = tmp_path / f".out.{host}-{os.getpid()}.a1b2c3.partial"
    other_host = tmp_path / f".out.00000000-{ended.pid}.a1b2c3.partial"
    lookalike = tmp_path / ".out.mine.partial"
    for folder in (stale, running, other_host, lookalike):
        (folder / "1_Dense").mkdir(parents=True)
        (folder / "1_Dense" / "model.safetensors").write_bytes(b"x" * 100)
    link = tmp_path / f".out.{host}-{ended.pid}.linked.partial"
    link.symlink_to(lookalike)
    write_whole(out, lambda staging: (staging / "a.txt").write_text("new"))
    assert not stale.exists() and (out / "a.txt").read_text() == "new"
    assert running.is_dir() and other_host.is_dir() and lookalike.is_dir() and link.is_symlink()
    assert (lookalike / "1_Dense" / "model.safetensors").is_file()
    fresh = staging_folder(out)
    assert fresh.name.startswith(f".out.{_owner()}.") and fresh.name.endswith(".partial")
