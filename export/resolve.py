"""Stage 1 of the exporter: find the source (a local folder or a Hub repo id) and classify it: its family, and whether
it is HF-format or a family's original layout (converted in stage 2). Everything that can be checked without the
weights is checked here: the config, the processor files, the weight files' framing."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..registry import families, family_named, family_of_checkpoint
from .weights import check_weight_files, weight_files

if TYPE_CHECKING:
    from ..family import FlowCutFamily

logger = logging.getLogger(__name__)

METADATA_PATTERNS = ["*.json", "*.jinja", "*.model", "*.txt", "*.md", "*.tiktoken"]
"""The files of a checkpoint that are not weights: configs, tokenizer files, chat template, card."""


@dataclass
class ResolvedSource:
    """Stage 1's result: where the source files are and what they are."""

    local_dir: Path
    kind: str  # "hf" or "original"
    config: dict[str, Any]
    repo_id: str | None = None
    commit: str | None = None
    base_name: str = "model"
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    family_name: str = ""
    base_model: str | None = None
    """The Hub id the weights come from, where it can be told (see :func:`find_base_model`)."""
    base_model_origin: str | None = None
    """Where :attr:`base_model` was found, in words for the log."""
    download_commit: str | None = None
    """For a folder that ``hf download --local-dir`` filled: the commit it downloaded."""
    converted_from_original: bool = False
    """Set by :func:`flowcut_hf.export.convert.convert` on the HF-layout copy of an original-layout checkpoint."""
    source_weight_files: list[str] = field(default_factory=list)
    """The names of the source's weight files (and their index), as a dry run lists them."""
    requested_revision: str | None = None
    """``--revision`` as given (a branch, tag or commit); :attr:`commit` is what it resolved to."""

    @property
    def family(self) -> FlowCutFamily:
        return family_named(self.family_name)

    @property
    def hf_config(self) -> dict[str, Any]:
        """The source's config in the HF layout. An original-layout source is only converted later; its family says
        what its HF config will hold (what the amounts are checked against)."""
        return self.config if self.kind == "hf" else self.family.original_hf_config(self.config)



