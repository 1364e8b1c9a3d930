"""``concat-embed push``: publish a verified model folder to a Hub repo in one commit."""

from __future__ import annotations

import logging
from pathlib import Path

from hub_export.folder import check_model_folder, check_verified, model_files
from hub_export.publish.card import write_card
from hub_export.publish.sources import check_repo_id

logger = logging.getLogger(__name__)


def push_model(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    skip_verify: bool = False,
    allow_pickle: bool = False,
) -> str:
    """Upload the allowlisted model files of ``model_dir`` to ``repo_id`` in a single commit.

    Args:
        model_dir: The built (and verified) folder.
        repo_id: ``org/name`` on the Hub (``HF_ENDPOINT`` selects the Hub).
        private: Create the repo as private.
        revision: Branch to commit to (created from ``main`` if missing).
        token: Hub token; else ``HF_TOKEN`` or the stored login.
        skip_verify: Push even without a passing, current ``verification.json``.
        allow_pickle: Also upload pickle weights.

    Returns:
        The URL of the new commit.

    Raises:
        ValueError: If the folder is unverified, or no token is available (before any network call).
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    check_repo_id(repo_id)
    model_dir = Path(model_dir)
    check_model_folder(model_dir, students=True)
    if not skip_verify:
        check_verified(model_dir)
    token = token or get_token()
    if not token:
        raise ValueError("no Hub token: pass --token, set HF_TOKEN, or log in with `hf auth login`")
    write_card(model_dir, repo_id)
    files = model_files(model_dir, allow_pickle=allow_pickle)
    # Exactly the listed files, by explicit path: nothing is matched as a pattern.
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(model_dir / name)) for name in files]
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.create_commit(
        repo_id=repo_id,
        operations=operations,
        revision=revision,
        commit_message=f"Upload {repo_id.split('/')[-1]} with concat-embed",
    )
    logger.info("Pushed %d files to %s", len(files), info.commit_url)
    return info.commit_url


def dry_run_listing(model_dir: str | Path, allow_pickle: bool = False, skip_verify: bool = False) -> str:
    """What ``push`` would upload (one ``size  path`` line per file, a total) and whether it would be refused."""
    model_dir = Path(model_dir)
    check_model_folder(model_dir, students=True)
    files = model_files(model_dir, allow_pickle=allow_pickle)
    sizes = [(model_dir / f).stat().st_size for f in files]
    lines = [f"{size:>12,}  {path}" for path, size in zip(files, sizes)]
    lines.append(f"{sum(sizes):>12,}  total ({len(files)} files)")
    try:
        if not skip_verify:
            check_verified(model_dir)
        lines.append("a real push would send these files" + (" (verification skipped)" if skip_verify else ""))
    except ValueError as error:
        lines.append(f"a real push would be refused: {error}")
    return "\n".join(lines)
