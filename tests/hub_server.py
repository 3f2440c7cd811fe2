"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for tests of search, download, cancel and resume.

It serves the routes huggingface_hub 2.x calls (point ``HF_ENDPOINT`` at :attr:`HubServer.endpoint`):

* ``GET /api/models?search=…``                         list (``filter``, ``sort``, ``limit`` honoured loosely)
* ``GET /api/{models|datasets}/{id}[/revision/{rev}]`` repository info with ``sha`` and ``siblings`` (sizes, lfs)
* ``GET /api/{models|datasets}/{id}/tree/{rev}[/{path}]`` the tree under ``path`` (``recursive`` honoured, folders
  listed as ``directory`` entries): ``snapshot_download`` and ``HfFileSystem`` list it
* ``HEAD|GET /[datasets/]{id}/resolve/{rev}/{file}``   the bytes, with ``X-Repo-Commit``, ``ETag`` /
  ``X-Linked-Etag`` (sha256 for LFS files, the git blob id otherwise), ``Content-Length`` and ``Range`` support

A file can be served slowly (``slow={name: (chunk_bytes, delay_s)}``) so that a test can cancel mid-transfer; a
gated repository answers 401 with ``X-Error-Code: GatedRepo`` on ``resolve``, as the Hub does. Every request is
logged in :attr:`HubServer.requests` (method, path, Range header), and the body bytes sent for each file in
:attr:`HubServer.sent` (so that a test can check that only a prefix of a file was fetched). Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


@dataclass
class Repo:
    repo_id: str
    files: dict[str, bytes]
    repo_type: str = "model"
    gated: bool = False
    downloads: int = 0
    card_data: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    params: int | None = None
    slow: dict[str, tuple[int, float]] = field(default_factory=dict)  # file -> (chunk bytes, seconds per chunk)
    sha: str = ""

    def __post_init__(self) -> None:
        if not self.sha:
            digest = hashlib.sha1(self.repo_id.encode())
            for name in sorted(self.files):
                digest.update(name.encode() + hashlib.sha256(self.files[name]).digest())
            self.sha = digest.hexdigest()

    def is_lfs(self, name: str) -> bool:
        return name.endswith(LFS_SUFFIXES) or len(self.files[name]) > 1_000_000

    def etag(self, name: str) -> str:
        data = self.files[name]
        if self.is_lfs(name):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()

    def sibling(self, name: str) -> dict:
        out = {"rfilename": name, "size": len(self.files[name]), "blobId": self.etag(name)[:40]}
        if self.is_lfs(name):
            out["lfs"] = {"sha256": self.etag(name), "size": len(self.files[name]), "pointerSize": 134}
        return out

    def tree(self, prefix: str, recursive: bool) -> list[dict] | None:
        """The entries under ``prefix`` (folders first, as the Hub's tree lists them); None when it is no folder."""
        base = prefix.strip("/")
        head = base + "/" if base else ""
        folders: dict[str, None] = {}
        files = []
        for name in sorted(self.files):
            if not name.startswith(head):
                continue
            parts = name[len(head):].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.setdefault(head + "/".join(parts[:depth]), None)
            if recursive or len(parts) == 1:
                files.append(self.tree_entry(name))
        if base and not files and not folders:
            return None
        oid = lambda path: hashlib.sha1(path.encode()).hexdigest()  # noqa: E731
        return [{"type": "directory", "path": d, "oid": oid(d)} for d in folders] + files

    def tree_entry(self, name: str) -> dict:
        out = {"type": "file", "path": name, "size": len(self.files[name]), "oid": self.etag(name)[:40]}
        if self.is_lfs(name):
            out["lfs"] = {"oid": self.etag(name), "size": len(self.files[name]), "pointerSize": 134}
        return out

    def info(self, full: bool = True) -> dict:
        out = {
            "_id": self.sha[:24], "id": self.repo_id, "modelId": self.repo_id, "author": self.repo_id.split("/")[0],
            "sha": self.sha, "private": False, "disabled": False, "gated": "manual" if self.gated else False,
            "downloads": self.downloads, "likes": self.downloads // 10, "tags": ["transformers", "text-generation"],
            "pipeline_tag": "text-generation", "library_name": "transformers",
            "lastModified": "2026-01-02T03:04:05.000Z", "createdAt": "2025-01-02T03:04:05.000Z",
        }
        if self.card_data:
            out["cardData"] = self.card_data
        if self.params:
            out["safetensors"] = {"parameters": {"F32": self.params}, "total": self.params}
        if full:
            out["siblings"] = [self.sibling(n) for n in sorted(self.files)]
            if self.config:
                out["config"] = self.config
        return out


