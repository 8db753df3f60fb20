"""A small, real Hugging Face Hub look-alike on 127.0.0.1 for the hub tests.

It speaks the HTTP that huggingface_hub 1.x uses (read from its source):
``/api/models/{repo}[/revision/{rev}]`` (repo info), ``/api/models/{repo}/tree/{rev}``
(file listing), HEAD/GET ``/{repo}/resolve/{rev}/{path}`` with ETag, X-Repo-Commit
and Content-Length; ``*.safetensors`` are served like LFS files: a 302 carrying
X-Linked-Etag / X-Linked-Size to a "CDN" on another host name (``localhost``), which
the client does not follow for HEAD but downloads from. Uploads: repo creation,
README validation, preupload (every file "regular") and the NDJSON commit.
Every request is recorded so tests can count downloads.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)               # branch/tag -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> files


class FakeHub:
    """Repos in memory, served over HTTP by a background thread."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.blobs: dict[str, bytes] = {}     # sha256 -> LFS content
        self.created: dict[str, dict] = {}    # repo id -> create_repo payload (visibility...)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main",
               tags: tuple[str, ...] = ()) -> str:
        """Add a commit holding exactly ``files``; point ``branch`` and ``tags`` at it."""
        repo = self.repos.setdefault(repo_id, Repo())
        digest = hashlib.sha1(repr((repo_id, len(repo.commits), sorted(files.items()))).encode()).hexdigest()
        repo.commits[digest] = dict(files)
        for name in (branch, *tags):
            repo.refs[name] = digest
        for path, data in files.items():
            if path.endswith(".safetensors"):
                self.blobs[hashlib.sha256(data).hexdigest()] = data
        return digest

    def count(self, method: str, fragment: str) -> int:
        return sum(1 for m, p in self.requests if m == method and fragment in p)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        # -- plumbing --------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(data).encode(), headers)

        def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _repo_rev(self, repo_id: str, rev: str) -> tuple[Repo, str] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            commit = repo.refs.get(rev, rev if rev in repo.commits else None)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return repo, commit

        # -- verbs -----------------------------------------------------------
        def do_HEAD(self) -> None:
            self._route()

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def _route(self) -> None:
            split = urlsplit(self.path)
            hub.requests.append((self.command, split.path))
            parts = split.path.strip("/").split("/")
            query = parse_qs(split.query)
            if parts[:1] == ["lfs-cdn"] and self.command in ("GET", "HEAD"):
                data = hub.blobs.get(parts[1])
                if data is None:
                    return self._send(404)
                return self._send(200, data, {"ETag": f'"{parts[1]}"'}, "application/octet-stream")
            if parts[:2] == ["api", "models"] and self.command == "GET":
                return self._api_get(parts[2:], query)
            if self.command == "POST":
                return self._post(parts)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id, rev, path = "/".join(parts[:2]), unquote(parts[3]), unquote("/".join(parts[4:]))
                return self._resolve(repo_id, rev, path)
            self._send(404)

        def _api_get(self, rest: list[str], query: dict[str, list[str]]) -> None:
            repo_id = "/".join(rest[:2])
            if len(rest) == 2 or (len(rest) == 4 and rest[2] == "revision"):
                found = self._repo_rev(repo_id, unquote(rest[3]) if len(rest) == 4 else "main")
                if found:
                    repo, commit = found
                    siblings = [{"rfilename": p} for p in sorted(repo.commits[commit])]
                    self._json({"id": repo_id, "sha": commit, "private": False, "siblings": siblings})
                return
            if len(rest) >= 4 and rest[2] == "tree":
                found = self._repo_rev(repo_id, unquote(rest[3]))
                if found:
                    repo, commit = found
                    prefix = unquote("/".join(rest[4:]))
                    self._json(_tree(repo.commits[commit], prefix, query.get("recursive", ["false"])[0].lower() == "true"))
                return
            self._send(404)

        def _resolve(self, repo_id: str, rev: str, path: str) -> None:
            found = self._repo_rev(repo_id, rev)
            if not found:
                return
            repo, commit = found
            data = repo.commits[commit].get(path)
            if data is None:
                return self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": commit})
            if path.endswith(".safetensors"):
                sha = hashlib.sha256(data).hexdigest()
                cdn = f"http://localhost:{hub.port}/lfs-cdn/{sha}"
                return self._send(302, b"", {"Location": cdn, "X-Repo-Commit": commit,
                                             "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
            self._send(200, data, {"ETag": f'"{git_blob_id(data)}"', "X-Repo-Commit": commit},
                       "application/octet-stream")

        def _post(self, parts: list[str]) -> None:
            body = self._body()
            if parts == ["api", "repos", "create"]:
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") \
                    else payload["name"]
                if repo_id in hub.repos:
                    message = "You already created this model repo"
                    return self._json({"error": message, "url": f"{hub.url}/{repo_id}"}, 409,
                                      {"X-Error-Code": "RepoExists", "X-Error-Message": message})
                hub.created[repo_id] = payload
                hub.commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs\n"})
                return self._json({"url": f"{hub.url}/{repo_id}"})
            if parts == ["api", "validate-yaml"]:
                return self._json({"errors": [], "warnings": []})
            if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
                files = json.loads(body)["files"]
                return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                              "oid": None} for f in files]})
            if len(parts) == 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
                repo_id, branch = "/".join(parts[2:4]), unquote(parts[5])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found")
                files = dict(repo.commits[repo.refs[branch]]) if branch in repo.refs else {}
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                commit = hub.commit(repo_id, files, branch)
                return self._json({"commitUrl": f"{hub.url}/{repo_id}/commit/{commit}", "commitOid": commit,
                                   "pullRequestUrl": None})
            self._send(404)

    return Handler


def _tree(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
    """Tree entries as the Hub lists them (LFS files carry their sha256)."""
    base = prefix.rstrip("/") + "/" if prefix else ""
    entries: dict[str, dict] = {}
    for path, data in sorted(files.items()):
        if not path.startswith(base):
            continue
        rest = path[len(base):].split("/")
        for depth in range(1, len(rest)):
            folder = base + "/".join(rest[:depth])
            if recursive or depth == 1:
                entries.setdefault(folder, {"type": "directory", "oid": git_blob_id(folder.encode()), "size": 0,
                                            "path": folder})
            if not recursive:
                break
        if recursive or len(rest) == 1:
            entry = {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}
            if path.endswith(".safetensors"):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries[path] = entry
    return list(entries.values())
