"""A local, in-memory stand-in for the Hugging Face Hub HTTP API, for tests.

``LocalHubServer`` speaks enough of the Hub protocol for the *real* ``huggingface_hub``
client (2.x, legacy LFS transfer path) and ``transformers`` to do full round trips against
``http://127.0.0.1:<port>``: create a repo, ``upload_folder`` (regular files inline, LFS
files through the LFS batch API + PUT), list files, ``hf_hub_download`` /
``snapshot_download`` / ``from_pretrained`` at a branch, a PR ref, a tag or a pinned commit
sha, open PRs with ``create_pr=True``. Standard library only; the real Hub is never contacted.

Environment: read this before using it
--------------------------------------
``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_DISABLE_XET`` **once, at
import time** (``huggingface_hub.constants``). The client must therefore see::

    HF_ENDPOINT=<hub.endpoint>     # every call goes to this server
    HF_HOME=<a temp dir>           # cache + token file, isolated from ~/.cache/huggingface
    HF_HUB_DISABLE_XET=1           # hf_xet is installed; Xet would bypass the LFS endpoints

*before* ``huggingface_hub`` (or ``transformers``, which imports it) is first imported. Inside a
pytest process something has usually imported it already, so the supported way is to run the
client in a subprocess: ``HubClient.run(code)`` / the ``hf_client`` fixture do that, with an
environment built by ``LocalHubServer.client_env()`` (which also sets ``HF_TOKEN``, disables
telemetry/progress bars and drops offline/cache env vars that would leak in). If you control a
fresh interpreter yourself, ``os.environ.update(hub.client_env(hf_home))`` before the first
import works too.

Usage
-----
::

    from hub_server import LocalHubServer, HubClient

    with LocalHubServer() as hub:
        client = HubClient(hub, hf_home=tmp_path / "hf_home")
        out = client.run_json('''
            from huggingface_hub import HfApi
            api = HfApi()
            api.create_repo("alice/tiny", exist_ok=True)
            info = api.upload_folder(repo_id="alice/tiny", folder_path=FOLDER)
            emit({"oid": info.oid, "files": api.list_repo_files("alice/tiny")})
        ''', FOLDER=str(folder))
        assert hub.commit_count("alice/tiny") == 2  # "initial commit" + upload
        assert hub.files("alice/tiny")["config.json"] == b"{}"

Pytest fixtures (import them into your test module or conftest):
``from hub_server import local_hub, hf_client``.
``local_hub`` yields a running ``LocalHubServer`` (and fails the test at teardown if the
server hit an internal error); ``hf_client`` yields a ``HubClient`` bound to it with a per-test
``HF_HOME``.

Snippets run by ``HubClient`` get a prelude defining ``emit(obj)`` (prints one JSON line that
``run_json`` collects) and the keyword arguments given to ``run``/``run_json`` as globals.

Server-side helpers (no client needed): ``create_repo``, ``commit_files`` (seed a repo),
``files``/``file_bytes``/``file_info``, ``head``, ``commit_count``, ``commits``, ``refs``,
``lfs_bytes_uploaded``, ``lfs_put_count``, ``downloads``, ``requests``,
``authorizations``, ``fail_next(...)`` / ``fail_next_lfs_put``, ``lfs_put_delay`` / ``lfs_put_started``.

Protocol notes (what the real client relies on)
-----------------------------------------------
* Every revision in a URL is ``quote(rev, safe="")``-encoded (``refs%2Fpr%2F1``): the router
  splits the raw path on ``/`` *before* unquoting.
* ``preupload`` decides LFS vs regular (the client has no rules of its own): LFS if the path
  matches a ``filter=lfs`` pattern of the repo's ``.gitattributes`` (the initial commit ships
  the Hub's default one, incl. ``*.safetensors``/``*.bin``/``*.pt``), or the file is
  ``>= lfs_threshold`` bytes (default 1 MiB), or its 512-byte sample contains a NUL byte
  (binary). The returned ``oid`` of an existing file is what lets the client drop unchanged
  files: sha256 of the content for LFS files, git blob sha1 for regular files.
* The client asks the LFS batch endpoint for *every* LFS file, even unchanged ones: objects
  already stored get no ``actions`` and are not re-sent.
* ``http_backoff`` retries 408/429/5xx (sleeping 1, 2, 4, 8, 8 s), so a one-shot 5xx on an LFS
  PUT is invisible to the caller. ``fail_next_lfs_put = True`` therefore answers 403 (what an
  expired presigned URL gives), which the client does not retry.
* ``hf_hub_download`` needs ``X-Repo-Commit`` and an ``ETag`` on HEAD (``X-Linked-Etag`` /
  ``X-Linked-Size`` for LFS files: the sha256 becomes the cache blob name), and
  ``X-Error-Code: EntryNotFound`` + ``X-Repo-Commit`` on 404s so it can cache the absence.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import fnmatch
import hashlib
import itertools
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

try:  # optional: only used to validate README.md metadata
    import yaml  # type: ignore
except ImportError:  # pragma: no cover
    yaml = None

__all__ = [
    "DEFAULT_GITATTRIBUTES",
    "DEFAULT_TOKEN",
    "HubClient",
    "HubClientError",
    "LocalHubServer",
    "RequestRecord",
    "hf_client",
    "local_hub",
]

DEFAULT_TOKEN = "hf_localTestToken0123456789"
DEFAULT_USER = "local-user"

# Trimmed version of the .gitattributes the Hub puts in every new model repo.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in [
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
        "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
        "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
        "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
        "*.zst", "*tfevents*",
    ]
)

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_API_ACTIONS = {"revision", "preupload", "commit", "tree", "paths-info", "refs", "commits", "branch", "tag", "settings"}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX_PREFIX = re.compile(r"^[0-9a-f]{5,40}$")


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def _iso(ts: _dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A file in a commit snapshot. LFS files keep only their sha256; bytes live in the repo's LFS store."""

    size: int
    blob_id: str  # git blob sha1 of the content (regular) or of the LFS pointer (LFS)
    content: bytes | None = None
    lfs_oid: str | None = None

    @property
    def is_lfs(self) -> bool:
        return self.lfs_oid is not None

    @property
    def preupload_oid(self) -> str:
        # What `CommitOperationAdd._local_oid` computes: sha256 for LFS, git sha1 for regular files.
        return self.lfs_oid if self.lfs_oid is not None else self.blob_id

    @classmethod
    def regular(cls, data: bytes) -> "_Entry":
        return cls(size=len(data), blob_id=_git_blob_sha1(data), content=bytes(data))

    @classmethod
    def lfs(cls, oid: str, size: int) -> "_Entry":
        return cls(size=size, blob_id=_git_blob_sha1(_lfs_pointer(oid, size)), lfs_oid=oid)