class HubServer:
    """``with HubServer(repos) as hub: os.environ["HF_ENDPOINT"] = hub.endpoint``."""

    def __init__(self, repos: list[Repo]) -> None:
        self.repos = {(r.repo_type, r.repo_id): r for r in repos}
        self.requests: list[tuple[str, str, str | None]] = []
        self.sent: list[tuple[str, int]] = []  # (file path in the URL, body bytes sent)
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def use(self, monkeypatch: object, tmp_path: Path) -> None:
        """Point this process and its children at this server with a fresh Hugging Face cache under ``tmp_path``
        (``monkeypatch`` is pytest's): offline mode off, the studio's settings kept there, never the developer's own
        token."""
        monkeypatch.setenv("HF_ENDPOINT", self.endpoint)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setenv("SFT_STUDIO_CONFIG", str(tmp_path / "config"))
        monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def ranges(self, name: str) -> list[str | None]:
        """The Range headers of the GET requests for files ending in ``name``."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith("/" + name)]

    def bytes_sent(self, name: str) -> int:
        """Body bytes sent for files ending in ``name`` (all requests together)."""
        with self.lock:
            return sum(n for p, n in self.sent if p.endswith("/" + name))


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: object) -> None:  # quiet
        return

    # -- helpers ------------------------------------------------------------------------------------------
    def _json(self, data: object, status: int = 200) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _repo(self, repo_type: str, parts: list[str]) -> Repo | None:
        return self.hub.repos.get((repo_type, "/".join(parts[:2])))

    # -- routes ---------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        with self.hub.lock:
            self.hub.requests.append((self.command, path, self.headers.get("Range")))
        parts = [p for p in path.split("/") if p]
        query = parse_qs(url.query)
        try:
            if parts[:2] == ["api", "models"] and len(parts) == 2:
                return self._list(query)
            if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in ("models", "datasets"):
                return self._api(parts[1][:-1], parts[2:], query)
            repo_type = "dataset" if parts[:1] == ["datasets"] else "model"
            rest = parts[1:] if repo_type == "dataset" else parts
            if len(rest) >= 5 and rest[2] == "resolve":
                return self._resolve(repo_type, rest)
            self._error(404, "EntryNotFound", f"no route {path}")
        except (BrokenPipeError, ConnectionResetError):
            return

    def _list(self, query: dict) -> None:
        search = (query.get("search") or [""])[0].lower()
        limit = int((query.get("limit") or ["50"])[0])
        found = [r for (t, _), r in self.hub.repos.items() if t == "model" and search in r.repo_id.lower()]
        found.sort(key=lambda r: -r.downloads)
        self._json([r.info(full=False) for r in found[:limit]])

    def _api(self, repo_type: str, parts: list[str], query: dict) -> None:
        repo = self._repo(repo_type, parts)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        rest = parts[2:]
        if rest and rest[0] == "tree":
            recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
            entries = repo.tree("/".join(rest[2:]), recursive)
            if entries is None:
                return self._error(404, "EntryNotFound", f"{'/'.join(rest[2:])} does not exist")
            return self._json(entries)
        if rest and rest[0] == "revision" and len(rest) > 1 and rest[1] not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        self._json(repo.info())

    def _resolve(self, repo_type: str, parts: list[str]) -> None:
        repo = self._repo(repo_type, parts)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        revision, name = parts[3], "/".join(parts[4:])
        if revision not in ("main", repo.sha):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        if repo.gated and "authorization" not in {k.lower() for k in self.headers}:
            return self._error(401, "GatedRepo", "Access to this model is restricted. You must be authenticated.")
        if name not in repo.files:
            return self._error(404, "EntryNotFound", f"{name} does not exist")
        data = repo.files[name]
        start, stop = 0, len(data)  # stop: one past the last byte sent
        rng = self.headers.get("Range")
        partial = False
        if rng and rng.startswith("bytes=") and self.command == "GET":
            first, _, last = rng[6:].partition("-")
            start = int(first or 0)
            stop = min(len(data), int(last) + 1) if last else len(data)
            partial = start > 0 or stop < len(data)
        self.send_response(206 if partial else 200)
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("ETag", f'"{repo.etag(name)}"')
        if repo.is_lfs(name):
            self.send_header("X-Linked-Etag", f'"{repo.etag(name)}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(stop - start))
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        chunk, delay = repo.slow.get(name, (1 << 20, 0.0))
        for offset in range(start, stop, chunk):
            piece = data[offset:min(offset + chunk, stop)]
            # counted before it is written: the client may have read the bytes before this thread runs again
            with self.hub.lock:
                self.hub.sent.append((unquote(self.path.split("?", 1)[0]), len(piece)))
            self.wfile.write(piece)
            self.wfile.flush()
            if delay:
                time.sleep(delay)


def model_repo_from_folder(repo_id: str, folder: Path, **kwargs: object) -> Repo:
    """A :class:`Repo` serving every file of a saved model folder (plus a README with a licence)."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    files.setdefault("README.md", (f"---\nlicense: apache-2.0\n---\n# {repo_id}\n\nA tiny test model.\n\n"
                                   "It trains in seconds.\n").encode())
    config = json.loads(files["config.json"]) if "config.json" in files else {}
    return Repo(repo_id, files, config={k: config.get(k) for k in ("model_type", "architectures")},
                card_data={"license": "apache-2.0"}, **kwargs)  # type: ignore[arg-type]
