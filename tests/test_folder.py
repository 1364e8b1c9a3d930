"""Model-file listing and hashing: regular files only, hashed in blocks."""

from __future__ import annotations

import hashlib
import os

from hub_export.folder import content_hash, file_sha256, model_files


def test_file_sha256_streams_to_the_same_digest(tmp_path) -> None:
    data = os.urandom(3 * 2**20 + 12345)  # several 1 MiB blocks and a partial one
    (tmp_path / "model.safetensors").write_bytes(data)
    assert file_sha256(tmp_path / "model.safetensors") == hashlib.sha256(data).hexdigest()


def test_links_and_hidden_files_are_neither_listed_nor_hashed(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"secret weights")
    (outside / "config.json").write_text("{}")
    model = tmp_path / "model"
    (model / "part").mkdir(parents=True)
    (model / "part" / "config.json").write_text("{}")
    (model / ".secrets").mkdir()
    (model / ".secrets" / "config.json").write_text("token")
    (model / "part" / "model.safetensors").symlink_to(outside / "model.safetensors")
    (model / "linked").symlink_to(outside, target_is_directory=True)
    assert model_files(model) == ["part/config.json"]
    before = content_hash(model)
    (outside / "model.safetensors").write_bytes(b"changed")
    assert content_hash(model) == before