@dataclasses.dataclass
class _Commit:
    oid: str
    parents: list[str]
    title: str
    message: str
    author: str
    date: _dt.datetime
    files: dict[str, _Entry]


@dataclasses.dataclass
class _PullRequest:
    num: int
    title: str
    target_branch: str
    status: str = "open"

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"


@dataclasses.dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: _dt.datetime
    commits: dict[str, _Commit] = dataclasses.field(default_factory=dict)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    pulls: dict[int, _PullRequest] = dataclasses.field(default_factory=dict)
    pr_heads: dict[int, str] = dataclasses.field(default_factory=dict)
    lfs_objects: dict[str, bytes] = dataclasses.field(default_factory=dict)
    next_discussion: int = 1

    @property
    def url_path(self) -> str:
        return f"{_URL_PREFIX[self.repo_type]}{self.repo_id}"

    def resolve(self, revision: str) -> str | None:
        """Branch, tag, refs/heads/x, refs/tags/x, refs/pr/N, full sha or unique sha prefix (>= 7) -> commit sha."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if revision.startswith("refs/heads/") and revision[11:] in self.branches:
            return self.branches[revision[11:]]
        if revision.startswith("refs/tags/") and revision[10:] in self.tags:
            return self.tags[revision[10:]]
        m = re.fullmatch(r"refs/pr/(\d+)", revision)
        if m and int(m.group(1)) in self.pr_heads:
            return self.pr_heads[int(m.group(1))]
        rev = revision.lower()
        if rev in self.commits:
            return rev
        if len(rev) >= 7 and _HEX_PREFIX.match(rev):
            matches = [oid for oid in self.commits if oid.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        return None

    def history(self, oid: str) -> list[_Commit]:
        """First-parent history, newest first."""
        out = []
        while oid:
            commit = self.commits[oid]
            out.append(commit)
            oid = commit.parents[0] if commit.parents else ""
        return out


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # raw (still percent-encoded) path, without the query string
    query: str
    authorization: str | None
    user_agent: str | None


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})  # extra JSON fields of the error body


def _not_found_repo(repo_id: str) -> _HttpError:
    return _HttpError(404, f"Repository not found: {repo_id}", "RepoNotFound")


def _not_found_revision(revision: str) -> _HttpError:
    return _HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def _not_found_entry(path: str, commit: str | None = None) -> _HttpError:
    headers = {"X-Repo-Commit": commit} if commit else {}
    return _HttpError(404, f"Entry not found: {path}", "EntryNotFound", headers)


# --------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------


class LocalHubServer:
    """In-memory Hub. Use as a context manager (or call ``start()`` / ``stop()``).

    Args:
        username: name returned by ``whoami`` and namespace of repos created without one.
        lfs_threshold: files at least this big are uploaded through LFS (on top of the
            ``.gitattributes`` patterns and binary detection).
        valid_tokens: if given, only these bearer tokens are accepted (others get 401);
            by default any token is accepted.
        require_token_for_writes: creating repos, preupload, LFS batch and commits need an
            ``Authorization`` header (as on the Hub).
        binary_as_lfs: treat files whose first 512 bytes contain a NUL byte as LFS (as the Hub does).
    """

    def __init__(
        self,
        *,
        username: str = DEFAULT_USER,
        lfs_threshold: int = 1024 * 1024,
        valid_tokens: Iterable[str] | None = None,
        require_token_for_writes: bool = True,
        binary_as_lfs: bool = True,
        host: str = "127.0.0.1",
    ):
        self.username = username
        self.lfs_threshold = lfs_threshold
        self.valid_tokens = set(valid_tokens) if valid_tokens is not None else None
        self.require_token_for_writes = require_token_for_writes
        self.binary_as_lfs = binary_as_lfs
        self._host = host
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._uploads: dict[str, tuple[tuple[str, str], str, int]] = {}  # upload id -> (repo key, oid, size)
        self._failures: dict[str, list[tuple[int, str]]] = {}
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Observability (read these from tests)
        self.requests: list[RequestRecord] = []
        self.internal_errors: list[str] = []
        self.lfs_bytes_uploaded = 0  # bytes received by successful LFS PUTs (what the client re-sent, too)
        self.lfs_put_count = 0  # PUT attempts, including failed/injected ones
        self.lfs_put_started = threading.Event()  # set when an LFS PUT arrives (a test can interrupt the upload then)
        self.lfs_put_delay = 0.0  # seconds every LFS PUT waits before it is answered (a slow upload)
        self.lfs_objects_uploaded: list[tuple[str, str]] = []  # (repo_id, sha256) per successful PUT
        self.downloads: list[tuple[str, str, str]] = []  # (repo_id, commit sha, path) per GET /resolve
        self.commits_created = 0  # commits created through the API (all repos, all refs)
        self.yaml_validations = 0
        self.injected_failure_status = 403

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "LocalHubServer":
        if self._httpd is not None:
            return self
        handler = type("_BoundHubHandler", (_HubHandler,), {"hub": self})
        httpd = ThreadingHTTPServer((self._host, 0), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="local-hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "LocalHubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("LocalHubServer is not started")
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://{self._host}:{self.port}"

    def client_env(
        self,
        hf_home: str | os.PathLike,
        *,
        token: str | None = DEFAULT_TOKEN,
        base: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Environment for a client process talking to this server (see module docstring).

        ``token=None`` removes ``HF_TOKEN`` (anonymous client; HF_HOME holds no token file).
        """
        env = dict(os.environ if base is None else base)
        for var in (
            "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGINGFACE_CO_STAGING",
            "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE",
            "HF_TOKEN_PATH", "HF_XET_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE",
            "HF_HUB_ENABLE_HF_TRANSFER", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN",
        ):
            env.pop(var, None)
        no_proxy = ",".join(p for p in (env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1", "localhost") if p)
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HOME=str(hf_home),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_SYMLINKS_WARNING="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_HUB_ETAG_TIMEOUT="30",
            HF_HUB_DOWNLOAD_TIMEOUT="60",
            TRANSFORMERS_VERBOSITY="error",
            TOKENIZERS_PARALLELISM="false",
            NO_PROXY=no_proxy,
            no_proxy=no_proxy,
        )
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    # ---------------------------------------------------------------- failure injection
    def fail_next(self, operation: str, *, status: int | None = None, message: str | None = None, times: int = 1) -> None:
        """Make the next ``times`` requests of ``operation`` fail with ``status`` (after the body is read).

        Operations: ``lfs_put``, ``lfs_batch``, ``lfs_verify``, ``preupload``, ``commit``, ``resolve``
        (GET/HEAD of a file), ``create_repo``, ``repo_info``, ``tree``, ``paths_info``, ``refs``,
        ``commits``, ``whoami``, ``validate_yaml``. Remember the client retries 408/429/5xx
        (``http_backoff``: 1 s, 2 s, 4 s... sleeps) on preupload, LFS batch/PUT/verify and HEAD.
        """
        status = self.injected_failure_status if status is None else status
        message = message or f"Injected failure ({operation})"
        with self._lock:
            self._failures.setdefault(operation, []).extend([(status, message)] * times)

    @property
    def fail_next_lfs_put(self) -> bool:
        """Set to True to make the next LFS PUT fail (HTTP ``injected_failure_status``, default 403: not retried)."""
        return bool(self._failures.get("lfs_put"))

    @fail_next_lfs_put.setter
    def fail_next_lfs_put(self, value: bool) -> None:
        with self._lock:
            if value:
                self.fail_next("lfs_put")
            else:
                self._failures.pop("lfs_put", None)

    def pending_failures(self, operation: str) -> int:
        return len(self._failures.get(operation, []))

    def _maybe_fail(self, operation: str) -> None:
        with self._lock:
            queue = self._failures.get(operation)
            if not queue:
                return
            status, message = queue.pop(0)
        raise _HttpError(status, message)

    # ---------------------------------------------------------------- server-side helpers
    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False, exist_ok: bool = False) -> str:
        """Create a repo directly (no HTTP) with the Hub's "initial commit" (a .gitattributes). Returns the head sha."""
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                if not exist_ok:
                    raise ValueError(f"{repo_type} repo {repo_id} already exists")
                return self._repos[key].branches["main"]
            now = _now()
            repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=now)
            oid = self._new_commit_oid(repo_id, "initial commit", None)
            files = {".gitattributes": _Entry.regular(DEFAULT_GITATTRIBUTES.encode())}
            repo.commits[oid] = _Commit(oid, [], "initial commit", "", self.username, now, files)
            repo.branches["main"] = oid
            self._repos[key] = repo
            return oid

    def commit_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | None],
        *,
        message: str = "Seed files",
        revision: str = "main",
        repo_type: str = "model",
        lfs: bool | Iterable[str] | None = None,
    ) -> str:
        """Commit files server-side (``None`` deletes a path). Creates the repo if needed. Returns the new sha.

        ``lfs``: None = decide like preupload; True/False = all/none; an iterable = those paths.
        """
        with self._lock:
            key = (repo_type, repo_id)
            if key not in self._repos:
                self.create_repo(repo_id, repo_type=repo_type)
            repo = self._repos[key]
            base = repo.resolve(revision)
            if base is None or revision not in repo.branches:
                raise ValueError(f"unknown branch {revision!r}")
            new_files = dict(repo.commits[base].files)
            lfs_paths = set(lfs) if lfs not in (None, True, False) else None  # type: ignore[arg-type]
            for path, data in files.items():
                if data is None:
                    new_files.pop(path, None)
                    continue
                data = data.encode() if isinstance(data, str) else bytes(data)
                if lfs is True or (lfs_paths is not None and path in lfs_paths):
                    as_lfs = True
                elif lfs is None:
                    as_lfs = self._upload_mode(repo, base, path, len(data), data[:512]) == "lfs"
                else:
                    as_lfs = False
                if as_lfs:
                    oid = hashlib.sha256(data).hexdigest()
                    repo.lfs_objects[oid] = data
                    new_files[path] = _Entry.lfs(oid, len(data))
                else:
                    new_files[path] = _Entry.regular(data)
            oid = self._add_commit(repo, base, new_files, message, "")
            repo.branches[revision] = oid
            return oid

    def _repo(self, repo_id: str, repo_type: str = "model") -> _Repo:
        try:
            return self._repos[(repo_type, repo_id)]
        except KeyError:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the local hub") from None

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        return (repo_type, repo_id) in self._repos

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        return self._repo(repo_id, repo_type).private

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            oid = self._repo(repo_id, repo_type).resolve(revision)
        if oid is None:
            raise KeyError(f"unknown revision {revision!r} in {repo_id}")
        return oid

    def commit_count(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> int:
        """Number of commits in the first-parent history of ``revision`` (the "initial commit" included)."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            return len(repo.history(self.head(repo_id, revision, repo_type)))

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[dict[str, Any]]:
        """History of ``revision``, newest first: ``{"oid", "title", "message", "parents", "files"}``."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            return [
                {"oid": c.oid, "title": c.title, "message": c.message, "parents": list(c.parents), "files": sorted(c.files)}
                for c in repo.history(self.head(repo_id, revision, repo_type))
            ]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """``{path: content}`` of every file at ``revision`` (LFS files resolved to their content)."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            commit = repo.commits[self.head(repo_id, revision, repo_type)]
            return {path: self._content(repo, entry) for path, entry in sorted(commit.files.items())}

    def file_bytes(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        return self.files(repo_id, revision, repo_type)[path]

    def file_info(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> dict[str, Any]:
        """``{"size", "blob_id", "lfs": bool, "sha256"}`` of a file (sha256 only for LFS files)."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            entry = repo.commits[self.head(repo_id, revision, repo_type)].files[path]
            return {"size": entry.size, "blob_id": entry.blob_id, "lfs": entry.is_lfs, "sha256": entry.lfs_oid}

    def refs(self, repo_id: str, repo_type: str = "model") -> dict[str, dict[str, str]]:
        """``{"branches": {name: sha}, "tags": {...}, "pulls": {"refs/pr/N": sha}}``."""
        with self._lock:
            repo = self._repo(repo_id, repo_type)
            return {
                "branches": dict(repo.branches),
                "tags": dict(repo.tags),
                "pulls": {f"refs/pr/{n}": oid for n, oid in repo.pr_heads.items()},
            }

    def lfs_object_ids(self, repo_id: str, repo_type: str = "model") -> set[str]:
        with self._lock:
            return set(self._repo(repo_id, repo_type).lfs_objects)

    def authorizations(self) -> list[str | None]:
        """The ``Authorization`` header of every request received, in order (None when absent)."""
        return [r.authorization for r in self.requests]

    def requests_to(self, fragment: str, method: str | None = None) -> list[RequestRecord]:
        return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    def assert_no_internal_errors(self) -> None:
        if self.internal_errors:
            raise AssertionError("LocalHubServer internal error(s):\n" + "\n".join(self.internal_errors))

    # ---------------------------------------------------------------- internals
    def _content(self, repo: _Repo, entry: _Entry) -> bytes:
        if entry.is_lfs:
            return repo.lfs_objects[entry.lfs_oid]  # type: ignore[index]
        return entry.content  # type: ignore[return-value]

    def _new_commit_oid(self, repo_id: str, title: str, parent: str | None) -> str:
        seed = f"{repo_id}\0{parent}\0{title}\0{next(self._counter)}\0{_now().isoformat()}\0{secrets.token_hex(8)}"
        return hashlib.sha1(seed.encode()).hexdigest()

    def _add_commit(self, repo: _Repo, parent: str | None, files: dict[str, _Entry], title: str, message: str) -> str:
        oid = self._new_commit_oid(repo.repo_id, title, parent)
        repo.commits[oid] = _Commit(oid, [parent] if parent else [], title, message, self.username, _now(), files)
        return oid

    def _upload_mode(self, repo: _Repo, commit_oid: str, path: str, size: int, sample: bytes) -> str:
        if size >= self.lfs_threshold:
            return "lfs"
        if self.binary_as_lfs and b"\x00" in sample:
            return "lfs"
        attrs = repo.commits[commit_oid].files.get(".gitattributes")
        text = self._content(repo, attrs).decode(errors="replace") if attrs is not None else ""
        lfs = False
        for line in text.splitlines():
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            pattern, attrs_ = parts[0], parts[1:]
            if "filter=lfs" in attrs_ or "-filter" in attrs_ or "!filter" in attrs_:
                if _gitattr_match(pattern, path):
                    lfs = "filter=lfs" in attrs_
        return "lfs" if lfs else "regular"