def looks_like_repo_id(source: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None


def resolve(source: str | os.PathLike, revision: str | None = None, *, metadata_only: bool = False) -> ResolvedSource:
    """Finds the source checkpoint and classifies it. Hub repos are downloaded with huggingface_hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"--revision applies to Hub repos; {source} is a local folder.")
        local_dir, repo_id, commit, repo_files = path.resolve(), None, None, None
    elif path.exists():
        raise ValueError(f"{source} is a file; give the folder that holds config.json, or a Hub repo id.")
    elif looks_like_repo_id(str(source)):
        local_dir, repo_id, commit, repo_files = _download(str(source), revision, metadata_only)
    else:
        raise FileNotFoundError(f"Source {source!r} is neither an existing folder nor a Hub repo id (owner/name).")

    config_path = local_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{source} has no config.json; is it a model checkpoint?")
    config = json.loads(config_path.read_text())
    family = family_of_original_checkpoint(config, str(source))
    if family is not None:
        kind = "original"
    else:
        family = family_of_checkpoint(config, str(source))
        kind = "hf"
        check_processor_files(local_dir, str(source))
    if repo_files is None or not metadata_only:
        # The weights are here: a damaged file is reported now, by name, not as a failed check hours later.
        files, _ = weight_files(local_dir, allow_pickle=True, what="checkpoint")  # raises if there are none at all
        check_weight_files(files)
        index_names = [p.name for p in local_dir.glob("*.index.json") if p.name.startswith(("model", "pytorch_model"))]
        source_weights = sorted({*(f.name for f in files), *index_names})
    else:
        source_weights = sorted(name for name in repo_files if _is_weight_file_name(name))
    base_name = (repo_id.split("/")[-1] if repo_id else local_dir.name) or "model"
    resolved = ResolvedSource(local_dir, kind, config, repo_id, commit, base_name, family_name=family.name)
    resolved.source_weight_files = source_weights
    resolved.requested_revision = revision
    card_base_model = _read_source_card(resolved)
    resolved.base_model, resolved.base_model_origin = find_base_model(resolved, card_base_model)
    if repo_id is None:
        resolved.download_commit = downloaded_commit(local_dir)
    return resolved


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken")


def check_processor_files(local_dir: Path, source: str) -> None:
    """A variant carries the base's processor (tokenizer and image processor), so a source without one is refused now,
    by what it lacks, not by a traceback from the write stage."""
    missing = []
    processor_config = local_dir / "processor_config.json"
    has_image_processor = (local_dir / "preprocessor_config.json").is_file() or (
        processor_config.is_file() and "image_processor" in json.loads(processor_config.read_text())
    )
    if not has_image_processor:
        missing.append("image processor (preprocessor_config.json, or processor_config.json with image_processor)")
    if not any((local_dir / name).is_file() for name in TOKENIZER_FILES) and not list(local_dir.glob("*.tiktoken")):
        missing.append(f"tokenizer ({' or '.join(TOKENIZER_FILES[:2])})")
    if missing:
        raise ValueError(
            f"{source} has no {' and no '.join(missing)}; a variant ships the base's processor. Save it beside the "
            "weights: processor.save_pretrained(FOLDER) (or AutoProcessor.from_pretrained(BASE).save_pretrained(FOLDER))."
        )


def find_base_model(resolved: ResolvedSource, card_base_model: str | None) -> tuple[str | None, str | None]:
    """The Hub id of the source's weights and where it was found: the source repo itself, the config's
    ``_name_or_path`` when it is a repo id, or the folder's model card (``base_model``). ``(None, None)`` when none
    tells it (``hf download``'s metadata records the commit, not the repo)."""
    if resolved.repo_id:
        return resolved.repo_id, "the source repo"
    name_or_path = str(resolved.config.get("_name_or_path") or "")
    if looks_like_repo_id(name_or_path) and not Path(name_or_path).is_absolute():
        return name_or_path, "the config's _name_or_path"
    if card_base_model:
        return card_base_model, "the base_model of the folder's model card"
    return None, None


def downloaded_commit(local_dir: Path) -> str | None:
    """The commit ``hf download --local-dir`` fetched ``config.json`` from, if it left its metadata and the file is
    unchanged since."""
    metadata = local_dir / ".cache" / "huggingface" / "download" / "config.json.metadata"
    try:
        commit, _etag, timestamp = metadata.read_text().splitlines()[:3]
        unchanged = (local_dir / "config.json").stat().st_mtime - 1 <= float(timestamp)
    except (OSError, ValueError):
        return None
    return commit if unchanged and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _download(repo_id: str, revision: str | None, metadata_only: bool) -> tuple[Path, str, str | None, list[str]]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(f"Hub repo {repo_id!r} does not exist or is not visible with your token.") from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"Hub repo {repo_id!r} has no revision {revision!r}.") from error
    names = [sibling.rfilename for sibling in info.siblings or []]
    has_safetensors = any(name.endswith(".safetensors") for name in names)
    # One weight format is enough: pickles are fetched only when there are no safetensors.
    weight_patterns = ["*.safetensors"] if has_safetensors else ["*.bin"]
    patterns = METADATA_PATTERNS if metadata_only else METADATA_PATTERNS + weight_patterns
    local_dir = snapshot_download(repo_id, revision=info.sha, allow_patterns=patterns)
    return Path(local_dir), repo_id, info.sha, names


def _is_weight_file_name(name: str) -> bool:
    return "/" not in name and (
        name.endswith(".safetensors") or name in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
        or (name.startswith("pytorch_model") and name.endswith(".bin"))
    )


def _read_source_card(resolved: ResolvedSource) -> str | None:
    """Reads the license (into ``resolved``) and the ``base_model`` of the source folder's model card, if it has one."""
    readme = resolved.local_dir / "README.md"
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data
    except Exception:  # a base card that does not parse must not block the export; the license is then unknown
        logger.warning("Could not parse %s; the variant card will not state a license.", readme)
        return None
    resolved.license = data.get("license")
    resolved.license_name = data.get("license_name")
    resolved.license_link = data.get("license_link")
    base_model = data.get("base_model")
    if isinstance(base_model, list) and len(base_model) == 1:
        base_model = base_model[0]
    return base_model if isinstance(base_model, str) and looks_like_repo_id(base_model) else None


def family_of_original_checkpoint(config: dict[str, Any], source: str) -> FlowCutFamily | None:
    """The family whose original (non-transformers) layout ``config`` is, if any; a family that recognises a layout
    it cannot convert says so in a ValueError."""
    for family in families():
        if family.is_original_checkpoint(config, source):
            return family
    return None


__all__ = ["METADATA_PATTERNS", "ResolvedSource", "check_processor_files", "find_base_model", "looks_like_repo_id", "resolve"]
