"""A small offline stand-in for the Hugging Face Hub HTTP API (stdlib only), used by the tests.

It answers the calls the unmodified `huggingface_hub` 2.x client (and `transformers` on top of it) makes for
create_repo, create_commit/upload_folder/push_to_hub, model_info, list_repo_tree, list_repo_commits and
hf_hub_download/from_pretrained. Every file is committed as a "regular" git blob (never LFS/Xet), so the
whole content travels base64-encoded inside the NDJSON commit payload.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKEN = "hf_test_token_ABC123"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"  # what a new Hub repo starts with
# Words that follow "<namespace>/<name>" in API urls; used to tell a bare repo name from a namespaced one.
_ACTIONS = {"revision", "tree", "preupload", "commit", "commits", "branch", "resolve"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    message: str = ""
    date: str = ""


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> head commit oid
    commits: dict[str, Commit] = field(default_factory=dict)  # oid -> commit


class HubError(Exception):
    """An HTTP error answered like the Hub: status, X-Error-Code header, {"error": message} body."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class LocalHub:
    """In-memory Hub on 127.0.0.1 with real commit history, token auth and fault injection."""

    def __init__(self, port: int = 0, token: str = DEFAULT_TOKEN, user: str = "test-user"):
        self.port, self.token, self.user = port, token, user
        self.reject_repo_names: set[str] = set()  # bare names or full ids the "Hub" refuses (400)
        self.stats: Counter[str] = Counter()  # requests per endpoint name, e.g. stats["commit"]
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every request
        self.repos: dict[tuple[str, str], Repo] = {}
        self._faults: list[tuple[str, int]] = []  # pending commit faults: ("fail", status) or ("drop", 0)
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None

    # ----- lifecycle -----
    def start(self) -> LocalHub:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, name="local-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ----- fault injection and assertions -----
    def fail_next_commit(self, status: int = 500) -> None:
        """The next commit request is answered with `status` and changes nothing."""
        self._faults.append(("fail", status))

    def drop_connection_on_next_commit(self) -> None:
        """The next commit request is read, then its socket is closed without any response."""
        self._faults.append(("drop", 0))

    def reset(self) -> None:
        """Forget every repo, pending fault, refused name and counter."""
        with self._lock:
            for collection in (self.repos, self._faults, self.reject_repo_names, self.stats, self.requests):
                collection.clear()

    def full_id(self, repo_id: str) -> str:
        return repo_id if "/" in repo_id else f"{self.user}/{repo_id}"

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        found = self.repos.get((repo_type or "model", self.full_id(repo_id)))
        if found is None:
            raise HubError(404, f"Repository Not Found: {repo_id}", "RepoNotFound")
        return found

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commit history of `revision`, newest first (the initial commit is last)."""
        repo = self.repo(repo_id, repo_type)
        oid: str | None = self._resolve(repo, revision).oid
        history = []
        while oid is not None:
            history.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return history

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        return dict(self._resolve(self.repo(repo_id, repo_type), revision).files)

    def seed(
        self, repo_id: str, files: dict[str, bytes], repo_type: str = "model", title: str = "seed"
    ) -> str:
        """Create the repo if needed and commit `files` on main without HTTP; returns the commit oid."""
        with self._lock:
            repo_id = self.full_id(repo_id)
            if (repo_type, repo_id) not in self.repos:
                self._create(repo_type, repo_id, private=False)
            repo = self.repos[(repo_type, repo_id)]
            merged = {**self._resolve(repo, "main").files, **files}
            return self._commit(repo, "main", merged, title).oid

    # ----- repository state -----
    def _create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private)
        self.repos[(repo_type, repo_id)] = repo
        self._commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")  # as the Hub does
        return repo

    def _commit(
        self, repo: Repo, branch: str, files: dict[str, bytes], title: str, message: str = ""
    ) -> Commit:
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}|{parent}|{title}|{next(self._counter)}|{time.time_ns()}".encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), parent, files, title, message, _now())
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision, revision)
        if oid not in repo.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _url_of(self, repo: Repo) -> str:
        return f"{self.url}/{_PREFIX[repo.repo_type]}{repo.repo_id}"


def _entry(path: str, files: dict[str, bytes]) -> dict:
    """Tree/paths-info entry of a file or a folder (a folder's oid hashes its content ids)."""
    if path in files:
        return {"type": "file", "oid": git_blob_sha1(files[path]), "size": len(files[path]), "path": path}
    inside = sorted(p for p in files if p.startswith(path + "/"))
    oid = hashlib.sha1("\n".join(p + git_blob_sha1(files[p]) for p in inside).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def _apply_operations(files: dict[str, bytes], lines: list[dict]) -> dict[str, bytes]:
    """New file map after all NDJSON operations; raises HubError (and changes nothing) on any bad one."""
    new = dict(files)
    for line in lines:
        key, value = line.get("key"), line.get("value") or {}
        path = str(value.get("path", "")).strip("/")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
            new[path] = base64.b64decode(value["content"])
        elif key == "deletedFile":
            if new.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            inside = [p for p in new if p.startswith(path + "/")]
            if not inside:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in inside:
                del new[p]
        elif key == "lfsFile":
            raise HubError(400, f"LFS file {path} was never uploaded: the local Hub takes regular files only")
        else:
            raise HubError(400, f"Unknown commit operation key {key!r}")
    return new


Answer = tuple[int, object, dict]  # (status, JSON-able payload or raw bytes, extra headers)


class _Dropped(Exception):
    """Raised inside a handler to close the socket without answering."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # a stalled client cannot pin a server thread forever
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args) -> None:  # silence the per-request stderr lines
        pass

    def do_GET(self) -> None:
        self._handle(self.command)

    do_HEAD = do_POST = do_GET

    # ----- plumbing -----
    def _handle(self, method: str) -> None:
        self.hub: LocalHub = self.server.hub  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        segments = [unquote(s) for s in split.path.strip("/").split("/")]
        self.name = "unknown"  # endpoint name for `stats`, set by the routing code
        try:
            status, payload, headers = self._route(method, segments)
        except HubError as err:
            status, payload = err.status, {"error": err.message}
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
        except _Dropped:
            status, payload, headers = 0, b"", {}  # 0 in the log: no status line is ever sent
        # Bookkeeping first, so a test that sees the response (or the hang-up) also sees the counters.
        self.hub.stats[self.name if status else "commit_dropped"] += 1
        if status >= 400:
            self.hub.stats[f"{self.name}_error"] += 1
        self.hub.requests.append((method, self.path, status))
        # One request per connection: nothing outlives stop(), and a dropped socket never poisons a pool.
        self.close_connection = True
        if not status:
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the server hang up mid-request
            return
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        kind = "application/octet-stream" if isinstance(payload, bytes) else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":  # HEAD answers carry the headers of the GET, never its body
            self.wfile.write(body)

    def _auth(self, write: bool) -> bool:
        """True for the valid token; 401 for a wrong token, or a missing one on writes."""
        header = self.headers.get("Authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else None
        if token is not None and token != self.hub.token:
            raise HubError(401, INVALID_CREDENTIALS)
        if token is None and write:
            raise HubError(401, "You must be authenticated to write: pass a write token (token=...)")
        return token is not None

    def _json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Request body is not JSON: {err}") from err

    def _read_repo(self, repo_type: str, repo_id: str) -> Repo:
        authed = self._auth(write=False)
        repo = self.hub.repo(repo_id, repo_type)
        if repo.private and not authed:
            raise HubError(404, f"Repository Not Found: {repo_id}", "RepoNotFound")
        return repo

    # ----- routing -----
    def _route(self, method: str, seg: list[str]) -> Answer:
        if seg[:2] == ["api", "whoami-v2"] and method == "GET":
            self.name = "whoami"
            if not self._auth(write=False):
                raise HubError(401, INVALID_CREDENTIALS)
            auth = {"type": "access_token", "accessToken": {"displayName": "local-test", "role": "write"}}
            return (
                200,
                {"type": "user", "name": self.hub.user, "fullname": "Test User", "orgs": [], "auth": auth},
                {},
            )
        if seg[:2] == ["api", "validate-yaml"] and method == "POST":
            self.name = "validate_yaml"  # no YAML parser in the stdlib: every card is accepted
            return 200, {"errors": [], "warnings": []}, {}
        if seg[:3] == ["api", "repos", "create"] and method == "POST":
            self.name = "create_repo"
            return self._create_repo()
        if len(seg) >= 3 and seg[0] == "api" and seg[1] in ("models", "datasets", "spaces"):
            repo_id, rest = self._split_repo(seg[2:])
            action = rest[0] if rest else "info"
            # Handlers are named _<method>_<action>: _get_info, _get_tree, _post_commit, ...
            handler = getattr(self, f"_{method.lower()}_{'info' if action == 'revision' else action}", None)
            if handler is not None and (action == "info" or len(rest) >= 2):
                self.name = action
                return handler(seg[1][:-1], repo_id, rest[1:])
        if seg and method in ("GET", "HEAD"):
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(seg[0], "model")
            repo_id, rest = self._split_repo(seg[1:] if repo_type != "model" else seg)
            if rest[:1] == ["resolve"] and len(rest) >= 3:
                self.name = f"resolve_{method.lower()}"
                return self._resolve_file(repo_type, repo_id, rest[1], "/".join(rest[2:]))
        raise HubError(404, f"Not Found: {method} {self.path} is not served by the local Hub")

    @staticmethod
    def _split_repo(seg: list[str]) -> tuple[str, list[str]]:
        """('namespace/name', rest); a bare name is kept bare (LocalHub.repo adds the user namespace)."""
        if len(seg) == 2 or (len(seg) >= 3 and seg[2] in _ACTIONS):
            return "/".join(seg[:2]), seg[2:]
        if len(seg) == 1 or (len(seg) >= 2 and seg[1] in _ACTIONS):
            return seg[0], seg[1:]
        return "/".join(seg[:2]), seg[2:]

    def _create_repo(self) -> Answer:
        hub = self.hub
        self._auth(write=True)
        data = self._json()
        name, repo_type = str(data.get("name") or ""), data.get("type") or "model"
        repo_id = f"{data.get('organization') or hub.user}/{name}"
        if not name or name in hub.reject_repo_names or repo_id in hub.reject_repo_names:
            raise HubError(400, f"Invalid repository name '{repo_id}': this name is not allowed on the Hub")
        private = bool(data.get("private")) or data.get("visibility") == "private"
        with hub._lock:
            if (repo_type, repo_id) in hub.repos:  # exist_ok=True still needs the url in the 409 body
                url = hub._url_of(hub.repos[(repo_type, repo_id)])
                return 409, {"error": "You already created this repo", "url": url}, {}
            repo = hub._create(repo_type, repo_id, private)
        return 200, {"url": hub._url_of(repo), "name": repo_id, "id": repo_id}, {}

    def _get_info(self, repo_type: str, repo_id: str, rest: list[str]) -> Answer:
        repo = self._read_repo(repo_type, repo_id)
        commit = self.hub._resolve(repo, "/".join(rest) or "main")
        files = sorted(commit.files.items())
        siblings = [{"rfilename": p, "size": len(b), "blobId": git_blob_sha1(b)} for p, b in files]
        info = dict(id=repo.repo_id, author=repo.repo_id.split("/")[0], sha=commit.oid, private=repo.private)
        info.update(lastModified=commit.date, createdAt=commit.date, disabled=False, gated=False, tags=[])
        return 200, {**info, "downloads": 0, "likes": 0, "siblings": siblings}, {}

    def _get_tree(self, repo_type: str, repo_id: str, rest: list[str]) -> Answer:
        files = self.hub._resolve(self._read_repo(repo_type, repo_id), rest[0]).files
        base = "/".join(rest[1:]).strip("/")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = base + "/" if base else ""
        if base and base not in files and not any(p.startswith(prefix) for p in files):
            raise HubError(404, f"Entry not found: {base}", "EntryNotFound")
        paths: set[str] = set()
        for path in (p for p in files if p.startswith(prefix)):
            parts = path[len(prefix) :].split("/")
            paths.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts) if recursive else 1))
        return 200, [_entry(p, files) for p in sorted(paths)], {}  # one page: no Link header

    def _get_commits(self, repo_type: str, repo_id: str, rest: list[str]) -> Answer:
        self._read_repo(repo_type, repo_id)
        history = self.hub.commits(repo_id, "/".join(rest), repo_type)
        authors = [{"user": self.hub.user}]
        items = [
            dict(id=c.oid, title=c.title, message=c.message, date=c.date, authors=authors) for c in history
        ]
        return 200, items, {}  # one page: no Link header

    def _post_preupload(self, repo_type: str, repo_id: str, rest: list[str]) -> Answer:
        """Every file is "regular" (so Xet/LFS never start); "oid" lets the client skip unchanged files."""
        self._auth(write=True)
        repo = self.hub.repo(repo_id, repo_type)
        files = self.hub._resolve(repo, rest[0]).files if rest[0] in repo.branches else {}
        oids = {path: git_blob_sha1(data) for path, data in files.items()}
        asked = [f["path"] for f in self._json().get("files", [])]
        answer = [dict(path=p, uploadMode="regular", shouldIgnore=False, oid=oids.get(p)) for p in asked]
        return 200, {"files": answer}, {}

    def _post_branch(self, repo_type: str, repo_id: str, rest: list[str]) -> Answer:
        self._auth(write=True)
        with self.hub._lock:
            repo = self.hub.repo(repo_id, repo_type)
            if rest[0] in repo.branches:
                raise HubError(409, f"Reference already exists: {rest[0]}")
            repo.branches[rest[0]] = self.hub._resolve(repo, self._json().get("startingPoint") or "main").oid
        return 200, {}, {}

    def _post_commit(self, repo_type: str, repo_id: str, rest: list[str]) -> Answer:
        """Apply every NDJSON operation or none (the new file map is built aside, then swapped in)."""
        hub, branch = self.hub, "/".join(rest)
        self._auth(write=True)
        if self.query.get("create_pr"):
            raise HubError(400, "create_pr is not supported by the local Hub: commit to a branch instead")
        with hub._lock:
            repo = hub.repo(repo_id, repo_type)
            if hub._faults:
                kind, status = hub._faults.pop(0)
                if kind == "drop":
                    raise _Dropped()
                raise HubError(status, f"Injected failure: commit answered with HTTP {status}")
            try:
                lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
            except json.JSONDecodeError as err:
                raise HubError(400, f"Commit payload is not NDJSON: {err}") from err
            header = next((line["value"] for line in lines if line.get("key") == "header"), None)
            if header is None:
                raise HubError(400, "Commit payload has no header line")
            head = hub._resolve(repo, branch)
            if branch not in repo.branches:
                raise HubError(400, f"Cannot commit to {branch}: it is not a branch")
            if header.get("parentCommit") and header["parentCommit"] != head.oid:
                raise HubError(412, f"A commit has happened since. Refresh and retry (head {head.oid})")
            new_files = _apply_operations(head.files, [line for line in lines if line.get("key") != "header"])
            title, message = header.get("summary", ""), header.get("description", "")
            commit = hub._commit(repo, branch, new_files, title, message)
        url = f"{hub._url_of(repo)}/commit/{commit.oid}"
        return 200, {"success": True, "commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": None}, {}

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str) -> Answer:
        """File bytes with the headers hf_hub_download needs: X-Repo-Commit and ETag (the git blob id)."""
        commit = self.hub._resolve(self._read_repo(repo_type, repo_id), revision)
        if path not in commit.files:  # X-Repo-Commit lets the client cache the miss (.no_exist)
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        return 200, data, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_sha1(data)}"'}