def _gitattr_match(pattern: str, path: str) -> bool:
    if "/" not in pattern.rstrip("/"):
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    pattern = pattern.lstrip("/")
    if "**" in pattern:
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        return re.fullmatch(regex, path) is not None
    return fnmatch.fnmatchcase(path, pattern)


def _gitignore_matches(patterns: str, path: str) -> bool:
    ignored = False
    for raw in patterns.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        if line.endswith("/"):
            d = line.strip("/")
            hit = path.startswith(d + "/") or f"/{d}/" in f"/{path}"
        elif "/" in line.strip("/"):
            hit = fnmatch.fnmatchcase(path, line.lstrip("/"))
        else:
            hit = any(fnmatch.fnmatchcase(part, line) for part in path.split("/"))
        if hit:
            ignored = not negate
    return ignored


def _validate_repo_path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise _HttpError(400, f"Invalid path: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")) or path.split("/")[0] == ".git":
        raise _HttpError(400, f"Invalid path: {path!r}")
    return path


def _front_matter(content: str) -> str | None:
    lines = content.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "\n".join(lines[1:i])
    raise _HttpError(400, "Invalid metadata: unterminated YAML front matter", headers={})


# --------------------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------------------


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    timeout = 120
    hub: LocalHubServer  # set on the bound subclass

    # -- plumbing ------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body or b"{}")
        except ValueError:
            raise _HttpError(400, "Request body is not valid JSON") from None

    def _send(self, status: int, body: Any = b"", headers: Mapping[str, str] | None = None, *, content_type: str | None = None) -> None:
        if isinstance(body, (dict, list)):
            payload = json.dumps(body).encode()
            content_type = content_type or "application/json; charset=utf-8"
        elif isinstance(body, str):
            payload = body.encode()
            content_type = content_type or "text/plain; charset=utf-8"
        else:
            payload = bytes(body)
            content_type = content_type or "application/octet-stream"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        headers = dict(headers or {})
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    def _send_error(self, err: _HttpError) -> None:
        headers = dict(err.headers)
        headers["X-Error-Message"] = err.message.encode("ascii", "replace").decode()
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(err.status, {**err.extra, "error": err.message}, headers)

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        self._query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self._raw_path = split.path
        auth = self.headers.get("Authorization")
        hub.requests.append(RequestRecord(method, split.path, split.query, auth, self.headers.get("User-Agent")))
        try:
            self._body = self._read_body() if method in ("POST", "PUT", "DELETE") else b""
            raw = split.path.strip("/")
            segs = [unquote(s) for s in raw.split("/")] if raw else []
            self._check_token(auth)
            self._route(method, segs)
        except _HttpError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # pragma: no cover - reported through hub.internal_errors
            tb = traceback.format_exc()
            hub.internal_errors.append(f"{method} {self.path}\n{tb}")
            try:
                self._send(500, {"error": "LocalHubServer internal error", "traceback": tb})
            except Exception:
                self.close_connection = True

    # -- auth ------------------------------------------------------------------
    def _token(self, auth: str | None) -> str | None:
        if auth and auth.lower().startswith("bearer "):
            return auth[7:].strip() or None
        return None

    def _check_token(self, auth: str | None) -> None:
        token = self._token(auth)
        if token is not None and self.hub.valid_tokens is not None and token not in self.hub.valid_tokens:
            raise _HttpError(401, "Invalid credentials in Authorization header")

    @property
    def _authenticated(self) -> bool:
        return self._token(self.headers.get("Authorization")) is not None

    def _require_write_auth(self) -> None:
        if self.hub.require_token_for_writes and not self._authenticated:
            raise _HttpError(401, "You must be authenticated to write to this repository (no token sent)")

    # -- routing ---------------------------------------------------------------
    def _route(self, method: str, segs: list[str]) -> None:
        if not segs:
            raise _HttpError(404, "Not found")
        if segs[0] == "api":
            return self._route_api(method, segs[1:])
        if segs[0] == "__lfs" and len(segs) == 2 and method == "PUT":
            return self._lfs_put(segs[1])
        # [/{type}s]/{repo}.git/info/lfs/objects/{batch|verify}
        repo_type = "model"
        rest = segs
        if segs[0] in ("datasets", "spaces", "kernels") and len(segs) > 2:
            repo_type, rest = _REPO_TYPES[segs[0]], segs[1:]
        for i, seg in enumerate(rest[:2]):
            if seg.endswith(".git") and rest[i + 1 : i + 4] == ["info", "lfs", "objects"] and len(rest) == i + 5:
                repo_id = "/".join(rest[:i] + [seg[: -len(".git")]])
                if method == "POST" and rest[i + 4] == "batch":
                    return self._lfs_batch(repo_type, repo_id)
                if method == "POST" and rest[i + 4] == "verify":
                    return self._lfs_verify(repo_type, repo_id)
        # [/{type}s]/{repo}/resolve/{rev}/{path}
        for i in (1, 2):
            if len(rest) > i + 2 and rest[i] == "resolve" and method in ("GET", "HEAD"):
                repo_id = "/".join(rest[:i])
                if i == 2 and self._find_repo(repo_type, repo_id) is None and self._find_repo(repo_type, rest[0]) is not None:
                    continue
                return self._resolve(repo_type, repo_id, rest[i + 1], "/".join(rest[i + 2 :]))
        raise _HttpError(404, f"No route for {method} /{'/'.join(segs)}")

    def _route_api(self, method: str, segs: list[str]) -> None:
        if segs == ["whoami-v2"] and method == "GET":
            return self._whoami()
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if segs == ["validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if len(segs) >= 2 and segs[0] in _REPO_TYPES:
            repo_type = _REPO_TYPES[segs[0]]
            repo_id, rest = self._split_repo(repo_type, segs[1:])
            action = rest[0] if rest else None
            if action is None and method == "GET":
                return self._repo_info(repo_type, repo_id, None)
            if action == "revision" and len(rest) == 2 and method == "GET":
                return self._repo_info(repo_type, repo_id, rest[1])
            if action == "preupload" and len(rest) == 2 and method == "POST":
                return self._preupload(repo_type, repo_id, rest[1])
            if action == "commit" and len(rest) == 2 and method == "POST":
                return self._commit(repo_type, repo_id, rest[1])
            if action == "tree" and len(rest) >= 2 and method == "GET":
                return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]).strip("/"))
            if action == "paths-info" and len(rest) == 2 and method == "POST":
                return self._paths_info(repo_type, repo_id, rest[1])
            if action == "refs" and len(rest) == 1 and method == "GET":
                return self._refs(repo_type, repo_id)
            if action == "commits" and len(rest) == 2 and method == "GET":
                return self._list_commits(repo_type, repo_id, rest[1])
            if action == "branch" and len(rest) == 2 and method in ("POST", "DELETE"):
                return self._branch(method, repo_type, repo_id, rest[1])
            if action == "tag" and len(rest) == 2 and method in ("POST", "DELETE"):
                return self._tag(method, repo_type, repo_id, rest[1])
            if action == "settings" and len(rest) == 1 and method == "PUT":
                return self._settings(repo_type, repo_id)
        raise _HttpError(404, f"No route for {method} /api/{'/'.join(segs)}")

    def _find_repo(self, repo_type: str, repo_id: str) -> _Repo | None:
        return self.hub._repos.get((repo_type, repo_id))

    def _split_repo(self, repo_type: str, segs: list[str]) -> tuple[str, list[str]]:
        if len(segs) >= 2 and self._find_repo(repo_type, "/".join(segs[:2])) is not None:
            return "/".join(segs[:2]), segs[2:]
        if self._find_repo(repo_type, segs[0]) is not None:
            return segs[0], segs[1:]
        if len(segs) >= 2 and segs[1] not in _API_ACTIONS:
            return "/".join(segs[:2]), segs[2:]
        return segs[0], segs[1:]

    def _get_repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> _Repo:
        if write:
            self._require_write_auth()
        repo = self._find_repo(repo_type, repo_id)
        if repo is None:
            raise _not_found_repo(repo_id)
        if repo.private and not self._authenticated:
            # The Hub answers 401 for private repos without credentials; the client maps it to RepositoryNotFoundError.
            raise _HttpError(401, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _resolve_rev(self, repo: _Repo, revision: str) -> str:
        oid = repo.resolve(revision)
        if oid is None:
            raise _not_found_revision(revision)
        return oid

    # -- endpoints: account & repos ----------------------------------------------
    def _whoami(self) -> None:
        self.hub._maybe_fail("whoami")
        token = self._token(self.headers.get("Authorization"))
        if token is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        name = self.hub.username
        self._send(200, {
            "type": "user", "id": hashlib.md5(name.encode()).hexdigest()[:24], "name": name,
            "fullname": "Local Test User", "email": f"{name}@localhost", "emailVerified": True,
            "isPro": False, "canPay": False, "periodEnd": None, "avatarUrl": "", "orgs": [],
            "auth": {"type": "access_token", "accessToken": {
                "displayName": "local-hub-token", "role": "write", "createdAt": _iso(_now())}},
        })

    def _create_repo(self) -> None:
        self._require_write_auth()
        body = self._json_body()
        self.hub._maybe_fail("create_repo")
        name = body.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
            raise _HttpError(400, f"Invalid repo name: {name!r}")
        namespace = body.get("organization") or self.hub.username
        repo_type = body.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise _HttpError(400, f"Invalid repo type: {repo_type!r}")
        private = body.get("visibility") == "private" or bool(body.get("private"))
        repo_id = f"{namespace}/{name}"
        url = f"{self.hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
        with self.hub._lock:
            if self._find_repo(repo_type, repo_id) is not None:
                # `create_repo(exist_ok=True)` swallows the 409 and then reads `url` from this body.
                raise _HttpError(409, f"You already created this {repo_type} repo", extra={"url": url})
            self.hub.create_repo(repo_id, repo_type=repo_type, private=private)
        self._send(200, {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self) -> None:
        self._require_write_auth()
        body = self._json_body()
        namespace = body.get("organization") or self.hub.username
        repo_id = f"{namespace}/{body.get('name')}"
        repo_type = body.get("type") or "model"
        with self.hub._lock:
            if self.hub._repos.pop((repo_type, repo_id), None) is None:
                raise _not_found_repo(repo_id)
        self._send(200, {})

    def _settings(self, repo_type: str, repo_id: str) -> None:
        repo = self._get_repo(repo_type, repo_id, write=True)
        body = self._json_body()
        self.hub._maybe_fail("settings")
        visibility = body.get("visibility")
        if "private" in body:  # older clients
            visibility = "private" if body["private"] else "public"
        if visibility is not None:
            if visibility not in ("public", "private"):
                raise _HttpError(400, f"Invalid visibility: {visibility!r}")
            repo.private = visibility == "private"
        self._send(200, {})

    def _validate_yaml(self) -> None:
        body = self._json_body()
        self.hub._maybe_fail("validate_yaml")
        self.hub.yaml_validations += 1
        content = body.get("content")
        if not isinstance(content, str):
            raise _HttpError(400, "Missing 'content'")
        try:
            meta = _front_matter(content)
            if meta is not None and yaml is not None:
                data = yaml.safe_load(meta)
                if data is not None and not isinstance(data, dict):
                    raise ValueError("metadata must be a YAML mapping")
        except (_HttpError, ValueError, Exception) as exc:  # yaml.YAMLError is a subclass of Exception
            message = exc.message if isinstance(exc, _HttpError) else f"Invalid YAML metadata: {exc}"
            self._send(400, {"errors": [{"message": message}], "warnings": []}, {"X-Error-Message": "Invalid metadata"})
            return
        self._send(200, {})

    # -- endpoints: read -----------------------------------------------------------
    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> None:
        self.hub._maybe_fail("repo_info")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            oid = self._resolve_rev(repo, revision or "main")
            commit = repo.commits[oid]
            blobs = self._query.get("blobs", "").lower() in ("1", "true")
            siblings = []
            for path, entry in sorted(commit.files.items()):
                sib: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sib.update(size=entry.size, blobId=entry.blob_id)
                    if entry.is_lfs:
                        sib["lfs"] = {"size": entry.size, "sha256": entry.lfs_oid,
                                      "pointerSize": len(_lfs_pointer(entry.lfs_oid or "", entry.size))}
                siblings.append(sib)
            card = None
            readme = commit.files.get("README.md")
            if readme is not None and yaml is not None:
                with contextlib.suppress(Exception):
                    meta = _front_matter(self.hub._content(repo, readme).decode())
                    parsed = yaml.safe_load(meta) if meta else None
                    card = parsed if isinstance(parsed, dict) else None
            used = sum(e.size for e in commit.files.values())
            namespace = repo_id.split("/")[0] if "/" in repo_id else None
            info: dict[str, Any] = {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": namespace,
                "sha": oid, "lastModified": _iso(commit.date), "createdAt": _iso(repo.created_at),
                "private": repo.private, "disabled": False, "gated": False, "tags": [], "downloads": 0,
                "likes": 0, "siblings": siblings, "usedStorage": used,
            }
            if repo_type == "model":
                info.update(modelId=repo_id, spaces=[])
                if card is not None:
                    info["cardData"] = card
                    if isinstance(card.get("library_name"), str):
                        info["library_name"] = card["library_name"]
                    if isinstance(card.get("pipeline_tag"), str):
                        info["pipeline_tag"] = card["pipeline_tag"]
            elif card is not None:
                info["cardData"] = card
            if repo_type == "space":
                info.update(sdk=(card or {}).get("sdk"), runtime=None)
        self._send(200, info)

    def _entry_json(self, repo: _Repo, path: str, entry: _Entry, head: str, expand: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
        if entry.is_lfs:
            out["lfs"] = {"oid": entry.lfs_oid, "size": entry.size,
                          "pointerSize": len(_lfs_pointer(entry.lfs_oid or "", entry.size))}
        if expand:
            out["lastCommit"] = self._last_commit(repo, head, lambda files: files.get(path))
        return out

    def _folder_json(self, repo: _Repo, path: str, files: dict[str, _Entry], head: str, expand: bool) -> dict[str, Any]:
        prefix = path + "/"

        def sub(fs: dict[str, _Entry]) -> tuple:
            return tuple(sorted((p, e.blob_id) for p, e in fs.items() if p.startswith(prefix)))

        tree_oid = hashlib.sha1(repr(sub(files)).encode()).hexdigest()
        out: dict[str, Any] = {"type": "directory", "oid": tree_oid, "size": 0, "path": path}
        if expand:
            out["lastCommit"] = self._last_commit(repo, head, sub)
        return out

    def _last_commit(self, repo: _Repo, head: str, key) -> dict[str, str]:
        history = repo.history(head)
        current = key(history[0].files)
        last = history[0]
        for commit in history[1:]:
            if key(commit.files) != current:
                break
            last = commit
        return {"id": last.oid, "title": last.title, "date": _iso(last.date)}

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        self.hub._maybe_fail("tree")
        recursive = self._query.get("recursive", "").lower() in ("1", "true")
        expand = self._query.get("expand", "").lower() in ("1", "true")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            oid = self._resolve_rev(repo, revision)
            files = repo.commits[oid].files
            dirs = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
            if path and path not in dirs:
                raise _not_found_entry(path, oid)
            prefix = path + "/" if path else ""
            out = []
            for d in sorted(dirs):
                if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                    out.append(self._folder_json(repo, d, files, oid, expand))
            for p, entry in sorted(files.items()):
                if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                    out.append(self._entry_json(repo, p, entry, oid, expand))
        self._send(200, out)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        self.hub._maybe_fail("paths_info")
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            body = self._json_body()
            paths = body.get("paths", [])
            expand = bool(body.get("expand"))
        else:
            form = parse_qs(self._body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = (form.get("expand", ["false"])[-1]).lower() in ("1", "true")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            oid = self._resolve_rev(repo, revision)
            files = repo.commits[oid].files
            out = []
            for raw_path in paths:
                p = str(raw_path).strip("/")
                if p in files:
                    out.append(self._entry_json(repo, p, files[p], oid, expand))
                elif p and any(f.startswith(p + "/") for f in files):
                    out.append(self._folder_json(repo, p, files, oid, expand))
        self._send(200, out)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        self.hub._maybe_fail("refs")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            out: dict[str, Any] = {
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in sorted(repo.branches.items())],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in sorted(repo.tags.items())],
                "converts": [],
            }
            if self._query.get("include_prs", "") not in ("", "0", "false"):
                out["pullRequests"] = [
                    {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": o} for n, o in sorted(repo.pr_heads.items())
                ]
        self._send(200, out)

    def _list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        self.hub._maybe_fail("commits")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            oid = self._resolve_rev(repo, revision)
            out = [
                {"id": c.oid, "title": c.title, "message": c.message, "date": _iso(c.date),
                 "authors": [{"user": c.author, "avatar": ""}], "parents": list(c.parents)}
                for c in repo.history(oid)
            ]
        self._send(200, out)

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        self.hub._maybe_fail("resolve")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            oid = self._resolve_rev(repo, revision)
            entry = repo.commits[oid].files.get(path)
            if entry is None:
                raise _not_found_entry(path, oid)
            data = self.hub._content(repo, entry)
            if self.command == "GET":
                self.hub.downloads.append((repo_id, oid, path))
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{entry.blob_id}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{quote(path.rsplit("/", 1)[-1])}"',
        }
        if entry.is_lfs:
            headers["X-Linked-Etag"] = f'"{entry.lfs_oid}"'
            headers["X-Linked-Size"] = str(entry.size)
        status, body = 200, data
        range_header = self.headers.get("Range")
        if range_header:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", range_header)
            if not m or (not m.group(1) and not m.group(2)):
                raise _HttpError(416, f"Invalid range {range_header!r}", headers={"Content-Range": f"bytes */{len(data)}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            else:
                start, end = max(len(data) - int(m.group(2)), 0), len(data) - 1
            if start >= len(data) or start > end:
                raise _HttpError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, body, headers)

    # -- endpoints: write ----------------------------------------------------------
    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        body = self._json_body()
        self.hub._maybe_fail("preupload")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            oid = self._resolve_rev(repo, revision)
            files = repo.commits[oid].files
            gitignore = body.get("gitIgnore")
            if gitignore is None and ".gitignore" in files:
                gitignore = self.hub._content(repo, files[".gitignore"]).decode(errors="replace")
            out = []
            for item in body.get("files", []):
                path = _validate_repo_path(item.get("path"))
                sample = base64.b64decode(item.get("sample") or "")
                mode = self.hub._upload_mode(repo, oid, path, int(item.get("size") or 0), sample)
                existing = files.get(path)
                out.append({
                    "path": path,
                    "uploadMode": mode,
                    "shouldIgnore": bool(gitignore) and _gitignore_matches(gitignore, path),
                    "oid": existing.preupload_oid if existing is not None else None,
                })
        self._send(200, {"files": out, "commitOid": oid})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        body = self._json_body()
        self.hub._maybe_fail("lfs_batch")
        if body.get("operation") != "upload":
            raise _HttpError(400, "Only the 'upload' operation is supported")
        transfers = body.get("transfers") or ["basic"]
        if "basic" not in transfers:
            raise _HttpError(400, f"Unsupported transfers {transfers}: only 'basic' is available")
        out = []
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            for obj in body.get("objects", []):
                oid, size = obj.get("oid"), obj.get("size")
                if not (isinstance(oid, str) and re.fullmatch(r"[0-9a-f]{64}", oid) and isinstance(size, int)):
                    out.append({"oid": str(oid), "size": int(size or 0), "error": {"code": 422, "message": "Invalid oid or size"}})
                    continue
                item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if oid not in repo.lfs_objects:
                    upload_id = secrets.token_hex(16)
                    self.hub._uploads[upload_id] = ((repo_type, repo_id), oid, size)
                    item["actions"] = {
                        "upload": {"href": f"{self.hub.endpoint}/__lfs/{upload_id}", "header": {}, "expires_in": 3600},
                        "verify": {"href": f"{self.hub.endpoint}/{repo.url_path}.git/info/lfs/objects/verify", "header": {}},
                    }
                out.append(item)
        self._send(200, {"transfer": "basic", "objects": out, "hash_algo": "sha256"},
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, upload_id: str) -> None:
        hub = self.hub
        with hub._lock:
            hub.lfs_put_count += 1
            target = hub._uploads.get(upload_id)
        hub.lfs_put_started.set()
        time.sleep(hub.lfs_put_delay)
        hub._maybe_fail("lfs_put")
        if target is None:
            raise _HttpError(403, "Unknown or expired upload URL")
        key, oid, size = target
        data = self._body
        if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
            raise _HttpError(400, f"Uploaded content does not match oid {oid} / size {size} (got {len(data)} bytes)")
        with hub._lock:
            repo = hub._repos.get(key)
            if repo is None:
                raise _not_found_repo(key[1])
            repo.lfs_objects.setdefault(oid, data)
            hub.lfs_bytes_uploaded += len(data)  # counted even if the object was already stored: bytes sent
            hub.lfs_objects_uploaded.append((key[1], oid))
            hub._uploads.pop(upload_id, None)
        self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str) -> None:
        body = self._json_body()
        self.hub._maybe_fail("lfs_verify")
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            data = repo.lfs_objects.get(body.get("oid", ""))
        if data is None or len(data) != body.get("size"):
            raise _HttpError(404, f"LFS object {body.get('oid')} not found")
        self._send(200, {"success": True})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        hub = self.hub
        try:
            lines = [json.loads(line) for line in self._body.decode().splitlines() if line.strip()]
        except ValueError:
            raise _HttpError(400, "Commit payload is not valid NDJSON") from None
        if not lines or lines[0].get("key") != "header":
            raise _HttpError(400, "Commit payload must start with a 'header' line")
        header = lines[0].get("value") or {}
        summary = header.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise _HttpError(400, "Commit summary is required")
        description = header.get("description") or ""
        parent_commit = header.get("parentCommit")
        create_pr = self._query.get("create_pr", "") in ("1", "true", "True")
        hub._maybe_fail("commit")
        with hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            pr_match = re.fullmatch(r"refs/pr/(\d+)", revision)
            if create_pr:
                if revision not in repo.branches:
                    raise _not_found_revision(revision)
                if parent_commit:
                    base = repo.resolve(parent_commit.lower())
                    if base is None:
                        raise _HttpError(412, f"Parent commit {parent_commit} not found")
                else:
                    base = repo.branches[revision]
            else:
                if revision in repo.branches:
                    base = repo.branches[revision]
                elif pr_match and int(pr_match.group(1)) in repo.pr_heads:
                    base = repo.pr_heads[int(pr_match.group(1))]
                elif repo.resolve(revision) is not None:
                    raise _HttpError(400, f"Invalid revision {revision!r}: commits can only be pushed to a branch or a PR ref")
                else:
                    raise _not_found_revision(revision)
                if parent_commit and not base.startswith(str(parent_commit).lower()):
                    raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[base].files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                if key == "file":
                    path = _validate_repo_path(value.get("path"))
                    encoding = (value.get("encoding") or "base64").lower()
                    content = value.get("content") or ""
                    data = base64.b64decode(content) if encoding == "base64" else content.encode()
                    files[path] = _Entry.regular(data)
                elif key == "lfsFile":
                    path = _validate_repo_path(value.get("path"))
                    oid = value.get("oid")
                    if value.get("algo", "sha256") != "sha256" or oid not in repo.lfs_objects:
                        raise _HttpError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                              f"does not exist (oid {oid}, path {path})")
                    size = len(repo.lfs_objects[oid])
                    if value.get("size") is not None and value.get("size") != size:
                        raise _HttpError(422, f"LFS object {oid} has size {size}, not {value.get('size')}")
                    files[path] = _Entry.lfs(oid, size)
                elif key == "deletedFile":
                    path = value.get("path", "")
                    if files.pop(path, None) is None:
                        raise _not_found_entry(path, base)
                elif key == "deletedFolder":
                    folder = str(value.get("path", "")).strip("/")
                    doomed = [p for p in files if not folder or p.startswith(folder + "/")]
                    if not doomed:
                        raise _not_found_entry(folder, base)
                    for p in doomed:
                        del files[p]
                else:
                    raise _HttpError(400, f"Unknown commit operation {key!r}")
            oid = hub._add_commit(repo, base, files, summary, description)
            hub.commits_created += 1
            pr_url = None
            if create_pr:
                num = repo.next_discussion
                repo.next_discussion += 1
                repo.pulls[num] = _PullRequest(num, summary, revision)
                repo.pr_heads[num] = oid
                pr_url = f"{hub.endpoint}/{repo.url_path}/discussions/{num}"
            elif pr_match and revision not in repo.branches:
                repo.pr_heads[int(pr_match.group(1))] = oid
            else:
                repo.branches[revision] = oid
        self._send(200, {
            "success": True, "commitOid": oid, "commitUrl": f"{hub.endpoint}/{repo.url_path}/commit/{oid}",
            "hookOutput": "", "pullRequestUrl": pr_url,
        })

    def _branch(self, method: str, repo_type: str, repo_id: str, branch: str) -> None:
        body = self._json_body() if self._body else {}
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            if method == "DELETE":
                if branch not in repo.branches or branch == "main":
                    raise _HttpError(404 if branch not in repo.branches else 403, f"Cannot delete branch {branch!r}")
                del repo.branches[branch]
            else:
                if branch in repo.branches:
                    raise _HttpError(409, f"Branch {branch!r} already exists")
                if not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith("refs/"):
                    raise _HttpError(400, f"Invalid branch name {branch!r}")
                repo.branches[branch] = self._resolve_rev(repo, body.get("startingPoint") or "main")
        self._send(200, {})

    def _tag(self, method: str, repo_type: str, repo_id: str, name: str) -> None:
        body = self._json_body() if self._body else {}
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id, write=True)
            if method == "DELETE":
                if repo.tags.pop(name, None) is None:
                    raise _HttpError(404, f"Tag {name!r} not found")
            else:  # POST /tag/{revision} {"tag": name}
                tag = body.get("tag")
                if not isinstance(tag, str) or not tag:
                    raise _HttpError(400, "Missing tag name")
                if tag in repo.tags:
                    raise _HttpError(409, f"Tag {tag!r} already exists")
                repo.tags[tag] = self._resolve_rev(repo, name)
        self._send(200, {})


