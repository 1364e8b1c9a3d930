"""``push --dry-run``: the files a real push sends, and whether it would be refused (no network)."""

from __future__ import annotations

import json

import pytest

from hub_export.folder import content_hash
from hub_export.publish.push import dry_run_listing


def test_dry_run_says_whether_a_real_push_would_be_refused(model_copy, tmp_path) -> None:
    folder = model_copy
    (folder / "verification.json").unlink(missing_ok=True)
    listing = dry_run_listing(folder).splitlines()
    assert listing[-2].endswith(f"total ({len(listing) - 2} files)")
    assert listing[-1].startswith(f"a real push would be refused: {folder} is not verified")
    assert dry_run_listing(folder, skip_verify=True).endswith(
        "a real push would send these files (verification skipped)"
    )
    record = {"passed": True, "content_sha256": content_hash(folder)}
    (folder / "verification.json").write_text(json.dumps(record))
    assert dry_run_listing(folder).endswith("a real push would send these files")
    config = json.loads((folder / "concat_config.json").read_text())
    config["parts"][0]["weight"] = 2.0  # e.g. a hand edit, or `calibrate`, after verify
    (folder / "concat_config.json").write_text(json.dumps(config))
    assert dry_run_listing(folder).endswith(
        "changed since it was verified: run `concat-embed verify " + f"{folder}` again"
    )


def test_dry_run_refuses_a_folder_that_is_not_a_model(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a combined model folder"):
        dry_run_listing(tmp_path)
