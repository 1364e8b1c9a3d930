"""A small Hub-API-compatible server for the tests (127.0.0.1 only, in-memory, git-like commits).

Covers what ``huggingface_hub`` uses to create repos, branches and commits (regular and LFS
uploads), list trees, resolve revisions and download files. ``fail_next_commits`` makes the
next commit requests answer 500 without committing, to test interrupted pushes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LFS_THRESHOLD = 10 * 1024 * 1024


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """Commits (sha -> files) and branches (name -> sha) of one repository."""

    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubState:
    """Everything the server knows; tests read and steer it directly."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.fail_next_commits = 0
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def commit(self, repo: Repo, branch: str, files: dict[str, bytes], message: str) -> str:
        parent = repo.branches.get(branch, "")
        sha = hashlib.sha1(
            json.dumps([parent, message, sorted((p, git_blob_oid(d)) for p, d in files.items())]).encode()
        ).hexdigest()
        repo.commits[sha] = files
        repo.branches[branch] = sha
        return sha


class Handler(BaseHTTPRequestHandler):
    """Routes the Hub API subset."""

    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        return

    @property
    def state(self) -> HubState:
        return self.server.state

    def reply(
        self, status: int, body: bytes | dict | list = b"", headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        self.send_response(status)
        if isinstance(body, (dict, list)):
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def error(self, status: int, code: str, message: str, head: bool = False) -> None:
        self.reply(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.state.token}"

    def find_repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and not self.authorized()):
            self.error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
            return None
        return repo

    # -- dispatch -------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802
        self.route("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self.route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.route("PUT")

    def route(self, method: str) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        with self.state.lock:
            self.state.requests.append(f"{method} {path}")
        parts = path.strip("/").split("/")
        try:
            if path == "/api/whoami-v2":
                return self.whoami()
            if path == "/api/validate-yaml":
                self.body()
                return self.reply(200, {"errors": [], "warnings": []})
            if path == "/api/repos/create" and method == "POST":
                return self.create_repo()
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                return self.api_models(method, "/".join(parts[2:4]), parts[4:], query)
            if parts[0] == "_lfs" and method == "PUT":
                self.state.lfs[parts[1]] = self.body()
                return self.reply(200, {})
            if len(parts) >= 3 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                return self.lfs_batch()
            if len(parts) >= 5 and parts[2] == "resolve":
                return self.resolve_file(method, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            return self.error(404, "NotFound", f"no route for {method} {path}")
        except BrokenPipeError:
            return None

    # -- endpoints ------------------------------------------------------------------------------
    def whoami(self) -> None:
        if not self.authorized():
            return self.error(401, "Unauthorized", "Invalid credentials in Authorization header")
        return self.reply(200, {"name": "tester", "type": "user", "orgs": [], "auth": {"type": "access_token"}})

    def create_repo(self) -> None:
        payload = json.loads(self.body() or b"{}")
        if not self.authorized():
            return self.error(401, "Unauthorized", "Invalid credentials in Authorization header")
        repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        url = f"{self.server.endpoint}/{repo_id}"
        if repo_id in self.state.repos:
            return self.reply(409, {"error": "You already created this model repo", "url": url})
        repo = Repo(private=bool(payload.get("private")) or payload.get("visibility") == "private")
        self.state.commit(
            repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}, "initial commit"
        )
        self.state.repos[repo_id] = repo
        return self.reply(200, {"url": url, "name": repo_id, "id": repo_id})

    def api_models(self, method: str, repo_id: str, rest: list[str], query: dict) -> None:
        repo = self.find_repo(repo_id)
        if repo is None:
            return None
        action = rest[0] if rest else "info"
        if action in ("info", "revision"):
            revision = unquote(rest[1]) if len(rest) > 1 else "main"
            sha = repo.resolve(revision)
            if sha is None:
                return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = repo.commits[sha]
            return self.reply(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": repo.private,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                    "tags": [],
                },
            )
        if action == "tree":
            sha = repo.resolve(unquote(rest[1]))
            if sha is None:
                return self.error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
            prefix = "/".join(rest[2:])
            return self.reply(200, self.tree(repo.commits[sha], prefix, "recursive" in query))
        if action == "refs":
            return self.reply(
                200,
                {
                    "branches": [
                        {"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()
                    ],
                    "tags": [],
                    "converts": [],
                },
            )
        if not self.authorized():
            self.body()
            return self.error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if action == "preupload":
            files = json.loads(self.body())["files"]
            return self.reply(
                200,
                {
                    "files": [
                        {
                            "path": f["path"],
                            "shouldIgnore": False,
                            "uploadMode": "lfs" if f["size"] >= LFS_THRESHOLD else "regular",
                        }
                        for f in files
                    ],
                    "commitOid": repo.branches.get("main"),
                },
            )
        if action == "branch" and method == "POST":
            payload = json.loads(self.body() or b"{}")
            branch = unquote("/".join(rest[1:]))
            if branch in repo.branches:
                return self.error(409, "Conflict", f"Branch {branch} already exists")
            start = repo.resolve(payload.get("startingPoint") or "main")
            repo.branches[branch] = start
            return self.reply(200, {})
        if action == "commit" and method == "POST":
            return self.create_commit(repo, repo_id, unquote("/".join(rest[1:])))
        return self.error(404, "NotFound", f"no route for {method} {action}")

    @staticmethod
    def tree(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
        entries, folders = [], set()
        for path, data in sorted(files.items()):
            if prefix and not path.startswith(prefix.rstrip("/") + "/"):
                continue
            relative = path[len(prefix.rstrip("/")) + 1 :] if prefix else path
            if "/" in relative and not recursive:
                folders.add(path[: len(path) - len(relative)] + relative.split("/")[0])
                continue
            for i in range(relative.count("/")):
                folders.add("/".join(path.split("/")[: path.count("/") - relative.count("/") + i + 1]))
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_oid(data)}
            if len(data) >= LFS_THRESHOLD:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return [
            {"type": "directory", "path": f, "oid": git_blob_oid(f.encode()), "size": 0} for f in sorted(folders)
        ] + entries

    def create_commit(self, repo: Repo, repo_id: str, branch: str) -> None:
        lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
        if branch not in repo.branches:
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        with self.state.lock:
            if self.state.fail_next_commits > 0:
                self.state.fail_next_commits -= 1
                return self.error(500, "InternalError", "simulated server failure during commit")
        files = dict(repo.commits[repo.branches[branch]])
        summary = "commit"
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                summary = value.get("summary", summary)
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return self.error(400, "BadRequest", f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = self.state.lfs[value["oid"]]
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
        sha = self.state.commit(repo, branch, files, summary)
        return self.reply(
            200,
            {
                "commitUrl": f"{self.server.endpoint}/{repo_id}/commit/{sha}",
                "commitOid": sha,
                "commitMessage": summary,
                "pullRequestUrl": None,
            },
        )

    def lfs_batch(self) -> None:
        payload = json.loads(self.body())
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {"upload": {"href": f"{self.server.endpoint}/_lfs/{obj['oid']}", "header": {}}}
            objects.append(entry)
        return self.reply(
            200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
        )

    def resolve_file(self, method: str, repo_id: str, revision: str, path: str) -> None:
        head = method == "HEAD"
        repo = self.find_repo(repo_id, head=head)
        if repo is None:
            return None
        sha = repo.resolve(unquote(revision))
        if sha is None:
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        data = repo.commits[sha].get(path)
        if data is None:
            return self.error(404, "EntryNotFound", f"{path} does not exist at {revision}", head=head)
        etag = hashlib.sha256(data).hexdigest() if len(data) >= LFS_THRESHOLD else git_blob_oid(data)
        return self.reply(200, data, {"X-Repo-Commit": sha, "ETag": f'"{etag}"'}, head=head)


class HubServer(ThreadingHTTPServer):
    """The server; ``endpoint`` is its base URL."""

    daemon_threads = True

    def __init__(self, token: str = "hf_test_token") -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.state = HubState(token)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> HubServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self