# --------------------------------------------------------------------------------------
# Client side: run the real huggingface_hub in a subprocess
# --------------------------------------------------------------------------------------

_JSON_MARK = "__LOCAL_HUB_JSON__"

_PRELUDE = f"""\
import json as _lh_json, sys as _lh_sys
def emit(obj):
    \"\"\"Send a JSON-serialisable value back to the test (collected by HubClient.run_json).\"\"\"
    print({_JSON_MARK!r} + _lh_json.dumps(obj, default=str), flush=True)
"""


class HubClientError(AssertionError):
    """A client snippet exited non-zero. ``.stdout`` / ``.stderr`` / ``.returncode`` are attached."""

    def __init__(self, message: str, result: subprocess.CompletedProcess):
        super().__init__(message)
        self.result = result
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.returncode = result.returncode


class HubClient:
    """Runs Python snippets in a fresh interpreter wired to a ``LocalHubServer``.

    Args:
        hub: the running server.
        hf_home: HF_HOME of the client (cache + token). Reuse it across runs to test caching,
            pass another one to ``run(..., hf_home=...)`` for a cold cache.
        token: value of ``HF_TOKEN`` (None: anonymous).
        python: interpreter to use (default: the one running the tests).
        cwd: working directory of the subprocess.
    """

    def __init__(
        self,
        hub: LocalHubServer,
        hf_home: str | os.PathLike,
        *,
        token: str | None = DEFAULT_TOKEN,
        python: str | None = None,
        cwd: str | os.PathLike | None = None,
        extra_env: Mapping[str, str] | None = None,
    ):
        self.hub = hub
        self.hf_home = Path(hf_home)
        self.token = token
        self.python = python or sys.executable
        self.cwd = cwd
        self.extra_env = dict(extra_env or {})

    def env(self, *, hf_home: str | os.PathLike | None = None, token: Any = "__default__",
            extra_env: Mapping[str, str] | None = None) -> dict[str, str]:
        home = Path(hf_home) if hf_home is not None else self.hf_home
        home.mkdir(parents=True, exist_ok=True)
        env = self.hub.client_env(home, token=self.token if token == "__default__" else token)
        env.update(self.extra_env)
        env.update(extra_env or {})
        return env

    def run_process(self, code: str, *, timeout: float = 120, hf_home: str | os.PathLike | None = None,
                    token: Any = "__default__", extra_env: Mapping[str, str] | None = None,
                    **variables: Any) -> subprocess.CompletedProcess:
        """Run ``code`` (dedented) and return the CompletedProcess, whatever its exit status.

        ``variables`` become globals of the snippet (they must be ``repr``-able literals: str, int, list, dict...).
        """
        assigns = "".join(f"{name} = {value!r}\n" for name, value in variables.items())
        script = _PRELUDE + assigns + textwrap.dedent(code)
        # The script goes through a file (no argv size limit, real line numbers in tracebacks) but runs like
        # `python -c` (sys.path[0] == "", __name__ == "__main__").
        fd, path = tempfile.mkstemp(prefix="local_hub_client_", suffix=".py")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(script)
            launcher = f"__file__ = {path!r}; exec(compile(open(__file__, encoding='utf-8').read(), __file__, 'exec'))"
            return subprocess.run(
                [self.python, "-c", launcher],
                env=self.env(hf_home=hf_home, token=token, extra_env=extra_env),
                cwd=self.cwd,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def run(self, code: str, **kwargs: Any) -> str:
        """Run ``code``; raise ``HubClientError`` (with stderr) if it fails; return stdout."""
        result = self.run_process(code, **kwargs)
        if result.returncode != 0:
            raise HubClientError(
                f"client snippet failed with exit code {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}"
                f"\n--- stderr ---\n{result.stderr[-8000:]}",
                result,
            )
        return result.stdout

    def run_json(self, code: str, **kwargs: Any) -> Any:
        """Like ``run`` but returns what the snippet ``emit()``-ed: the value if emitted once, else a list."""
        out = self.run(code, **kwargs)
        values = [json.loads(line[len(_JSON_MARK):]) for line in out.splitlines() if line.startswith(_JSON_MARK)]
        if not values:
            raise AssertionError(f"client snippet emitted nothing; stdout was:\n{out[-4000:]}")
        return values[0] if len(values) == 1 else values


# --------------------------------------------------------------------------------------
# pytest fixtures (import them: `from hub_server import local_hub, hf_client`)
# --------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore

if pytest is not None:

    @pytest.fixture
    def local_hub():
        """A running LocalHubServer; fails the test at teardown if the server hit an internal error."""
        with LocalHubServer() as hub:
            yield hub
        hub.assert_no_internal_errors()

    @pytest.fixture
    def hf_client(local_hub, tmp_path):
        """A HubClient bound to ``local_hub``, with HF_HOME in the test's tmp_path and a token set."""
        return HubClient(local_hub, hf_home=tmp_path / "hf_home")
