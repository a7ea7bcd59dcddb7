"""Round trips of the real huggingface_hub / transformers clients against tests/hub_server.py.

Every client call runs in a subprocess (HF_ENDPOINT/HF_HOME/HF_HUB_DISABLE_XET must be set
before huggingface_hub is imported): see the hub_server module docstring.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

try:
    from hub_server import DEFAULT_TOKEN, HubClient, LocalHubServer, hf_client, local_hub  # noqa: F401
except ImportError:  # tests/ turned into a package
    from .hub_server import DEFAULT_TOKEN, HubClient, LocalHubServer, hf_client, local_hub  # noqa: F401

REPO = "flowcut-tests/tiny-model"

WEIGHTS = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(256))  # 8 KiB, binary
BIG_TEXT = ("0123456789abcdef" * 4 + "\n").encode() * 17_000  # ~1.1 MB of text: LFS by size only
CONFIG = b'{"model_type": "tiny", "hidden_size": 8}\n'
README = b"---\nlicense: apache-2.0\nlibrary_name: transformers\ntags:\n- flowcut\n---\n# Tiny\n"
NOTES = b"some notes\n"


def make_folder(root: Path, overrides: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Write a small model folder; returns {path_in_repo: content}."""
    files = {
        "config.json": CONFIG,
        "README.md": README,
        "model.safetensors": WEIGHTS,
        "sub/notes.txt": NOTES,
        "data/big_vocab.txt": BIG_TEXT,
    }
    files.update(overrides or {})
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


LFS_SIZE = len(WEIGHTS) + len(BIG_TEXT)

UPLOAD = """
from huggingface_hub import HfApi
api = HfApi()
api.create_repo(REPO, exist_ok=True)
info = api.upload_folder(repo_id=REPO, folder_path=FOLDER, commit_message=MESSAGE)
emit({"oid": info.oid, "url": str(info), "pr_url": info.pr_url})
"""


def upload(client: HubClient, folder: Path, message: str = "Add tiny model") -> dict:
    return client.run_json(UPLOAD, REPO=REPO, FOLDER=str(folder), MESSAGE=message)


# ---------------------------------------------------------------------------------------------


def test_whoami_create_repo_and_repo_info_errors(local_hub: LocalHubServer, hf_client: HubClient):
    out = hf_client.run_json(
        """
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
        api = HfApi()

        def error_of(fn):
            try:
                fn()
            except Exception as exc:
                return [type(exc).__name__, getattr(getattr(exc, "response", None), "status_code", None)]
            return None

        me = api.whoami()
        url = api.create_repo(REPO, private=True)
        url_again = api.create_repo(REPO, private=True, exist_ok=True)
        info = api.model_info(REPO)
        emit({
            "me": me["name"],
            "url": str(url), "url_again": str(url_again), "repo_id": url.repo_id,
            "duplicate": error_of(lambda: api.create_repo(REPO)),
            "private": info.private, "sha": info.sha, "siblings": [s.rfilename for s in info.siblings],
            "anonymous": error_of(lambda: api.model_info(REPO, token=False)),
            "missing_repo": error_of(lambda: api.model_info("flowcut-tests/does-not-exist")),
            "missing_rev": error_of(lambda: api.model_info(REPO, revision="no-such-branch")),
            "exists": [api.repo_exists(REPO), api.repo_exists("flowcut-tests/nope"),
                       api.revision_exists(REPO, "main"), api.revision_exists(REPO, "nope")],
        })
        """,
        REPO=REPO,
    )
    assert out["me"] == local_hub.username
    assert out["url"] == out["url_again"] == f"{local_hub.endpoint}/{REPO}"
    assert out["repo_id"] == REPO
    assert out["duplicate"] == ["HfHubHTTPError", 409]
    assert out["private"] is True and local_hub.is_private(REPO)
    assert out["sha"] == local_hub.head(REPO)
    assert out["siblings"] == [".gitattributes"]  # the Hub's "initial commit"
    assert out["anonymous"][0] == "RepositoryNotFoundError"
    assert out["missing_repo"] == ["RepositoryNotFoundError", 404]
    assert out["missing_rev"] == ["RevisionNotFoundError", 404]
    assert out["exists"] == [True, False, True, False]
    # The token from HF_TOKEN was sent; the token=False call sent none.
    whoami = local_hub.requests_to("/api/whoami-v2")
    assert [r.authorization for r in whoami] == [f"Bearer {DEFAULT_TOKEN}"]
    assert None in [r.authorization for r in local_hub.requests_to(f"/api/models/{REPO}", "GET")]


