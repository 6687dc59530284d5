"""A loopback stand-in for the Hugging Face Hub: the few endpoints huggingface_hub calls to list
and download files (`HF_ENDPOINT=http://127.0.0.1:PORT`), plus plain `/files/NAME` URLs.

- `GET /api/models/OWNER/NAME/revision/REV`: repo info (sha, siblings)
- `GET /api/models/OWNER/NAME/tree/REV[/PATH]?recursive=...`: the file listing with git blob ids,
  and for LFS files their sha256 and size
- `HEAD|GET /OWNER/NAME/resolve/REV/PATH`: the file, with the Hub's headers (X-Repo-Commit, ETag,
  X-Linked-Etag / X-Linked-Size for LFS files) and Range requests

Knobs a test sets: `gated` (repos answering 403 GatedRepo), `corrupt` (paths served with one byte
flipped, same size), `cut` (path -> bytes after which the first GET of it drops the connection).
Every request is recorded in `requests` as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".pth", ".pt", ".safetensors", ".mat", ".bin")


def content(path: str, size: int = 3000) -> bytes:
    """Deterministic bytes standing for a file at `path`."""
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # /files/NAME
    gated: set[str] = field(default_factory=set)
    corrupt: set[str] = field(default_factory=set)
    cut: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def add(self, repo_id: str, paths: dict[str, bytes] | list[str]) -> None:
        if isinstance(paths, list):
            paths = {p: content(f"{repo_id}/{p}") for p in paths}
        self.repos.setdefault(repo_id, {}).update(paths)

    def commit(self, repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def ranges(self, suffix: str) -> list[str | None]:
        """The Range headers of the GETs whose path ends with `suffix`."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith(suffix)]


def _entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                        "pointerSize": 134}  # fmt: skip
    return entry


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/files/"):
            return self._file(path, self.hub.files.get(path.removeprefix("/files/")), body, {})
        if path.startswith("/api/models/"):
            return self._api(path.removeprefix("/api/models/"))
        owner, name, kind, revision, *rest = path.strip("/").split("/") + [""] * 4
        repo_id, filename = f"{owner}/{name}", "/".join(rest).strip("/")
        if self._refused(repo_id):
            return
        data = self.hub.repos[repo_id].get(filename) if kind == "resolve" else None
        if data is None:
            return self._error(404, "EntryNotFound", f"{filename} not in {repo_id}")
        headers = {"X-Repo-Commit": self.hub.commit(repo_id), "ETag": f'"{git_blob_id(data)}"'}
        if filename.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        if filename in self.hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        self._file(filename, data, body, headers)

    def _refused(self, repo_id: str) -> bool:
        if repo_id in self.hub.gated:
            self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted.")
            return True
        if repo_id not in self.hub.repos:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return True
        return False

    def _api(self, rest: str) -> None:
        owner, name, kind, revision, *sub = rest.split("/") + [""] * 4
        repo_id = f"{owner}/{name}"
        if self._refused(repo_id):
            return
        files = self.hub.repos[repo_id]
        if kind == "revision":
            payload = {"id": repo_id, "sha": self.hub.commit(repo_id),
                       "siblings": [{"rfilename": p} for p in files]}  # fmt: skip
        else:
            prefix = "/".join(sub).strip("/")
            payload = [_entry(p, d) for p, d in files.items() if p.startswith(prefix)]
        self._json(payload)

    def _json(self, payload) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, code: str, message: str) -> None:
        raw = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _file(self, key: str, data: bytes | None, body: bool, headers: dict[str, str]) -> None:
        if data is None:
            return self._error(404, "EntryNotFound", f"{key} not found")
        start = 0
        wanted = self.headers.get("Range")
        if wanted and body:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        cut = self.hub.cut.pop(key, None)
        if cut is not None:  # the first GET stops mid-file, as a dropped connection would
            self.wfile.write(data[start:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])


#: Files of the caption encoder's repo: what from_pretrained reads, and a .bin it does not.
GEMMA_FILES = ["config.json", "tokenizer.json", "tokenizer.model", "model.safetensors",
               "pytorch_model.bin"]  # fmt: skip


def released_hub() -> FakeHub:
    """A hub with every released PiD file (checkpoints, teachers, codecs), the caption and RAE
    encoders and pyiqa's declared weights, all as small stand-in files."""
    from pid_bench.metrics import METRICS
    from pid_bench.metrics.weights import IQA_REPO
    from pid_models.caption import GEMMA_ID
    from pid_models.checkpoints import PID_REPO
    from pid_models.codecs import CODEC_FILES, RAE_ENCODERS
    from pid_models.registry import TEACHERS, released_pairs, resolve

    experiments = [resolve(*pair) for pair in released_pairs()] + list(TEACHERS.values())
    codecs = {rel for files in CODEC_FILES.values() for rel in files}
    hub = FakeHub()
    hub.add(PID_REPO, sorted({e.checkpoint_relpath for e in experiments} | codecs))
    hub.add(GEMMA_ID, GEMMA_FILES)
    for repo in RAE_ENCODERS.values():
        hub.add(repo, ["config.json", "model.safetensors"])
    iqa = {w.filename for m in METRICS.values() for w in m.weights if w.loader == "pyiqa"}
    hub.add(IQA_REPO, sorted(iqa))
    return hub


def start(hub: FakeHub) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":  # `python -m tests.hub_server`: serve the released stand-ins
    fake = released_hub()
    server = start(fake)
    print(f"HF_ENDPOINT={fake.url}", flush=True)
    threading.Event().wait()
