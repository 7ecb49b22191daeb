"""A local stand-in for the Hugging Face Hub, enough of its HTTP API for `huggingface_hub`.

It serves repos built from local folders on 127.0.0.1 (port chosen by the OS), so the real
client, pointed at it with HF_ENDPOINT, runs its real code path: repo info at a revision
(siblings with sizes and LFS SHA-256), the tree listing, and `resolve` with the headers the
client reads (X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size, Content-Length), HTTP
Range requests (206), the hub's error codes (RepoNotFound, RevisionNotFound, EntryNotFound,
GatedRepo: 401 without a token, 403 with a wrong one).

Test hooks: `tamper` serves bytes that differ from the advertised LFS hash; `vanished`
files are listed but answer 404 (deleted between the listing and the transfer); `stall_after`
sends the first N bytes of a file on its first full GET and then holds the connection until
`release()` (so a test can kill the client mid-transfer); `requests` records every request
with its Range header.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".bin", ".pth", ".safetensors", ".parquet", ".model")
TOKEN = "hf_fakehub_token"

_INFO = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/revision/([^/]+)$")
_TREE = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FakeRepo:
    """One hub repo at one commit, its files read from a local folder."""

    repo_id: str
    repo_type: str  # "model" or "dataset"
    folder: Path
    commit: str
    gated: bool = False
    files: dict[str, Path] = field(init=False)
    hashes: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.files = {
            p.relative_to(self.folder).as_posix(): p
            for p in sorted(self.folder.rglob("*"))
            if p.is_file()
        }
        self.hashes = {name: _sha256(path) for name, path in self.files.items()}

    def is_lfs(self, name: str) -> bool:
        return name.endswith(LFS_SUFFIXES)

    def etag(self, name: str) -> str:
        """LFS files: their SHA-256 (as the hub); others: a git blob id."""
        if self.is_lfs(name):
            return self.hashes[name]
        data = self.files[name].read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def sibling(self, name: str) -> dict:
        size = self.files[name].stat().st_size
        entry: dict = {"rfilename": name, "size": size, "blobId": self.etag(name)}
        if self.is_lfs(name):
            entry["lfs"] = {"size": size, "sha256": self.hashes[name], "pointerSize": 134}
        return entry

    def tree_entry(self, name: str) -> dict:
        size = self.files[name].stat().st_size
        entry: dict = {"type": "file", "path": name, "size": size, "oid": self.etag(name)}
        if self.is_lfs(name):
            entry["lfs"] = {"oid": self.hashes[name], "size": size, "pointerSize": 134}
        return entry


class FakeHub:
    """`with FakeHub([...]) as hub:` serves the repos at `hub.endpoint` until the block ends."""

    def __init__(self, repos: list[FakeRepo]) -> None:
        self.repos = {(r.repo_type, r.repo_id): r for r in repos}
        self.tamper: set[str] = set()  # repo paths served with one byte flipped
        self.vanished: set[str] = set()  # listed by the repo info, 404 on resolve
        self.stall_after: dict[str, int] = {}  # repo path -> bytes sent before holding
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def release(self) -> None:
        """Let stalled transfers go on (their clients may be dead by then)."""
        self._released.set()

    def ranges(self, name: str) -> list[str | None]:
        """The Range header of every GET of a repo file (None for a full transfer)."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + name)]

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, head=True)

            def do_GET(self) -> None:
                hub._serve(self, head=False)

        return Handler

    # ------------------------------------------------------------------ dispatch

    def _serve(self, req: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlsplit(req.path).path)
        with self._lock:
            self.requests.append((req.command, path, req.headers.get("Range")))
        if m := _INFO.match(path):
            self._info(req, m[1].removesuffix("s"), m[2], m[3])
        elif m := _TREE.match(path):
            self._tree(req, m[1].removesuffix("s"), m[2], m[3], m[4] or "")
        elif m := _RESOLVE.match(path):
            self._resolve(req, "dataset" if m[1] else "model", m[2], m[3], m[4], head=head)
        else:
            self._error(req, 404, "RepoNotFound", "no such route")

    def _repo(self, req, repo_type: str, repo_id: str, revision: str) -> FakeRepo | None:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(req, 401, "RepoNotFound", "Repository not found")
            return None
        if revision not in ("main", repo.commit):
            self._error(req, 404, "RevisionNotFound", f"Invalid rev id: {revision}", repo)
            return None
        return repo

    def _info(self, req, repo_type: str, repo_id: str, revision: str) -> None:
        if (repo := self._repo(req, repo_type, repo_id, revision)) is None:
            return
        body = {
            "id": repo.repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "siblings": [repo.sibling(name) for name in repo.files],
        }
        self._json(req, body)

    def _tree(self, req, repo_type: str, repo_id: str, revision: str, folder: str) -> None:
        if (repo := self._repo(req, repo_type, repo_id, revision)) is None:
            return
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries = [repo.tree_entry(n) for n in repo.files if n.startswith(prefix)]
        self._json(req, entries)

    def _authorised(self, req, repo: FakeRepo) -> bool:
        if not repo.gated:
            return True
        auth = req.headers.get("Authorization")
        if auth == f"Bearer {TOKEN}":
            return True
        status = 403 if auth else 401
        self._error(req, status, "GatedRepo", f"Access to model {repo.repo_id} is restricted", repo)
        return False

    def _resolve(self, req, repo_type, repo_id, revision, name, *, head: bool) -> None:
        if (repo := self._repo(req, repo_type, repo_id, revision)) is None:
            return
        if not self._authorised(req, repo):
            return
        if name not in repo.files or name in self.vanished:
            self._error(req, 404, "EntryNotFound", f"{name} does not exist", repo)
            return
        data = repo.files[name].read_bytes()
        if name in self.tamper:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        size = len(data)
        start = 0
        range_header = req.headers.get("Range")
        if range_header and (m := re.fullmatch(r"bytes=(\d+)-", range_header)):
            start = int(m[1])
        status = 206 if start else 200
        req.send_response(status)
        req.send_header("X-Repo-Commit", repo.commit)
        req.send_header("ETag", f'"{repo.etag(name)}"')
        if repo.is_lfs(name):
            req.send_header("X-Linked-Etag", f'"{repo.hashes[name]}"')
            req.send_header("X-Linked-Size", str(size))
        req.send_header("Accept-Ranges", "bytes")
        req.send_header("Content-Length", str(size - start))
        if start:
            req.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        req.end_headers()
        if head:
            return
        stall = self.stall_after.pop(name, None) if not start else None
        if stall is None:
            req.wfile.write(data[start:])
            return
        req.wfile.write(data[:stall])
        req.wfile.flush()
        self._released.wait(timeout=60)
        req.close_connection = True

    # ------------------------------------------------------------------ responses

    def _json(self, req, body) -> None:
        data = json.dumps(body).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)

    def _error(self, req, status: int, code: str, message: str, repo=None) -> None:
        data = json.dumps({"error": message}).encode()
        req.send_response(status)
        req.send_header("X-Error-Code", code)
        req.send_header("X-Error-Message", message)
        if repo is not None:
            req.send_header("X-Repo-Commit", repo.commit)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)


def hub_env(hub: FakeHub, home: Path, *, token: str | None = TOKEN) -> dict[str, str]:
    """Environment that points a `wmtp` subprocess at the fake hub and nowhere else."""
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HF_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
    }
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home),
        HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_ETAG_TIMEOUT="5",
        HF_HUB_DOWNLOAD_TIMEOUT="5",
        NO_PROXY="127.0.0.1,localhost",
        COLUMNS="200",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env
