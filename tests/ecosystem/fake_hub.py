"""A local stand-in for the Hugging Face hub's HTTP API, enough for `huggingface_hub` to list and
download repositories (`HfApi.list_repo_files`, `snapshot_download`), so the real download code
runs in tests without the network. Point `HF_ENDPOINT` at `FakeHub.url`.

Repositories are folders: `<root>/<models|datasets>/<org>/<name>/<revision>/<files>`; every
revision folder is served under its name (e.g. `main`, `v1`) and under a commit hash derived from
it. Requests are recorded in `FakeHub.requests` (method, path).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def commit_of(repo_dir: Path, revision: str) -> str:
    return hashlib.sha1(f"{repo_dir.as_posix()}@{revision}".encode()).hexdigest()


class FakeHub:
    def __init__(self, root: Path):
        self.root = root
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):  # noqa: N802 (http.server's naming)
                hub._serve(self, body=False)

            def do_GET(self):  # noqa: N802
                hub._serve(self, body=True)

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes | Path], *, kind: str = "models",
            revision: str = "main") -> Path:
        folder = self.root / kind / repo_id / revision
        for name, content in files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.read_bytes() if isinstance(content, Path) else content)
        return folder

    # -- request handling ----------------------------------------------------------------
    def _revision_dir(self, kind: str, repo: str, revision: str) -> tuple[Path | None, str]:
        repo_dir = self.root / kind / repo
        if not repo_dir.is_dir():
            return None, "RepoNotFound"
        for folder in repo_dir.iterdir():
            if revision in (folder.name, commit_of(repo_dir, folder.name)):
                return folder, ""
        return None, "RevisionNotFound"

    def _serve(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append((request.command, path))
        parts = path.strip("/").split("/")
        if parts[0] == "api":  # /api/<kind>/<org>/<name>/(revision|tree)/<rev>[/<path>]
            if len(parts) < 6 or parts[4] not in ("revision", "tree"):
                return self._error(request, "NotFound")  # endpoints this fake does not serve
            kind, repo, action, revision = parts[1], "/".join(parts[2:4]), parts[4], parts[5]
            folder, error = self._revision_dir(kind, repo, revision)
            if folder is None:
                return self._error(request, error)
            if action == "revision":
                names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                               if p.is_file())
                payload = {"id": repo, "sha": commit_of(folder.parent, folder.name),
                           "siblings": [{"rfilename": n} for n in names]}
            else:
                recursive = "recursive=true" in urlparse(request.path).query.lower()
                payload = self._tree(folder, "/".join(parts[6:]), recursive)
            return self._send(request, json.dumps(payload).encode(), body,
                              {"Content-Type": "application/json"})
        kind = "models"
        if parts[0] in ("datasets", "spaces"):
            kind, parts = parts[0], parts[1:]
        repo, revision, file = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        folder, error = self._revision_dir(kind, repo, revision)
        if folder is None:
            return self._error(request, error)
        target = folder / file
        if not target.is_file():
            return self._error(request, "EntryNotFound")
        data = target.read_bytes()
        self._send(request, data, body, {
            "X-Repo-Commit": commit_of(folder.parent, folder.name),
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Content-Type": "application/octet-stream"})

    @staticmethod
    def _tree(folder: Path, subpath: str, recursive: bool) -> list[dict]:
        start = folder / subpath if subpath else folder
        entries = sorted(start.rglob("*") if recursive else start.iterdir())
        out = []
        for p in entries:
            name = p.relative_to(folder).as_posix()
            if p.is_dir():
                out.append({"type": "directory", "path": name, "oid": "0" * 40})
            else:
                out.append({"type": "file", "path": name, "size": p.stat().st_size,
                            "oid": hashlib.sha1(p.read_bytes()).hexdigest()})
        return out

    @staticmethod
    def _send(request, data: bytes, body: bool, headers: dict[str, str]) -> None:
        request.send_response(200)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)

    @staticmethod
    def _error(request, code: str) -> None:
        message = json.dumps({"error": code}).encode()
        request.send_response(404)
        request.send_header("X-Error-Code", code)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(message)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(message)
