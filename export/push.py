"""Stage 6 of the exporter: a verified variant folder goes to its Hub repo with ``HfApi.create_repo`` and
``upload_folder`` (not ``push_to_hub``, which would replace the card and leave the processor out). Unchanged files are
not uploaded again; ``--private`` is honoured on new and existing repos."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .options import ExportOptions
from .resolve import ResolvedSource


class PushError(RuntimeError):
    """Creating the repo or uploading to it failed; the exported folder itself is complete."""


def push_variant(
    folder: Path, repo_id: str, *, private: bool, commit_message: str, create_pr: bool,
    log: Callable[[str], None] = print,
) -> tuple[str | None, str | None]:
    """Creates ``repo_id`` if needed and uploads ``folder``. Unchanged files are not uploaded again, and a run with
    nothing changed makes no commit. The token comes from HF_TOKEN or the login cache.

    ``private``: a new repo is created private, and an existing public repo is made private before anything is
    uploaded (or nothing is uploaded). An existing private repo stays private either way."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and not api.repo_info(repo_id, repo_type="model").private:
            log(f"{repo_id}: the repo exists and is public; making it private before the upload, as --private asks")
            api.update_repo_settings(repo_id, private=True, repo_type="model")
            if not api.repo_info(repo_id, repo_type="model").private:
                raise PushError(f"{repo_id} is still public after asking the Hub to make it private; nothing was uploaded.")
        info = api.upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type="model", commit_message=commit_message, create_pr=create_pr
        )
    except PushError:
        raise
    except Exception as error:
        cause = error.__cause__ if isinstance(error, RuntimeError) and error.__cause__ else error
        raise PushError(
            f"pushing {folder} to {repo_id} failed ({type(cause).__name__}: {cause}). The exported folder is "
            "complete; re-run the same command to finish the push: files already on the Hub are not uploaded again."
        ) from error
    return getattr(info, "oid", None), getattr(info, "pr_url", None) or getattr(info, "commit_url", None)


def announced_visibility(repo_id: str, private: bool) -> str:
    """What a push to ``repo_id`` will leave: the visibility, and whether the repo is new or changes."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    wanted = "private" if private else "public"
    try:
        exists_private = HfApi().repo_info(repo_id, repo_type="model").private
    except RepositoryNotFoundError:
        return f"a new {wanted} repo"
    except Exception as error:  # offline, no token: the real run decides the same way, once it can reach the Hub
        return f"{wanted} if new (could not check whether it exists: {type(error).__name__})"
    if exists_private:
        return "an existing private repo, which stays private"
    if private:
        return "an existing public repo, made private before the upload (--private)"
    return "an existing public repo"


def push_commit_message(resolved: ResolvedSource, options: ExportOptions) -> str:
    """The commit message of a push (the dry run announces this one)."""
    base = options.base_model or resolved.base_model or resolved.base_name
    return options.commit_message or f"Add FlowCut variant of {base}"


__all__ = ["PushError", "announced_visibility", "push_commit_message", "push_variant"]
