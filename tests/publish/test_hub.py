"""Hub round trip with the real huggingface_hub client against a local Hub-API server.

``HF_ENDPOINT`` is read at import time, so every client runs in a subprocess.
"""

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

from hub_export.cli import main
from tests.constants import QUERY_PROMPT
from tests.hub_server import HubServer
from tests.tiny_models import make_tiny_bert, reference_part

TOKEN = "hf_test_token"
TEXTS = ["what is snowflake?", "Snowflake is a cloud data platform.", ""]
DEAD = "http://127.0.0.1:9"  # nothing listens: any request would fail


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> HubServer:
    return HubServer(TOKEN).start()


def client_env(hub: HubServer, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE", "HF_TOKEN")}
    env |= {"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp / "hf-home")}
    env |= {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return env | extra


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)


def cli(hub: HubServer, tmp: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "hub_export", *args], client_env(hub, tmp, **extra), tmp)


def cli_here(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """A command that never reaches the Hub (verify, a refused or dry-run push), run in this process."""
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


UPLOAD = """
import sys
from huggingface_hub import HfApi
api = HfApi(token={token!r})
api.create_repo({repo!r}, exist_ok=True)
print(api.upload_folder(folder_path=sys.argv[1], repo_id={repo!r}).oid)
"""

ENCODE = f"""
import json, sys
from sentence_transformers import SentenceTransformer
kwargs = json.loads(sys.argv[2])
model = SentenceTransformer(sys.argv[1], trust_remote_code=True, **kwargs)
out = {{"query": model.encode_query({TEXTS!r}).tolist(), "document": model.encode_document({TEXTS!r}).tolist()}}
print(json.dumps(out))
"""


def upload(hub: HubServer, tmp: Path, folder: Path, repo: str) -> str:
    done = run([sys.executable, "-c", UPLOAD.format(token=TOKEN, repo=repo), str(folder)], client_env(hub, tmp), tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def encode_remote(
    hub: HubServer, tmp: Path, name: str, _env: dict[str, str] | None = None, **kwargs
) -> dict[str, torch.Tensor]:
    done = run([sys.executable, "-c", ENCODE, name, json.dumps(kwargs)], client_env(hub, tmp, **(_env or {})), tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return {k: torch.tensor(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


@pytest.fixture(scope="module")
def upstream(hub: HubServer, tmp_path_factory) -> dict[str, str]:
    """Two part repos on the server; ``up/alpha`` has two commits (the first is pinned by the tests)."""
    tmp = tmp_path_factory.mktemp("upstream")
    alpha_v1 = make_tiny_bert(tmp / "alpha_v1", 32, "a", seed=11)
    (alpha_v1 / "README.md").write_text("---\nlicense: apache-2.0\n---\n# alpha\n")
    first = upload(hub, tmp, alpha_v1, "up/alpha")
    alpha_v2 = make_tiny_bert(tmp / "alpha_v2", 32, "a", seed=12)
    (alpha_v2 / "README.md").write_text("---\nlicense: apache-2.0\n---\n# alpha v2\n")
    second = upload(hub, tmp, alpha_v2, "up/alpha")
    beta = make_tiny_bert(tmp / "beta", 40, "b", seed=13)
    (beta / "README.md").write_text("---\nlicense: mit\n---\n# beta\n")
    beta_sha = upload(hub, tmp, beta, "up/beta")
    pickled = make_tiny_bert(tmp / "pickled", 32, "a", seed=14)
    (pickled / "model.safetensors").unlink()
    torch.save({}, pickled / "pytorch_model.bin")
    upload(hub, tmp, pickled, "up/pickled")
    return {"alpha_v1": first, "alpha_v2": second, "beta": beta_sha, "v1_dir": str(alpha_v1), "beta_dir": str(beta)}


@pytest.fixture(scope="module")
def built(hub, upstream, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("build")
    done = cli(
        hub, tmp, "build",
        "--part", f"alpha=up/alpha@{upstream['alpha_v1']}",
        "--part", "beta=up/beta",
        "--pooling", "beta=mean",
        "--prompt", f"query={QUERY_PROMPT}",
        "--cache-dir", str(tmp / "cache"),
        "--out", str(tmp / "model"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "model"


def own_copy(built: Path, tmp_path: Path) -> Path:
    """A test's own copy of the module's built model (verify and push write into the folder)."""
    return Path(shutil.copytree(built, tmp_path / "model"))


def expected(upstream: dict[str, str], query: bool) -> torch.Tensor:
    prompt = QUERY_PROMPT if query else ""
    return torch.cat(
        [
            reference_part(Path(upstream["v1_dir"]), TEXTS, "cls", prompt),
            reference_part(Path(upstream["beta_dir"]), TEXTS, "mean", prompt),
        ],
        dim=-1,
    )


def test_build_records_pinned_revisions_and_licences(built, upstream) -> None:
    parts = json.loads((built / "concat_config.json").read_text())["parts"]
    assert [(p["source"], p["revision"]) for p in parts] == [
        ("up/alpha", upstream["alpha_v1"]),
        ("up/beta", upstream["beta"]),
    ]
    card = (built / "README.md").read_text()
    assert upstream["alpha_v1"][:12] in card and "base_model:\n- up/alpha\n- up/beta" in card
    assert "license: other" in card and "(apache-2.0)" in card and "(mit)" in card


@pytest.mark.slow  # CI runs it; the default run keeps one round trip per feature
def test_build_at_pinned_revision_uses_that_revisions_weights(hub, built, upstream, tmp_path) -> None:
    ours = encode_remote(hub, tmp_path, str(built))
    assert torch.max(torch.abs(ours["query"] - expected(upstream, True))).item() <= 1e-5
    assert torch.max(torch.abs(ours["document"] - expected(upstream, False))).item() <= 1e-5


def test_pickle_only_part_is_refused_unless_allowed(hub, upstream, tmp_path) -> None:
    args = ["build", "--part", "a=up/pickled", "--part", "b=up/beta", "--out", str(tmp_path / "m")]
    done = cli(hub, tmp_path, *args, "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 2 and "only safetensors weights are accepted unless --allow-pickle" in done.stderr


@pytest.mark.slow  # CI runs it; the default run keeps one round trip per feature
def test_unknown_revision_fails_clearly(hub, upstream, tmp_path) -> None:
    done = cli(hub, tmp_path, "build", "--part", "a=up/alpha@nope", "--part", "b=up/beta", "--out", str(tmp_path / "m"))
    assert done.returncode != 0 and "nope" in done.stderr


def test_verify_push_and_load_from_hub(hub, built, upstream, tmp_path, capsys) -> None:
    built = own_copy(built, tmp_path)
    code, out, err = cli_here(capsys, "verify", str(built))  # verify runs its own fresh child process
    assert code == 0, err[-3000:]
    assert "PASSED" in out and "alpha" in out
    commits_before = dict(hub.state.repos["me/combined"].branches) if "me/combined" in hub.state.repos else {}
    pushed = cli(hub, tmp_path, "push", str(built), "--repo-id", "me/combined", "--token", TOKEN)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    url = pushed.stdout.strip().splitlines()[-1]
    repo = hub.state.repos["me/combined"]
    assert url == f"{hub.endpoint}/me/combined/commit/{repo.branches['main']}"
    assert repo.branches != commits_before
    files = repo.commits[repo.branches["main"]]
    assert {"modules.json", "modeling.py", "concat_config.json", "alpha/model.safetensors"} <= set(files)
    assert "usage" in files["README.md"].decode().lower() and "me/combined" in files["README.md"].decode()
    cache = tmp_path / "st-cache"
    remote = encode_remote(hub, tmp_path, "me/combined", cache_folder=str(cache))
    local = SentenceTransformer(str(built), trust_remote_code=True, device="cpu")
    assert np.abs(remote["query"].numpy() - local.encode_query(TEXTS)).max() <= 1e-6
    assert np.abs(remote["document"].numpy() - local.encode_document(TEXTS)).max() <= 1e-6


@pytest.mark.slow
def test_pushed_model_loads_offline_from_the_cache(hub, built, tmp_path) -> None:
    built = own_copy(built, tmp_path)
    assert cli(hub, tmp_path, "verify", str(built)).returncode == 0
    assert cli(hub, tmp_path, "push", str(built), "--repo-id", "me/cached", "--token", TOKEN).returncode == 0
    cache = tmp_path / "st-cache"
    remote = encode_remote(hub, tmp_path, "me/cached", cache_folder=str(cache))
    offline = encode_remote(
        hub, tmp_path, "me/cached", cache_folder=str(cache), _env={"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": DEAD}
    )
    assert torch.equal(offline["query"], remote["query"])
    local_only = encode_remote(
        hub, tmp_path, "me/cached", cache_folder=str(cache), local_files_only=True, _env={"HF_ENDPOINT": DEAD}
    )
    assert torch.equal(local_only["query"], remote["query"])


@pytest.mark.slow
def test_push_to_branch_and_load_with_revision(hub, built, upstream, tmp_path) -> None:
    built = own_copy(built, tmp_path)
    variant = tmp_path / "variant"
    shutil.copytree(built, variant)
    config = json.loads((variant / "concat_config.json").read_text())
    config["parts"][1]["weight"] = 0.5
    (variant / "concat_config.json").write_text(json.dumps(config))
    assert cli(hub, tmp_path, "verify", str(variant)).returncode == 0
    pushed = cli(hub, tmp_path, "push", str(variant), "--repo-id", "me/branchy", "--revision", "dev", "--token", TOKEN)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert cli(hub, tmp_path, "verify", str(built)).returncode == 0
    assert cli(hub, tmp_path, "push", str(built), "--repo-id", "me/branchy", "--token", TOKEN).returncode == 0
    dev = encode_remote(hub, tmp_path, "me/branchy", revision="dev", cache_folder=str(tmp_path / "c"))
    main = encode_remote(hub, tmp_path, "me/branchy", cache_folder=str(tmp_path / "c"))
    assert torch.max(torch.abs(main["query"] - expected(upstream, True))).item() <= 1e-5
    assert torch.allclose(dev["query"][:, :32], main["query"][:, :32], atol=1e-6)
    assert torch.allclose(dev["query"][:, 32:], 0.5 * main["query"][:, 32:], atol=1e-6)


@pytest.mark.slow  # CI runs it; the default run keeps one round trip per feature
def test_server_error_mid_push_leaves_no_commit_and_retry_succeeds(hub, built, tmp_path) -> None:
    built = own_copy(built, tmp_path)
    assert cli(hub, tmp_path, "verify", str(built)).returncode == 0
    assert cli(hub, tmp_path, "push", str(built), "--repo-id", "me/flaky", "--token", TOKEN).returncode == 0
    repo = hub.state.repos["me/flaky"]
    head, n_commits = repo.branches["main"], len(repo.commits)
    hub.state.fail_next_commits = 10  # outlasts the client's own retries
    failed = cli(hub, tmp_path, "push", str(built), "--repo-id", "me/flaky", "--token", TOKEN)
    assert failed.returncode != 0 and "500" in failed.stderr
    assert repo.branches["main"] == head and len(repo.commits) == n_commits
    hub.state.fail_next_commits = 0
    (built / "README.md").write_text((built / "README.md").read_text() + "\nretry\n")
    retried = cli(hub, tmp_path, "push", str(built), "--repo-id", "me/flaky", "--token", TOKEN)
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert repo.branches["main"] != head


def test_push_guards(hub, built, tmp_path, capsys) -> None:
    folder = tmp_path / "guarded"
    shutil.copytree(built, folder)
    (folder / ".env").write_text("HF_TOKEN=secret")
    (folder / "alpha" / "pytorch_model.bin").write_bytes(b"pickle")
    (folder / "notes.key").write_text("secret")
    requests_before = len(hub.state.requests)
    code, out, _ = cli_here(capsys, "push", str(folder), "--repo-id", "me/x", "--dry-run")
    assert code == 0
    assert "alpha/model.safetensors" in out and "total" in out
    assert ".env" not in out and "pytorch_model.bin" not in out and "notes.key" not in out
    (folder / "verification.json").unlink(missing_ok=True)
    code, _, err = cli_here(capsys, "push", str(folder), "--repo-id", "me/x", "--token", TOKEN)
    assert code == 2 and "is not verified" in err
    assert cli_here(capsys, "verify", str(folder))[0] == 0
    (folder / "concat_config.json").write_text((folder / "concat_config.json").read_text().replace("1.0", "2.0", 1))
    code, _, err = cli_here(capsys, "push", str(folder), "--repo-id", "me/x", "--token", TOKEN)
    assert code == 2 and "changed since it was verified" in err
    code, _, err = cli_here(capsys, "push", str(folder), "--repo-id", "me/x", "--skip-verify")
    assert code == 2 and "no Hub token" in err
    assert len(hub.state.requests) == requests_before


@pytest.mark.slow
def test_private_repo_needs_token(hub, built, tmp_path) -> None:
    built = own_copy(built, tmp_path)
    assert cli(hub, tmp_path, "verify", str(built)).returncode == 0
    pushed = cli(hub, tmp_path, "push", str(built), "--repo-id", "me/secret", "--private", "--token", TOKEN)
    assert pushed.returncode == 0
    anonymous = run([sys.executable, "-c", ENCODE, "me/secret", "{}"], client_env(hub, tmp_path), tmp_path)
    assert anonymous.returncode != 0
    assert "RepositoryNotFoundError" in anonymous.stderr or "401" in anonymous.stderr, anonymous.stderr[-2000:]
    with_token = encode_remote(hub, tmp_path, "me/secret", token=TOKEN, cache_folder=str(tmp_path / "c"))
    assert with_token["query"].shape == (3, 72)


@pytest.mark.slow  # CI runs it; the default run keeps one round trip per feature
def test_push_sends_exactly_the_dry_run_files(hub, built, tmp_path) -> None:
    folder = tmp_path / "tricky"
    shutil.copytree(built, folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "tokenizer.json").write_text("outside the folder")
    (folder / ".secrets").mkdir()
    (folder / ".secrets" / "config.json").write_text('{"token": "hf_secret"}')
    (folder / "extra").mkdir()
    (folder / "extra" / "tokenizer.json").symlink_to(outside / "tokenizer.json")  # an allowlisted name
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    assert cli(hub, tmp_path, "verify", str(folder)).returncode == 0
    dry = cli(hub, tmp_path, "push", str(folder), "--repo-id", "me/exact", "--dry-run")
    listed = {line.split()[-1] for line in dry.stdout.strip().splitlines()[:-2]}
    pushed = cli(hub, tmp_path, "push", str(folder), "--repo-id", "me/exact", "--token", TOKEN)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    repo = hub.state.repos["me/exact"]
    files = repo.commits[repo.branches["main"]]
    assert set(files) - {".gitattributes"} == listed
    assert not any(name.startswith((".secrets", "linked")) for name in files)
    assert "extra/tokenizer.json" not in files
    assert all(b"outside the folder" not in content and b"hf_secret" not in content for content in files.values())


def test_malformed_repo_id_is_refused_before_the_card_changes(hub, built, tmp_path) -> None:
    card = (built / "README.md").read_bytes()
    requests_before = len(hub.state.requests)
    done = cli(hub, tmp_path, "push", str(built), "--repo-id", "me/bad name", "--token", TOKEN, "--skip-verify")
    assert done.returncode == 2 and "repo id 'me/bad name' is not a Hub repo id" in done.stderr
    assert (built / "README.md").read_bytes() == card
    assert len(hub.state.requests) == requests_before


def test_dead_endpoint_is_one_line_with_advice(hub, upstream, tmp_path) -> None:
    env = client_env(hub, tmp_path, HF_ENDPOINT=DEAD)
    args = ["build", "--part", "a=up/alpha", "--part", "b=up/beta", "--out", str(tmp_path / "m")]
    done = run([sys.executable, "-m", "hub_export", *args], env, tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"cannot reach the Hub at {DEAD}" in done.stderr and "HF_HUB_OFFLINE=1" in done.stderr
    assert not (tmp_path / "m").exists()