def test_writes_without_token_are_rejected(local_hub: LocalHubServer, hf_client: HubClient):
    result = hf_client.run_process(
        "from huggingface_hub import HfApi\nHfApi().create_repo(REPO)\n", REPO=REPO, token=None
    )
    assert result.returncode != 0
    assert "401" in result.stderr
    assert not local_hub.repo_exists(REPO)


def test_invalid_readme_metadata_is_rejected_before_anything_is_uploaded(
    local_hub: LocalHubServer, hf_client: HubClient, tmp_path
):
    folder = tmp_path / "model"
    make_folder(folder, {"README.md": b"---\nlicense: [unclosed\n---\n# Tiny\n"})
    result = hf_client.run_process(UPLOAD, REPO=REPO, FOLDER=str(folder), MESSAGE="m")
    assert result.returncode != 0
    assert "ValueError: Invalid metadata in README.md" in result.stderr
    assert local_hub.commit_count(REPO) == 1 and local_hub.lfs_put_count == 0


def test_upload_folder_then_download_latest_and_pinned(local_hub: LocalHubServer, hf_client: HubClient, tmp_path):
    folder = tmp_path / "model"
    files = make_folder(folder)
    first = upload(hf_client, folder)

    # Server-side view: one commit on top of "initial commit", LFS decided by pattern and by size.
    assert first["oid"] == local_hub.head(REPO)
    assert local_hub.commit_count(REPO) == 2
    assert local_hub.files(REPO) == {".gitattributes": local_hub.file_bytes(REPO, ".gitattributes"), **files}
    assert local_hub.file_info(REPO, "model.safetensors")["lfs"] is True
    assert local_hub.file_info(REPO, "data/big_vocab.txt")["lfs"] is True
    assert local_hub.file_info(REPO, "config.json")["lfs"] is False
    assert local_hub.file_info(REPO, "model.safetensors")["sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert local_hub.lfs_bytes_uploaded == LFS_SIZE
    assert local_hub.yaml_validations >= 1  # README.md metadata went through /api/validate-yaml

    # Second commit changes the config only.
    (folder / "config.json").write_bytes(b'{"model_type": "tiny", "hidden_size": 16}\n')
    second = upload(hf_client, folder, message="Bigger config")
    assert second["oid"] != first["oid"] and local_hub.commit_count(REPO) == 3

    # Download with a cold cache.
    out = hf_client.run_json(
        """
        import hashlib
        from pathlib import Path
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        from huggingface_hub.errors import EntryNotFoundError
        api = HfApi()
        read = lambda p: Path(p).read_bytes().decode("latin-1")
        try:
            hf_hub_download(REPO, "nope.txt")
            missing = None
        except EntryNotFoundError as exc:
            missing = type(exc).__name__
        snap_main = snapshot_download(REPO)
        snap_pinned = snapshot_download(REPO, revision=PINNED)
        emit({
            "config_main": read(hf_hub_download(REPO, "config.json")),
            "config_pinned": read(hf_hub_download(REPO, "config.json", revision=PINNED)),
            "weights_pinned_path": hf_hub_download(REPO, "model.safetensors", revision=PINNED),
            "weights_pinned": read(hf_hub_download(REPO, "model.safetensors", revision=PINNED)),
            "missing": missing,
            "snap_main": snap_main, "snap_pinned": snap_pinned,
            "snap_main_files": sorted(str(p.relative_to(snap_main)) for p in Path(snap_main).rglob("*") if p.is_file()),
            "snap_pinned_config": read(Path(snap_pinned) / "config.json"),
            "snap_main_big": hashlib.sha256((Path(snap_main) / "data" / "big_vocab.txt").read_bytes()).hexdigest(),
            "files": api.list_repo_files(REPO),
            "commits": [c.title for c in api.list_repo_commits(REPO)],
            "commit_ids": [c.commit_id for c in api.list_repo_commits(REPO)],
            "root": sorted((type(e).__name__, e.path) for e in api.list_repo_tree(REPO)),
            "data_dir": sorted(e.path for e in api.list_repo_tree(REPO, path_in_repo="data")),
            "paths": sorted((type(e).__name__, e.path, getattr(e, "lfs", None) is not None)
                            for e in api.get_paths_info(REPO, ["config.json", "sub", "model.safetensors", "missing"])),
            "refs": [(b.name, b.target_commit) for b in api.list_repo_refs(REPO).branches],
            "file_exists": [api.file_exists(REPO, "sub/notes.txt"), api.file_exists(REPO, "sub/other.txt")],
        })
        """,
        REPO=REPO,
        PINNED=first["oid"],
        hf_home=tmp_path / "cold_cache",
    )
    assert json.loads(out["config_main"])["hidden_size"] == 16
    assert json.loads(out["config_pinned"])["hidden_size"] == 8
    assert out["weights_pinned"].encode("latin-1") == WEIGHTS
    # The cache blob of an LFS file is named after its sha256 (X-Linked-Etag).
    assert Path(out["weights_pinned_path"]).resolve().name == hashlib.sha256(WEIGHTS).hexdigest()
    assert out["missing"] == "RemoteEntryNotFoundError"
    assert Path(out["snap_main"]).name == second["oid"]
    assert Path(out["snap_pinned"]).name == first["oid"]
    assert out["snap_main_files"] == sorted([".gitattributes", *files])
    assert json.loads(out["snap_pinned_config"])["hidden_size"] == 8
    assert out["snap_main_big"] == hashlib.sha256(BIG_TEXT).hexdigest()
    assert sorted(out["files"]) == sorted([".gitattributes", *files])
    assert out["commits"] == ["Bigger config", "Add tiny model", "initial commit"]
    assert out["commit_ids"][:2] == [second["oid"], first["oid"]]
    assert out["root"] == sorted([
        ["RepoFile", ".gitattributes"], ["RepoFile", "README.md"], ["RepoFile", "config.json"],
        ["RepoFile", "model.safetensors"], ["RepoFolder", "data"], ["RepoFolder", "sub"],
    ])
    assert out["data_dir"] == ["data/big_vocab.txt"]
    assert out["paths"] == [
        ["RepoFile", "config.json", False], ["RepoFile", "model.safetensors", True], ["RepoFolder", "sub", False],
    ]
    assert out["refs"] == [["main", second["oid"]]]
    assert out["file_exists"] == [True, False]
    # Files were really fetched from this server at the pinned commit; the weights, identical in both
    # commits, were fetched once (the cache dedupes blobs by X-Linked-Etag).
    assert (REPO, first["oid"], "config.json") in local_hub.downloads
    assert [d[2] for d in local_hub.downloads].count("model.safetensors") == 1


def test_resolve_supports_range_requests_and_lfs_headers(local_hub: LocalHubServer):
    sha = local_hub.commit_files(REPO, {"model.safetensors": WEIGHTS, "config.json": CONFIG})
    url = f"{local_hub.endpoint}/{REPO}/resolve/main/model.safetensors"

    head = urllib.request.urlopen(urllib.request.Request(url, method="HEAD"))
    assert head.headers["X-Repo-Commit"] == sha
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
    assert int(head.headers["X-Linked-Size"]) == int(head.headers["Content-Length"]) == len(WEIGHTS)

    partial = urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=100-199"}))
    assert partial.status == 206
    assert partial.headers["Content-Range"] == f"bytes 100-199/{len(WEIGHTS)}"
    assert partial.read() == WEIGHTS[100:200]

    tail = urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=8000-"}))
    assert tail.read() == WEIGHTS[8000:]

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{local_hub.endpoint}/{REPO}/resolve/main/absent.bin")
    assert err.value.code == 404
    assert err.value.headers["X-Error-Code"] == "EntryNotFound"
    assert err.value.headers["X-Repo-Commit"] == sha


def test_identical_second_upload_creates_no_commit_and_uploads_no_weights(
    local_hub: LocalHubServer, hf_client: HubClient, tmp_path
):
    folder = tmp_path / "model"
    make_folder(folder)
    first = upload(hf_client, folder)
    commits, lfs_bytes, puts = local_hub.commit_count(REPO), local_hub.lfs_bytes_uploaded, local_hub.lfs_put_count
    assert lfs_bytes == LFS_SIZE and puts == 2

    again = upload(hf_client, folder, message="Same again")
    assert again["oid"] == first["oid"] == local_hub.head(REPO)
    assert local_hub.commit_count(REPO) == commits
    assert local_hub.commits_created == 1
    assert local_hub.lfs_bytes_uploaded == lfs_bytes
    assert local_hub.lfs_put_count == puts

    # Touching only a text file commits only that file, still without re-sending weights.
    (folder / "sub" / "notes.txt").write_bytes(b"new notes\n")
    third = upload(hf_client, folder, message="Edit notes")
    assert third["oid"] != first["oid"]
    assert local_hub.commit_count(REPO) == commits + 1
    assert local_hub.lfs_bytes_uploaded == lfs_bytes and local_hub.lfs_put_count == puts
    assert local_hub.file_bytes(REPO, "sub/notes.txt") == b"new notes\n"
    assert local_hub.file_bytes(REPO, "model.safetensors", revision=first["oid"]) == WEIGHTS


def test_create_pr_leaves_main_untouched(local_hub: LocalHubServer, hf_client: HubClient, tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    base = upload(hf_client, folder)
    new_weights = WEIGHTS[::-1]
    (folder / "model.safetensors").write_bytes(new_weights)

    out = hf_client.run_json(
        """
        from pathlib import Path
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        pr = api.upload_folder(repo_id=REPO, folder_path=FOLDER, commit_message="Swap weights", create_pr=True)
        pr2 = api.upload_file(repo_id=REPO, path_or_fileobj=b"x", path_in_repo="x.txt", create_pr=True)
        refs = api.list_repo_refs(REPO, include_pull_requests=True)
        emit({
            "pr_url": pr.pr_url, "pr_revision": pr.pr_revision, "pr_num": pr.pr_num, "oid": pr.oid,
            "pr2_num": pr2.pr_num,
            "pulls": sorted(r.ref for r in refs.pull_requests),
            "pr_weights": Path(hf_hub_download(REPO, "model.safetensors", revision=pr.pr_revision)).read_bytes().hex(),
            "main_weights": Path(hf_hub_download(REPO, "model.safetensors")).read_bytes().hex(),
        })
        """,
        REPO=REPO,
        FOLDER=str(folder),
    )
    assert out["pr_url"] == f"{local_hub.endpoint}/{REPO}/discussions/1"
    assert out["pr_revision"] == "refs/pr/1" and out["pr_num"] == 1 and out["pr2_num"] == 2
    assert out["pulls"] == ["refs/pr/1", "refs/pr/2"]
    assert local_hub.head(REPO) == base["oid"]  # main did not move
    assert local_hub.head(REPO, "refs/pr/1") == out["oid"]
    assert local_hub.file_bytes(REPO, "model.safetensors", revision="refs/pr/1") == new_weights
    assert local_hub.file_bytes(REPO, "model.safetensors") == WEIGHTS
    assert bytes.fromhex(out["pr_weights"]) == new_weights
    assert bytes.fromhex(out["main_weights"]) == WEIGHTS
    assert local_hub.lfs_bytes_uploaded == LFS_SIZE + len(new_weights)  # only the changed weights were sent


def test_failed_lfs_upload_leaves_repo_unchanged_and_rerun_completes(
    local_hub: LocalHubServer, hf_client: HubClient, tmp_path
):
    folder = tmp_path / "model"
    files = make_folder(folder)
    local_hub.create_repo(REPO)
    before = local_hub.head(REPO)
    local_hub.fail_next_lfs_put = True

    failed = hf_client.run_json(
        """
        from huggingface_hub import HfApi
        try:
            HfApi().upload_folder(repo_id=REPO, folder_path=FOLDER)
            emit({"error": None})
        except Exception as exc:
            emit({"error": type(exc).__name__, "cause": repr(exc.__cause__)})
        """,
        REPO=REPO,
        FOLDER=str(folder),
    )
    assert failed["error"] == "RuntimeError" and "Injected failure" in failed["cause"]
    assert local_hub.fail_next_lfs_put is False  # consumed
    assert local_hub.head(REPO) == before and local_hub.commit_count(REPO) == 1
    assert set(local_hub.files(REPO)) == {".gitattributes"}

    rerun = upload(hf_client, folder)
    assert rerun["oid"] == local_hub.head(REPO) and local_hub.commit_count(REPO) == 2
    assert {k: v for k, v in local_hub.files(REPO).items() if k != ".gitattributes"} == files
    # Whatever made it before the failure is not sent twice.
    assert local_hub.lfs_bytes_uploaded == LFS_SIZE


def test_failed_commit_rerun_does_not_reupload_weights(local_hub: LocalHubServer, hf_client: HubClient, tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    local_hub.create_repo(REPO)
    local_hub.fail_next("commit", status=500)  # the commit POST is not retried by the client
    result = hf_client.run_process(UPLOAD, REPO=REPO, FOLDER=str(folder), MESSAGE="m")
    assert result.returncode != 0 and "500" in result.stderr
    assert local_hub.commit_count(REPO) == 1
    assert local_hub.lfs_bytes_uploaded == LFS_SIZE  # weights reached storage before the commit failed

    upload(hf_client, folder)
    assert local_hub.commit_count(REPO) == 2
    assert local_hub.lfs_bytes_uploaded == LFS_SIZE
    assert local_hub.file_bytes(REPO, "model.safetensors") == WEIGHTS


def test_transient_5xx_on_lfs_put_is_retried_by_the_client(local_hub: LocalHubServer, hf_client: HubClient, tmp_path):
    folder = tmp_path / "model"
    (folder).mkdir()
    (folder / "model.safetensors").write_bytes(WEIGHTS)
    local_hub.fail_next("lfs_put", status=503)
    upload(hf_client, folder)  # http_backoff sleeps 1 s and retries
    assert local_hub.lfs_put_count == 2
    assert local_hub.file_bytes(REPO, "model.safetensors") == WEIGHTS


def test_parent_commit_guard(local_hub: LocalHubServer, hf_client: HubClient):
    stale = local_hub.commit_files(REPO, {"a.txt": b"1"})
    local_hub.commit_files(REPO, {"a.txt": b"2"})
    out = hf_client.run_json(
        """
        from huggingface_hub import HfApi, CommitOperationAdd
        api = HfApi()
        def commit(parent):
            try:
                return api.create_commit(REPO, [CommitOperationAdd("a.txt", b"3")], commit_message="c",
                                         parent_commit=parent).oid
            except Exception as exc:
                return f"{type(exc).__name__}:{exc.response.status_code}"
        emit({"stale": commit(STALE), "fresh": commit(api.model_info(REPO).sha)})
        """,
        REPO=REPO,
        STALE=stale,
    )
    assert out["stale"] == "HfHubHTTPError:412"
    assert out["fresh"] == local_hub.head(REPO)
    assert local_hub.file_bytes(REPO, "a.txt") == b"3"
    assert local_hub.commit_count(REPO) == 4  # initial + 2 seeded + 1 accepted


def test_transformers_push_to_hub_and_from_pretrained_latest_and_pinned(
    local_hub: LocalHubServer, hf_client: HubClient
):
    out = hf_client.run_json(
        """
        import torch
        from transformers import AutoModel, BertConfig, BertModel
        from huggingface_hub import HfApi
        cfg = BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=16)
        torch.manual_seed(0); v1 = BertModel(cfg)
        c1 = v1.push_to_hub(REPO, commit_message="v1").oid
        torch.manual_seed(1); v2 = BertModel(cfg)
        c2 = v2.push_to_hub(REPO, commit_message="v2").oid
        latest = AutoModel.from_pretrained(REPO)
        pinned = AutoModel.from_pretrained(REPO, revision=c1)
        same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        emit({"c1": c1, "c2": c2, "latest_is_v2": same(latest, v2), "pinned_is_v1": same(pinned, v1),
              "latest_is_v1": same(latest, v1)})
        """,
        REPO=REPO,
        timeout=180,
    )
    assert out == {"c1": out["c1"], "c2": local_hub.head(REPO), "latest_is_v2": True, "pinned_is_v1": True,
                   "latest_is_v1": False}
    assert local_hub.file_info(REPO, "model.safetensors")["lfs"] is True
    weight_downloads = {sha for repo, sha, path in local_hub.downloads if path == "model.safetensors"}
    assert weight_downloads == {out["c1"], out["c2"]}
