"""The exporter: a base checkpoint in, FlowCut variants out (to folders, and optionally to the Hub).

Sources are HF-format checkpoints of a FlowCut family (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL; see
:mod:`flowcut_hf.registry`, which
carries everything that differs between families) or original-LLaVA-1.5 checkpoints, converted on the way.

The pipeline is a sequence of named stages, each a plain function:

1. :func:`resolve` finds the source (local folder or Hub repo id) and classifies it (its family; HF-format or
   original LLaVA).
2. :func:`convert` turns an original-LLaVA checkpoint into the HF layout (streamed, one tensor at a time).
3. :func:`write_variant` writes one variant folder: weights copied or hard-linked byte-identical, ``config.json``
   with the FlowCut fields and ``auto_map``, the remote-code files verbatim, processor, tokenizer, generation config.
4. The check loads the folder as remote code in a clean subprocess (keys, placeholder and kept-token counts, and one
   forward pass equal to the library's own classes on the same loaded instance), in three steps:
   :func:`prepare_check`, :func:`flowcut_hf.export.checks.run_check` (standard library only) and :func:`judge_check`.
5. :func:`write_card` renders README.md.
6. :func:`push_variant` creates the repo and uploads the folder.

:func:`export` runs them: :func:`prepare_export` (stages 1-3 for every variant), the checks, then
:func:`finish_export` (stages 4-6). ``flowcut-hf export`` runs the same three parts in separate processes, so that
the process that waits on a check holds no torch beside it (:mod:`flowcut_hf.export_cli`). Every variant is assembled
in a temporary folder beside its destination and renamed into place only after all of them verified, so an
interrupted export never leaves a half-written variant. The exporter never loads model weights itself: tensors are
copied as files, and the checks that need the model run in subprocesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..modeling.configuration_flowcut_llava import DEFAULT_TARGET_NUM
from ..modeling.flowcut_remote_code import copy_remote_code_files
from ..registry import FAMILIES, FlowCutFamily, family_for_config, family_named, family_of_checkpoint
from .checks import CheckJob, VerificationError, run_check
from .convert import (
    check_weight_files, convert_original_llava, is_original_llava, load_pickle_state, pickle_refusal, weight_files,
)
from .options import DEFAULT_NAME_PATTERN, VFLOWOPT_NAME_PATTERN, ExportOptions

logger = logging.getLogger(__name__)

METADATA_PATTERNS = ["*.json", "*.jinja", "*.model", "*.txt", "*.md", "*.tiktoken"]
MANIFEST_NAME = ".flowcut-export.json"


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
    family_name: str = "llava"
    base_model: str | None = None
    """The Hub id the weights come from, where it can be told (see :func:`find_base_model`)."""
    base_model_origin: str | None = None
    """Where :attr:`base_model` was found, in words for the log."""
    download_commit: str | None = None
    """For a folder that ``hf download --local-dir`` filled: the commit it downloaded."""
    converted_from_original: bool = False
    """Set by :func:`convert` on the HF-layout copy of an original-LLaVA checkpoint."""
    source_weight_files: list[str] = field(default_factory=list)
    """The names of the source's weight files (and their index), as a dry run lists them."""
    requested_revision: str | None = None
    """``--revision`` as given (a branch, tag or commit); :attr:`commit` is what it resolved to."""

    @property
    def family(self) -> FlowCutFamily:
        return family_named(self.family_name)

    @property
    def hf_config(self) -> dict[str, Any]:
        """The source's config in the HF layout. An original-LLaVA source is only converted later; its tower is the
        CLIP-L/336 of every LLaVA-1.5, which the stock config's defaults describe."""
        if self.kind == "hf":
            return self.config
        # The depth is the original's own (its config is the language model's); presets are fitted to it.
        text_config = {"model_type": "llama", "num_hidden_layers": self.config.get("num_hidden_layers", 32)}
        return {"model_type": self.family.model_type, "vision_feature_select_strategy": "default", "text_config": text_config}


@dataclass(frozen=True)
class VFlowOptPreset:
    """VFlowOpt settings for a variant: a released preset or a search result (``flowcut-hf search``)."""

    label: str
    """The ``{n}`` of variant names (``10`` for the released 10% preset, the file's stem for a search result)."""
    settings: dict[str, Any]
    """The ``vflowopt_*`` config fields."""
    search: dict[str, Any] | None = None
    """How a searched preset was found (budget, trials, data, objective), recorded in the card."""
    budget: float | None = None
    """The share of visual tokens kept, averaged over the decoder layers."""
    source: str = ""
    """What the user named: ``10%`` or the preset file."""
    note: str | None = None
    """For a released preset, where its settings come from (the card says it)."""


def load_vflowopt_preset(spec: str, num_layers: int) -> VFlowOptPreset:
    """``spec`` is a released preset name (``10%``, ``25%``, ``50%``; moved to a language model of ``num_layers``
    decoder layers if it is not LLaVA-OneVision-7B's 28) or a preset JSON written by ``flowcut-hf search``."""
    from ..modeling.configuration_flowcut_llava_onevision import ONEVISION_PRESETS
    from ..modeling.vflowopt_core import PRESET_DEPTH, preset_for_depth, vflowopt_fields

    if spec in ONEVISION_PRESETS:
        budget = float(spec.rstrip("%")) / 100
        found = f"its settings are the authors' released {spec} preset, found by their optimizer on LLaVA-OneVision-7B"
        if num_layers == PRESET_DEPTH:
            source, note = spec, found + "."
        else:
            source = f"{spec} (moved to {num_layers} layers)"
            note = (
                f"{found} ({PRESET_DEPTH} decoder layers) and moved to this model's {num_layers} with the same budget "
                "(the stage layers scaled, the last stage's share solved); `flowcut-hf search` finds this model's own."
            )
        return VFlowOptPreset(
            spec.rstrip("%"), vflowopt_fields(preset_for_depth(spec, num_layers)), None, budget, source, note
        )
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"--preset {spec!r} is neither a released preset ({', '.join(ONEVISION_PRESETS)}) nor a preset JSON file"
        )
    data = json.loads(path.read_text())
    if data.get("method") != "vflowopt" or not isinstance(data.get("settings"), dict):
        raise ValueError(f"{path} is not a VFlowOpt preset (write one with `flowcut-hf search`)")
    search = data.get("search")
    return VFlowOptPreset(path.stem, dict(data["settings"]), search, (search or {}).get("budget"), path.name)


@dataclass(frozen=True)
class RetainedAmount:
    """How many visual tokens a variant keeps per image: a count, (Qwen) a share of each image's tokens, or (VFlowOpt)
    the stages of a preset."""

    target_num: int | None = None
    retain_ratio: float | None = None
    preset: VFlowOptPreset | None = None

    @property
    def label(self) -> str:
        """The ``{n}`` of variant names: ``64``, ``0.111`` for a ratio, ``10`` for VFlowOpt's 10% preset."""
        if self.preset is not None:
            return self.preset.label
        return str(self.target_num) if self.target_num is not None else f"{self.retain_ratio:g}"

    def describe(self, full: int) -> str:
        if self.preset is not None:
            budget = f", {self.preset.budget:.0%} of the visual tokens averaged over the layers" if self.preset.budget else ""
            return f"VFlowOpt preset {self.preset.source or self.preset.label}{budget}"
        if self.target_num is not None:
            return f"{self.target_num} of {full} visual tokens per image"
        return f"{self.retain_ratio:.1%} of each image's visual tokens"

    def fields(self) -> dict[str, Any]:
        """Short-named FlowCut settings (``target_num``, ``retain_ratio``) this amount sets."""
        if self.target_num is not None:
            return {"target_num": self.target_num}
        return {"target_num": None, "retain_ratio": self.retain_ratio}

    def retained(self, available: int) -> int:
        """What an image of ``available`` tokens keeps (the model's own rule)."""
        from ..modeling.flowcut_settings import FlowCutSettings

        return FlowCutSettings(True, self.target_num, retain_ratio=self.retain_ratio).retained(available)


@dataclass
class VariantPlan:
    amount: RetainedAmount
    name: str
    folder: Path
    repo_id: str | None

    @property
    def target_num(self) -> int | None:
        return self.amount.target_num


@dataclass
class VariantResult:
    plan: VariantPlan
    files: list[str] = field(default_factory=list)
    token_schedule: list[int] | list[list[int]] | None = None
    verification: dict[str, Any] | None = None
    """What verification measured on its check image (see :func:`verification_summary`); None if it did not run."""
    pushed_commit: str | None = None
    pushed_url: str | None = None
    reused: bool = False


# --------------------------------------------------------------------------------------------------- 1. resolve


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
    if is_original_llava(config):
        kind, family = "original", family_named("llava")
        if config.get("image_aspect_ratio") == "anyres" or str(config.get("mm_patch_merge_type", "")).startswith("spatial"):
            raise ValueError(
                f"{source} is an original-format LLaVA-NeXT (anyres) checkpoint, which the exporter does not convert; "
                "export its HF-format copy instead (llava-hf publishes them, e.g. llava-hf/llava-v1.6-vicuna-7b-hf)."
            )
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


# --------------------------------------------------------------------------------------------------- 2. convert


def convert(resolved: ResolvedSource, work_dir: Path, *, vision_tower: Path | None, allow_pickle: bool) -> ResolvedSource:
    """Original-LLaVA sources become an HF-format folder in ``work_dir``; HF-format sources pass through."""
    if resolved.kind == "hf":
        return resolved
    converted_dir = work_dir / "converted"
    convert_original_llava(
        resolved.local_dir, converted_dir, vision_tower_dir=vision_tower, allow_pickle=allow_pickle
    )
    config = json.loads((converted_dir / "config.json").read_text())
    return replace(resolved, local_dir=converted_dir, kind="hf", config=config, converted_from_original=True)


# --------------------------------------------------------------------------------------------------- 3. write


def image_tokens_per_image(config: dict[str, Any]) -> int:
    """Visual tokens of an image without pruning (for LLaVA-NeXT, the most an image can have)."""
    family = family_for_config(config)
    return family.unpruned_image_tokens(family.config_from_dict(config))


def _vflowopt_amounts(specs: Sequence[str], config: dict[str, Any]) -> list[RetainedAmount]:
    from ..modeling.vflowopt_core import VFLOWOPT_FIELD_VALIDATORS, vflowopt_settings

    amounts = []
    num_layers = family_for_config(config).config_from_dict(config).text_config.num_hidden_layers
    for spec in specs:
        preset = load_vflowopt_preset(spec, num_layers)
        unknown = sorted(set(preset.settings) - set(VFLOWOPT_FIELD_VALIDATORS))
        if unknown:
            raise ValueError(f"preset {spec} has fields that are not VFlowOpt settings: {unknown}")
        for name, value in preset.settings.items():
            VFLOWOPT_FIELD_VALIDATORS[name](value)
        settings = vflowopt_settings(SimpleNamespace(**preset.settings))
        if settings.llm_layers and settings.llm_layers[-1] >= num_layers:
            raise ValueError(f"preset {spec}: vflowopt_llm_layers {list(settings.llm_layers)} reach past the {num_layers} layers")
        amount = RetainedAmount(preset=preset)
        if any(other.label == amount.label for other in amounts):
            raise ValueError(f"--preset {spec} is given twice.")
        amounts.append(amount)
    return amounts


def validate_targets(
    target_nums: Sequence[int], config: dict[str, Any], retain_ratios: Sequence[float] = (),
    vflowopt_presets: Sequence[str] = (),
) -> list[RetainedAmount]:
    """The variants' amounts: every ``--target-num``, then every ``--retain-ratio`` (Qwen families only)."""
    family = family_for_config(config)
    if vflowopt_presets:
        if "vflowopt" not in family.methods:
            supported = ", ".join(f.display_name for f in FAMILIES if "vflowopt" in f.methods)
            raise ValueError(f"--method vflowopt applies to {supported}; {family.display_name} runs {list(family.methods)}.")
        if target_nums or retain_ratios:
            raise ValueError("--target-num and --retain-ratio are FlowCut's; a VFlowOpt export takes --preset.")
        return _vflowopt_amounts(vflowopt_presets, config)
    if "flowcut" not in family.methods or family.name == "llava_onevision":
        # FlowCut on LLaVA-OneVision runs in process (flowcut_hf.flowcut, bench); its export check is not written yet.
        raise ValueError(
            f"{family.display_name} is exported with VFlowOpt: --method vflowopt --preset 10% (or a preset JSON from "
            "`flowcut-hf search`)."
        )
    if not target_nums and not retain_ratios:
        what = "--target-num or --retain-ratio" if family.default_retain_ratio is not None else "--target-num"
        raise ValueError(f"Give at least one {what}.")
    if retain_ratios and family.default_retain_ratio is None:
        raise ValueError(
            f"--retain-ratio applies to Qwen2-VL / Qwen2.5-VL; {family.display_name} keeps a count per image: use "
            "--target-num."
        )
    full = image_tokens_per_image(config)
    amounts: list[RetainedAmount] = []
    for target in target_nums:
        if isinstance(target, bool) or not isinstance(target, int) or target < 1:
            raise ValueError(
                f"--target-num must be a whole number of visual tokens kept per image, at least 1 (e.g. 64), got "
                f"{target!r}. To publish the unpruned model, push the base checkpoint itself."
            )
        with flags_in_message("flowcut_target_num", "--target-num"):
            family.field_validators["flowcut_target_num"](target)
        if target >= full:
            raise ValueError(
                f"--target-num {target} prunes nothing: this {family.display_name} model gives at most {full} visual "
                f"tokens per image; choose a value below {full}."
            )
        amounts.append(RetainedAmount(target_num=target))
    for ratio in retain_ratios:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio:
            raise ValueError(f"--retain-ratio must be a share of each image's tokens between 0 and 1 (e.g. 0.111), got {ratio!r}.")
        with flags_in_message("flowcut_retain_ratio", "--retain-ratio"):
            family.field_validators["flowcut_retain_ratio"](ratio)
        if ratio >= 1:
            raise ValueError("--retain-ratio 1.0 prunes nothing; choose a share below 1 (the paper uses 0.111 to 0.333).")
        amounts.append(RetainedAmount(retain_ratio=float(ratio)))
    for index, amount in enumerate(amounts):
        if amount in amounts[:index]:
            flag = "--target-num" if amount.target_num is not None else "--retain-ratio"
            raise ValueError(f"{flag} {amount.label} is given twice.")
    return amounts


@contextlib.contextmanager
def flags_in_message(field_name: str, flag: str):
    """Re-raises a config validator's ValueError in the command line's words: the flag instead of the config field,
    and no advice about config fields the command does not take."""
    try:
        yield
    except ValueError as error:
        message = str(error).replace(field_name, flag).replace(" To switch pruning off, set flowcut_enabled=False instead.", "")
        raise ValueError(message) from None


def flowcut_config(config: dict[str, Any], amount: RetainedAmount | int) -> dict[str, Any]:
    """The variant's ``config.json``: the source's, with the family's FlowCut fields and ``auto_map``."""
    family = family_for_config(config)
    settings = {
        name: config.get(f"flowcut_{name}", default)
        for name, default in (("prune_interval", 2), ("history_weight", 0.5), ("llm_prune_layer", 1))
        if f"flowcut_{name}" in family.field_validators
    }
    amount = amount if isinstance(amount, RetainedAmount) else RetainedAmount(target_num=amount)
    updated = dict(config)
    if amount.preset is not None:
        updated.update(amount.preset.settings, pruning_method="vflowopt", vflowopt_enabled=True, auto_map=dict(family.auto_map))
        updated["architectures"] = [family.stock_model_class.__name__]
        return updated
    fields = amount.fields()
    updated.update(
        family.flowcut_fields(fields.pop("target_num"), enabled=True, **fields, **settings), auto_map=dict(family.auto_map)
    )
    updated["architectures"] = [family.stock_model_class.__name__]
    return updated


def link_or_copy(source: Path, destination: Path) -> None:
    """Hard-links when both sit on one filesystem (no bytes copied), else copies; either way byte-identical."""
    try:
        os.link(source.resolve(), destination)
    except OSError:
        shutil.copyfile(source, destination)


def write_variant(
    resolved: ResolvedSource, amount: RetainedAmount | int, destination: Path, *, allow_pickle: bool
) -> list[str]:
    """Writes one complete variant into ``destination`` (which must not exist). Never loads a weight tensor
    except to convert pickle ``.bin`` shards, one at a time, when ``allow_pickle`` is given."""
    amount = amount if isinstance(amount, RetainedAmount) else RetainedAmount(target_num=amount)
    family = resolved.family
    destination.mkdir(parents=True)
    source = resolved.local_dir
    _write_weights(source, destination, allow_pickle=allow_pickle)
    if family.copies_processor_files:
        _copy_processor_files(source, destination)
    else:
        # VFlowOpt takes the stock processor's placeholders and shortens the sequence in the model.
        _write_processor(resolved, None if amount.preset is not None else amount.target_num, destination)

    generation_config = source / "generation_config.json"
    if generation_config.is_file():
        shutil.copyfile(generation_config, destination / "generation_config.json")
    (destination / "config.json").write_text(json.dumps(flowcut_config(resolved.config, amount), indent=2, sort_keys=True) + "\n")
    copy_remote_code_files(destination, family.remote_code_entry_files)
    return sorted(p.name for p in destination.iterdir())


# Files of a checkpoint folder that are not the processor's: the exporter writes these itself.
NOT_PROCESSOR_FILES = {"config.json", "generation_config.json", "README.md", MANIFEST_NAME}


def _copy_processor_files(source: Path, destination: Path) -> None:
    """The stock processor, byte for byte: its configs, tokenizer files and chat template."""
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name in NOT_PROCESSOR_FILES or path.name.endswith(".index.json"):
            continue
        if any(path.match(pattern) for pattern in METADATA_PATTERNS):
            shutil.copyfile(path, destination / path.name)


def _write_processor(resolved: ResolvedSource, target_num: int | None, destination: Path) -> None:
    """The family's processor for ``target_num``, or (None) the stock processor, completed from the model config. A
    model converted from the original LLaVA format gets the processor that tokenizes as the original code did, with
    its placeholder count (``target_num``) or, for None, the stock count."""
    from transformers import AutoProcessor

    family = resolved.family
    source = resolved.local_dir
    stock_processor = AutoProcessor.from_pretrained(source)
    # Older processor configs leave these unset; the model's config has them.
    stock_processor.patch_size = stock_processor.patch_size or resolved.config.get("vision_config", {}).get("patch_size", 14)
    stock_processor.vision_feature_select_strategy = stock_processor.vision_feature_select_strategy or resolved.config.get(
        "vision_feature_select_strategy", "default"
    )
    if resolved.converted_from_original:
        fixed_count = family.processor_for(
            stock_processor, target_num or DEFAULT_TARGET_NUM, enabled=target_num is not None, original_llava_tokenization=True
        )
        fixed_count.save_pretrained(destination)
    elif target_num is None:
        stock_processor.save_pretrained(destination)
    else:
        family.processor_for(stock_processor, target_num).save_pretrained(destination)
    # transformers saves tokenizer.json only; tools that read the SentencePiece model need it too.
    if (source / "tokenizer.model").is_file() and not (destination / "tokenizer.model").exists():
        shutil.copyfile(source / "tokenizer.model", destination / "tokenizer.model")


def _write_weights(source: Path, destination: Path, *, allow_pickle: bool) -> None:
    files, pickled = weight_files(source, allow_pickle=allow_pickle, what="checkpoint")
    if not pickled:
        for shard in files:
            link_or_copy(shard, destination / shard.name)
        index = source / "model.safetensors.index.json"
        if index.is_file():
            shutil.copyfile(index, destination / index.name)
        return
    from safetensors.torch import save_file

    index_map = {}
    for number, pickle_file in enumerate(files, start=1):
        name = f"model-{number:05d}-of-{len(files):05d}.safetensors" if len(files) > 1 else "model.safetensors"
        state = load_pickle_state(pickle_file)
        # clone: mmap-backed tensors may share storage, which safetensors refuses to save.
        save_file({k: v.contiguous().clone() for k, v in state.items()}, destination / name, metadata={"format": "pt"})
        index_map.update({key: name for key in state})
        del state
    if len(files) > 1:
        total = sum((destination / n).stat().st_size for n in set(index_map.values()))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(index_map.items()))}
        (destination / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------- 4. verify

# Verification must prove the variant works without flowcut-hf: the remote-code runs cannot import it.
BLOCK_FLOWCUT_HF = r'''
import importlib.abc, json, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "flowcut_hf" or name.startswith("flowcut_hf."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, _Block())
'''

# One copy of the weights, in the checkpoint's own dtype. FLOWCUT_VERIFY_MEMORY (see checks.memory_plan) is the
# budget: the variant loads plainly when it fits with room to spare and there is no GPU; otherwise accelerate places
# it under the cap, a GPU first, and offloads the rest to disk.
LOAD_ONE_COPY = r'''
import os
import torch
LOAD_KWARGS = {"dtype": "auto"}
MEMORY_CAP = None
_plan = json.loads(os.environ.get("FLOWCUT_VERIFY_MEMORY", "null"))
if _plan is not None and _plan["cap"] is not None:
    _gpu = torch.cuda.is_available()
    if _gpu or _plan["weights"] * _plan["room"] > _plan["cap"]:
        MEMORY_CAP = {"cpu": _plan["cap"]}
        if _gpu:
            MEMORY_CAP = {0: int(torch.cuda.mem_get_info()[0] * 0.9), "cpu": _plan["cap"]}
        LOAD_KWARGS.update(device_map="auto", max_memory=MEMORY_CAP, offload_folder=_plan["offload_folder"])
'''

# After the remote-code run, the same instance gets the library's classes (flowcut_hf is importable again) and runs
# the same inputs: the remote code is compared with flowcut-hf on one copy of the weights.
LIBRARY_ON_SAME_INSTANCE = r'''
if forward_error is None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _Block)]
    from flowcut_hf.api import install_family_classes
    from flowcut_hf.registry import family_for_model
    install_family_classes(model, family_for_model(model))
    report["library_class"] = type(model).__name__
    with torch.no_grad():
        torch.save(model(**inputs).logits[0, -1].float(), os.path.splitext(out_path)[0] + "_library.pt")
report["memory_cap"] = MEMORY_CAP and {str(device): size for device, size in MEMORY_CAP.items()}
print(json.dumps(report))
'''

VERIFY_REMOTE_CODE = BLOCK_FLOWCUT_HF + LOAD_ONE_COPY + r'''
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
folder, image_path, out_path = sys.argv[1:4]
model, info = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, output_loading_info=True, **LOAD_KWARGS)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
question = "Describe the image."
if getattr(processor, "chat_template", None):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
else:
    prompt = f"USER: {processor.image_token}\n{question} ASSISTANT:"
image = Image.open(image_path)
inputs = processor(images=image, text=prompt, return_tensors="pt")
image_inputs = {k: inputs[k] for k in ("pixel_values", "image_sizes") if k in inputs}
image_inputs["pixel_values"] = image_inputs["pixel_values"].to(model.dtype)
forward_error, llm_kept = None, None
with torch.no_grad():
    features = model.model.get_image_features(**image_inputs)
    try:
        output = model(**inputs)
        torch.save(output.logits[0, -1].float(), out_path)
        kept = getattr(output, "llm_keep_indices", None)
        llm_kept = [int(k.numel()) for k in kept] if kept is not None else None
    except Exception as error:
        forward_error = f"{type(error).__name__}: {error}"
keep = [k.shape for k in features.keep_indices]
report = {
    "forward_error": forward_error,
    "model_class": type(model).__name__, "processor_class": type(processor).__name__,
    "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
    "prompt": prompt, "image_size": [image.height, image.width],
    "placeholders": int((inputs["input_ids"] == model.config.image_token_id).sum()),
    "text_tokens": int((inputs["input_ids"] != model.config.image_token_id).sum()),
    "kept": [int(f.shape[0]) for f in features.pooler_output],
    "kept_per_crop": [list(shape) for shape in keep],
    "llm_kept": llm_kept,
    "token_schedule": features.token_schedule,
    "input_ids": inputs["input_ids"][0].tolist(),
}
''' + LIBRARY_ON_SAME_INSTANCE

VERIFY_REMOTE_CODE_QWEN = BLOCK_FLOWCUT_HF + LOAD_ONE_COPY + r'''
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
folder, image_path, out_path = sys.argv[1:4]
model, info = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, output_loading_info=True, **LOAD_KWARGS)
image = Image.open(image_path)
question = "Describe the image."
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
try:
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    processor_class = type(processor).__name__
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = dict(processor(text=[prompt], images=[image], return_tensors="pt"))
except ImportError:
    # The stock Qwen processor needs torchvision for its video processor; without it, build the image inputs as the
    # processor does: the image processor's patches, and one placeholder per 2x2 unit of its grid.
    with open(f"{folder}/processor_config.json") as handle:
        processor_class = json.load(handle).get("processor_class")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_inputs = AutoImageProcessor.from_pretrained(folder)(images=[image], return_tensors="pt")
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    units = int(image_inputs["image_grid_thw"].prod()) // 4
    pad = tokenizer.convert_ids_to_tokens(model.config.image_token_id)
    input_ids = tokenizer(prompt.replace(pad, pad * units), return_tensors="pt")["input_ids"]
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "mm_token_type_ids": (input_ids == model.config.image_token_id).int(), **image_inputs}
forward_error, llm_kept = None, None
with torch.no_grad():
    features = model.model.get_image_features(inputs["pixel_values"].to(model.dtype), inputs["image_grid_thw"])
    try:
        output = model(**inputs)
        torch.save(output.logits[0, -1].float(), out_path)
        llm_kept = [int(k.numel()) for k in output.image_kept_units]
    except Exception as error:
        forward_error = f"{type(error).__name__}: {error}"
report = {
    "forward_error": forward_error,
    "model_class": type(model).__name__, "processor_class": processor_class,
    "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
    "prompt": prompt, "image_size": [image.height, image.width],
    "grid_thw": [int(n) for n in inputs["image_grid_thw"][0]],
    "placeholders": int((inputs["input_ids"] == model.config.image_token_id).sum()),
    "text_tokens": int((inputs["input_ids"] != model.config.image_token_id).sum()),
    "kept": [int(f.shape[0]) for f in features.pooler_output],
    "llm_kept": llm_kept,
    "token_schedule": features.token_schedule,
    "input_ids": inputs["input_ids"][0].tolist(),
}
''' + LIBRARY_ON_SAME_INSTANCE


VERIFY_REMOTE_CODE_VFLOWOPT = BLOCK_FLOWCUT_HF + LOAD_ONE_COPY + r'''
import torch
from PIL import Image
import transformers
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
folder, image_path, out_path = sys.argv[1:4]
model, info = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, output_loading_info=True, **LOAD_KWARGS)
try:
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
except ImportError:
    # The stock processor needs torchvision for its video processor; without it, the same class without one.
    with open(f"{folder}/processor_config.json") as handle:
        settings = json.load(handle)
    stock = getattr(transformers, settings.pop("processor_class"))
    class ImageOnly(stock):
        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(name, arg)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    kept = {k: v for k, v in settings.items() if k in ("num_image_tokens", "vision_feature_select_strategy")}
    processor = ImageOnly(image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer,
                          video_processor=None, chat_template=tokenizer.chat_template, **kept)
    processor_class = stock.__name__
else:
    processor_class = type(processor).__name__
image = Image.open(image_path)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = dict(processor(text=[prompt], images=[image], return_tensors="pt"))
forward_error, lengths = None, None
with torch.no_grad():
    sizes = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}  # LLaVA-1.5 has none
    features = model.model.get_image_features(inputs["pixel_values"].to(model.dtype), **sizes)
    try:
        output = model(**inputs, use_cache=True)
        torch.save(output.logits[0, -1].float(), out_path)
        lengths = [output.cache.get_seq_length(layer) for layer in range(len(output.cache.layers))]
    except Exception as error:
        forward_error = f"{type(error).__name__}: {error}"
report = {
    "forward_error": forward_error,
    "model_class": type(model).__name__, "processor_class": processor_class,
    "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
    "prompt": prompt, "image_size": [image.height, image.width],
    "placeholders": int((inputs["input_ids"] == model.config.image_token_id).sum()),
    "text_tokens": int((inputs["input_ids"] != model.config.image_token_id).sum()),
    "kept": [int(f.shape[0]) for f in features.pooler_output],
    "recycled": [int(r.numel()) for r in features.recycled_positions],
    "layer_lengths": lengths,
    "token_schedule": None,
    "input_ids": inputs["input_ids"][0].tolist(),
}
''' + LIBRARY_ON_SAME_INSTANCE


# Wide enough that LLaVA-NeXT tiles it into several anyres crops (a 2x2 grid plus the base image).
VERIFY_IMAGE_SIZE = (600, 800)


class PushError(RuntimeError):
    """Creating the repo or uploading to it failed; the exported folder itself is complete."""


class ExportInterrupted(KeyboardInterrupt):
    """Ctrl-C after the variant folders were moved into place: its message says what is complete and how to finish."""


@contextlib.contextmanager
def interruption_deferred():
    """Holds Ctrl-C back until the block is done (the block must be short), then raises it: moving the variants into
    place and recording them in the manifest happen together or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def expected_visual_tokens(
    family: FlowCutFamily, config: dict[str, Any], amount: RetainedAmount | int, image_size, grid_thw=None
) -> dict:
    """What a correct variant of ``family`` must show on one image of ``image_size`` (height, width); for Qwen, on
    the ``grid_thw`` patch grid the processor gave the image."""
    amount = amount if isinstance(amount, RetainedAmount) else RetainedAmount(target_num=amount)
    target_num = amount.target_num
    if amount.preset is not None:
        return {}  # VFlowOpt's counts depend on the map: _vflowopt_problems checks them against its own stage rule
    if family.default_retain_ratio is not None:
        t, h, w = grid_thw
        units = t * h * w // 4
        target = amount.retained(units)
        return {"placeholders": units, "kept": [min(2 * target, units)], "llm_kept": [target]}
    if family.llm_stage:
        from ..modeling.modeling_flowcut_llava_next import AnyresGeometry, stock_token_count

        stock = family.config_from_dict(config)
        crops = AnyresGeometry.of(stock, image_size).num_crops
        return {
            "placeholders": stock_token_count(stock, image_size),
            "kept_per_crop": [[crops, target_num // 2]],
            "llm_kept": [target_num],
        }
    return {"placeholders": target_num, "kept": [target_num]}


def prepare_check(name: str, folder: Path, amount: RetainedAmount, check_dir: Path) -> CheckJob:
    """Stage 4a: the check run of ``folder``, ready for :func:`flowcut_hf.export.checks.run_check` (the check image
    is written into ``check_dir``)."""
    from ..tiny import synthetic_image

    folder = folder.resolve()
    check_dir.mkdir(parents=True, exist_ok=True)
    image_path = check_dir.resolve() / "synthetic.png"
    synthetic_image(0, size=VERIFY_IMAGE_SIZE).save(image_path)
    family = family_for_config(json.loads((folder / "config.json").read_text()))
    qwen = family.default_retain_ratio is not None
    script = VERIFY_REMOTE_CODE_VFLOWOPT if amount.preset is not None else VERIFY_REMOTE_CODE_QWEN if qwen else VERIFY_REMOTE_CODE
    return CheckJob(name, str(folder), str(check_dir.resolve()), script, [str(folder), str(image_path), str(check_dir.resolve() / "remote.pt")])


def check_problems(job: CheckJob, remote: dict[str, Any], amount: RetainedAmount) -> list[str]:
    """Stage 4b: what is wrong with a variant, judged from its check run's report and logits files."""
    import torch

    check_dir = Path(job.check_dir)
    config = json.loads((Path(job.folder) / "config.json").read_text())
    family = family_for_config(config)
    vflowopt = amount.preset is not None
    problems = []
    if remote["model_class"] != family.model_class.__name__:
        problems.append(f"loaded as {remote['model_class']}, not {family.model_class.__name__}")
    processor_config = Path(job.folder) / "processor_config.json"
    original_tokenization = processor_config.is_file() and json.loads(processor_config.read_text()).get("original_llava_tokenization")
    stock_processor = vflowopt and not original_tokenization
    processor_class = family.stock_processor_class.__name__ if stock_processor else family.processor_class_name
    if remote["processor_class"] != processor_class:
        problems.append(f"processor loaded as {remote['processor_class']}, not {processor_class}")
    if remote["missing"] or remote["unexpected"]:
        problems.append(f"missing keys {remote['missing'][:5]}, unexpected keys {remote['unexpected'][:5]}")
    expected = expected_visual_tokens(family, config, amount, VERIFY_IMAGE_SIZE, remote.get("grid_thw"))
    if vflowopt and not remote["forward_error"]:
        problems += _vflowopt_problems(remote, config)
    if "placeholders" in expected and remote["placeholders"] != expected["placeholders"]:
        problems.append(
            f"the processor emitted {remote['placeholders']} image placeholders, expected {expected['placeholders']}"
        )
    for key, what in (("kept", "tokens"), ("kept_per_crop", "tokens per crop [crops, kept]"), ("llm_kept", "tokens after the LLM stage")):
        if key in expected and remote[key] != expected[key]:
            problems.append(f"the model kept {remote[key]} {what}, expected {expected[key]}")
    if remote["forward_error"]:
        problems.append(f"the forward pass failed: {remote['forward_error']}")
    if not problems:
        remote_logits = torch.load(check_dir / "remote.pt")
        library_logits = torch.load(check_dir / "remote_library.pt")
        if remote["library_class"] != family.model_class.__name__:
            problems.append(f"the library's classes did not take over the loaded model ({remote['library_class']})")
        scale = float(library_logits.abs().max()) or 1.0
        if not torch.allclose(remote_logits, library_logits, rtol=1e-3, atol=1e-3 * scale):
            difference = float((remote_logits - library_logits).abs().max())
            problems.append(f"a forward pass of the remote code differs from the library's on the same weights by {difference:.3g}")
    return problems


def _vflowopt_problems(remote: dict, config: dict[str, Any]) -> list[str]:
    """What a VFlowOpt variant's check run must show: stage 0 and the LLM stages keep what their settings say."""
    from ..modeling.vflowopt_core import vflowopt_settings

    settings = vflowopt_settings(SimpleNamespace(**config))
    length, recycled, kept = remote["placeholders"], remote["recycled"][0], remote["kept"][0]
    removed = round(length * (1 - settings.vision_keep)) + int(length / settings.cell_side**2)
    problems = []
    if kept != length - removed + recycled:
        problems.append(f"stage 0 kept {kept} of {length} tokens, its settings give {length - removed + recycled}")
    counts, current = [kept], kept
    for keep in settings.llm_keeps:
        current -= round(current * (1 - keep))
        counts.append(current)
    bounds = [0, *settings.llm_layers, len(remote["layer_lengths"])]
    expected = [remote["text_tokens"] + counts[stage] for stage in range(len(bounds) - 1) for _ in range(bounds[stage], bounds[stage + 1])]
    if remote["layer_lengths"] != expected:
        problems.append(f"the decoder layers cached {remote['layer_lengths']} tokens, the LLM stages give {expected}")
    return problems


def judge_check(job: CheckJob, remote: dict[str, Any], amount: RetainedAmount) -> dict[str, Any]:
    """The report of a check run that passed; raises VerificationError naming every problem otherwise."""
    problems = check_problems(job, remote, amount)
    if problems:
        raise VerificationError(f"{Path(job.folder).name} failed verification: " + "; ".join(problems))
    return remote


# --------------------------------------------------------------------------------------------------- 5. card


def verification_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a verification report the model card counts FLOPs from, and the memory cap it ran under."""
    keys = ("token_schedule", "image_size", "kept", "kept_per_crop", "llm_kept", "text_tokens", "grid_thw", "layer_lengths",
            "placeholders", "memory_cap")
    return {key: report.get(key) for key in keys}


def prefill_accounts(variant_config: dict[str, Any], verification: dict[str, Any] | None, prompt_tokens: int):
    """Analytic prefill accounts ``(unpruned, pruned, what they count)`` of a variant, for its card.

    With a verification summary the pruned account uses what the variant did on the check image; without one it is
    an upper bound (the vision encoder counted unpruned).
    """
    from ..accounting import AnyresImageTokens, next_prefill_account, prefill_account

    family = family_for_config(variant_config)
    config = family.config_from_dict(variant_config)
    if variant_config.get("pruning_method") == "vflowopt":
        return vflowopt_prefill_flops(config, variant_config, verification, prompt_tokens)
    target_num = variant_config["flowcut_target_num"]
    measured = "the vision schedule is the one measured on a synthetic image during export"
    upper_bound = "the vision encoder is counted unpruned, an upper bound (the export was not verified)"
    if family.default_retain_ratio is not None:
        amount = RetainedAmount(target_num, None if target_num is not None else variant_config["flowcut_retain_ratio"])
        unpruned, pruned, what = qwen_prefill_flops(config, amount, variant_config["flowcut_llm_prune_layer"], verification, prompt_tokens)
        return unpruned, pruned, what + (measured if verification else upper_bound)
    if not family.llm_stage:
        schedule = verification["token_schedule"] if verification else None
        unpruned = prefill_account(config, prompt_tokens)
        pruned = prefill_account(config, prompt_tokens, token_schedule=schedule, num_image_tokens=target_num)
        what = f"vision encoder, projector and LLM, for one image and a {prompt_tokens}-token text prompt; "
        return unpruned, pruned, what + (measured if schedule else upper_bound)

    image_size = tuple(verification["image_size"]) if verification else VERIFY_IMAGE_SIZE
    stock = AnyresImageTokens.stock(config, image_size)
    if verification:
        pruned_image = AnyresImageTokens(
            crops=verification["kept_per_crop"][0][0],
            vision_schedule=tuple(verification["token_schedule"][0]),
            tokens_into_llm=verification["kept"][0],
            tokens_after_llm_stage=verification["llm_kept"][0],
        )
    else:
        pruned_image = replace(stock, tokens_after_llm_stage=target_num)
    unpruned = next_prefill_account(config, prompt_tokens, [stock])
    pruned = next_prefill_account(
        config, prompt_tokens, [pruned_image], llm_prune_layer=variant_config["flowcut_llm_prune_layer"]
    )
    what = (
        f"vision encoder, projector and LLM, for one {image_size[1]}x{image_size[0]} image ({stock.crops} anyres crops, "
        f"{stock.tokens_into_llm} stock visual tokens) and a {prompt_tokens}-token text prompt; "
    )
    return unpruned, pruned, what + (measured if verification else upper_bound)


@dataclass(frozen=True)
class PrefillFlops:
    """A prefill's analytic FLOPs (for families whose card counts only the total)."""

    total_flops: int


def qwen_prefill_flops(config, amount: RetainedAmount, llm_prune_layer: int, verification, prompt_tokens: int):
    """``(unpruned, pruned, what)`` for a Qwen variant: the ViT from its measured schedule (or unpruned, without a
    verification), and the LLM with twice the target before the LLM stage and the target after it."""
    from ..accounting import llm_prefill_flops, qwen_vision_flops

    vision, text = config.vision_config, config.text_config
    patch = vision.patch_size * vision.spatial_merge_size
    if verification:
        t, h, w = verification["grid_thw"]
        units = t * h * w // 4
        schedule, into_llm, after = verification["token_schedule"][0], verification["kept"][0], verification["llm_kept"][0]
        image_size = verification["image_size"]
    else:
        image_size = VERIFY_IMAGE_SIZE
        units = max(1, round(image_size[0] / patch)) * max(1, round(image_size[1] / patch))
        after = amount.retained(units)
        schedule, into_llm = [4 * units] * vision.depth, min(2 * after, units)
    layers = text.num_hidden_layers
    unpruned = qwen_vision_flops(vision, [4 * units] * vision.depth, units) + llm_prefill_flops(
        text, [prompt_tokens + units] * layers
    )
    pruned_lengths = [prompt_tokens + into_llm] * (llm_prune_layer + 1) + [prompt_tokens + after] * (layers - llm_prune_layer - 1)
    pruned = qwen_vision_flops(vision, schedule, into_llm) + llm_prefill_flops(text, pruned_lengths)
    what = (
        f"ViT and LLM, for one {image_size[1]}x{image_size[0]} image ({units} stock visual tokens) and a "
        f"{prompt_tokens}-token text prompt; "
    )
    return PrefillFlops(unpruned), PrefillFlops(pruned), what


def vflowopt_prefill_flops(config, variant_config: dict[str, Any], verification, prompt_tokens: int):
    """``(unpruned, pruned, what)`` of the LLM prefill of a VFlowOpt variant: its vision tower and projector run
    unchanged, so only the decoder layers' lengths differ (those verified on the check image, or the square 2x2-grid
    image's stage counts without a verification, with importance ties resolved by the stage rule)."""
    from ..accounting import llm_prefill_flops
    from ..modeling.vflowopt_core import vflowopt_settings

    layers = config.text_config.num_hidden_layers
    if verification and verification.get("layer_lengths"):
        images = verification["placeholders"]
        text = verification["text_tokens"]
        lengths = [prompt_tokens + n - text for n in verification["layer_lengths"]]
        what = f"the LLM, for the {images}-token check image measured during export and a {prompt_tokens}-token prompt"
    else:
        settings = vflowopt_settings(SimpleNamespace(**variant_config))
        side = config.vision_config.image_size // config.vision_config.patch_size
        # LLaVA-1.5: one grid; anyres families: the base crop and a 2x2 grid with its newline column.
        images = side * side if config.model_type == "llava" else side * side + 2 * side * (2 * side + 1)
        current = images - round(images * (1 - settings.vision_keep))
        bounds, counts = [0, *settings.llm_layers, layers], [current]
        for keep in settings.llm_keeps:
            current -= round(current * (1 - keep))
            counts.append(current)
        lengths = [prompt_tokens + counts[s] for s in range(len(bounds) - 1) for _ in range(bounds[s], bounds[s + 1])]
        what = f"the LLM, for a square {images}-token image and a {prompt_tokens}-token prompt (the export was not verified)"
    unpruned = llm_prefill_flops(config.text_config, [prompt_tokens + images] * layers)
    pruned = llm_prefill_flops(config.text_config, lengths)
    return PrefillFlops(unpruned), PrefillFlops(pruned), what + "; the vision tower and projector run unchanged"


def write_card(
    folder: Path,
    resolved: ResolvedSource,
    plan: VariantPlan,
    verification: dict[str, Any] | None,
    options: ExportOptions,
    variant_folder: Path | None = None,
) -> None:
    """Renders README.md into ``folder``, for the variant in ``variant_folder`` (``folder`` itself by default)."""
    from ..hub_cards import VariantCardInfo, render_variant_card

    variant_folder = variant_folder or folder
    # The variant's own config: it is in the HF layout even when the source was an original-LLaVA checkpoint.
    variant_config = json.loads((variant_folder / "config.json").read_text())
    unpruned, pruned, what = prefill_accounts(variant_config, verification, prompt_tokens=64)
    settings = {
        k: v for k, v in variant_config.items() if k.startswith(("flowcut_", "vflowopt_")) or k == "pruning_method"
    }
    info = VariantCardInfo(
        # Unpushed folders get a placeholder namespace; the snippet is only final once the repo id is known.
        repo_id=plan.repo_id or f"your-namespace/{plan.name}",
        base_model=options.base_model or resolved.base_model,
        base_license=resolved.license,
        base_license_name=resolved.license_name if resolved.license == "other" else None,
        base_license_link=resolved.license_link if resolved.license == "other" else None,
        target_num=plan.target_num,
        retain_ratio=plan.amount.retain_ratio,
        method="vflowopt" if plan.amount.preset is not None else "flowcut",
        budget=plan.amount.preset.budget if plan.amount.preset is not None else None,
        search=plan.amount.preset.search if plan.amount.preset is not None else None,
        preset_note=plan.amount.preset.note if plan.amount.preset is not None else None,
        image_tokens=image_tokens_per_image(variant_config),
        settings=settings,
        family=resolved.family.name,
        prefill_flops_unpruned=float(unpruned.total_flops),
        prefill_flops_pruned=float(pruned.total_flops),
        prefill_flops_note=what,
        base_commit=resolved.commit or resolved.download_commit,
        base_revision_requested=resolved.requested_revision if resolved.requested_revision != resolved.commit else None,
    )
    render_variant_card(info, eval_results_path=options.eval_results or None).save(folder / "README.md")


# --------------------------------------------------------------------------------------------------- 6. push


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


# --------------------------------------------------------------------------------------------------- the pipeline


def plan_variants(resolved: ResolvedSource, options: ExportOptions) -> list[VariantPlan]:
    amounts = validate_targets(
        list(options.target_nums), resolved.hf_config, list(options.retain_ratios), list(options.vflowopt_presets)
    )
    pattern = options.name_pattern
    if options.vflowopt_presets and pattern == DEFAULT_NAME_PATTERN:
        pattern = VFLOWOPT_NAME_PATTERN
    protected = [p.resolve() for p in (resolved.local_dir, options.vision_tower) if p is not None]
    plans = []
    for amount in amounts:
        name = fill_pattern(pattern, "--name-pattern", base=resolved.base_name, n=amount.label)
        if name in ("", ".", "..") or Path(name).name != name or name.startswith("."):
            raise ValueError(f"--name-pattern gives {name!r}, which is not a plain folder name.")
        folder = (Path(options.out) / name).resolve()
        for read_from in protected:
            if folder == read_from or read_from.is_relative_to(folder) or folder.is_relative_to(read_from):
                raise ValueError(
                    f"The variant folder {folder} overlaps {read_from}, which the export reads from; choose another "
                    "--out or --name-pattern."
                )
        repo_id = push_repo_id(options.push, resolved.base_name, amount.label, len(amounts), pattern)
        if repo_id is not None and resolved.repo_id is not None and repo_id.lower() == resolved.repo_id.lower():
            raise ValueError(f"Refusing to push into the source repo {repo_id}; choose another --push repo id.")
        plans.append(VariantPlan(amount, name, Path(options.out) / name, repo_id))
    if len({plan.name for plan in plans}) != len(plans):
        raise ValueError(f"--name-pattern {options.name_pattern!r} gives the same folder to several variants; use {{n}}.")
    return plans


def push_repo_id(push: str | None, base: str, target: int | str, count: int, pattern: str) -> str | None:
    """``--push`` is a repo id (one variant), a namespace (``org``: one repo per variant, named by the pattern), or
    a repo id containing ``{n}``."""
    if push is None:
        return None
    if "/" not in push:
        return check_push_repo_id(f"{push}/{fill_pattern(pattern, '--name-pattern', base=base, n=target)}")
    if "{" in push:
        return check_push_repo_id(fill_pattern(push, "--push", n=target, base=base))
    if count > 1:
        raise ValueError(
            f"--push {push} names one repo but {count} variants are exported; give a namespace (--push "
            f"{push.split('/')[0]}) or a pattern with {{n}} (--push {push}-{{n}})."
        )
    if not looks_like_repo_id(push):
        raise ValueError(f"--push {push!r} is not a repo id of the form owner/name.")
    return check_push_repo_id(push)


def fill_pattern(pattern: str, flag: str, **values: Any) -> str:
    """``pattern`` with its placeholders filled; a ValueError naming ``flag`` and the valid placeholders otherwise."""
    valid = " and ".join(f"{{{name}}}" for name in values)
    try:
        return pattern.format(**values)
    except KeyError as error:
        raise ValueError(f"{flag} {pattern!r} has the unknown placeholder {{{error.args[0]}}}; the valid ones are {valid}.") from None
    except (IndexError, ValueError) as error:
        raise ValueError(f"{flag} {pattern!r} is not a valid pattern ({error}); use {valid}, and {{{{ }}}} for a literal brace.") from None


def check_push_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"--push gives {repo_id!r}, which is not a valid Hub repo id: {error}") from None
    if repo_id.count("/") != 1:
        raise ValueError(f"--push gives {repo_id!r}, which is not a Hub repo id of the form owner/name.")
    return repo_id


def fingerprint(resolved: ResolvedSource, amount: RetainedAmount) -> str:
    """Identifies what a variant folder was built from, so that a re-run can reuse it instead of rebuilding."""
    from .. import __version__

    if resolved.repo_id:
        # A Hub commit names its files; a dry run, which downloads only the metadata, gives the same fingerprint.
        source: list[Any] = [resolved.repo_id, resolved.commit]
    else:
        files = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in resolved.local_dir.iterdir() if p.is_file()
        )
        source = [str(resolved.local_dir), files]
    code = [hashlib.sha256(p.read_bytes()).hexdigest() for p in resolved.family.remote_code_files()]
    payload = json.dumps([*source, amount.label, __version__, code])
    return hashlib.sha256(payload.encode()).hexdigest()


def existing_folder_action(plan: VariantPlan, resolved: ResolvedSource, manifest: dict[str, Any], options: ExportOptions) -> str:
    """What happens to a variant folder: ``"write"`` (none there, or ``--overwrite``), ``"reuse"`` (this command
    already finished it from the same source and settings, verified unless ``--skip-verify``) or ``"refuse"``. The real
    run and the dry run both ask this, so the dry run announces what the real run does."""
    if not plan.folder.exists() or options.overwrite:
        return "write"
    previous = manifest["variants"].get(plan.name) or {}
    same = previous.get("fingerprint") == fingerprint(resolved, plan.amount)
    return "reuse" if same and (previous.get("verified") or not options.verify) else "refuse"


@dataclass
class PendingVariant:
    """A variant written to its staging folder and waiting for its check (``check`` is None without verification)."""

    result: VariantResult
    staging: Path
    check: CheckJob | None = None


@dataclass
class PreparedExport:
    """What :func:`prepare_export` leaves for :func:`finish_export`: plain data, so that the two can run in separate
    processes with the checks between them (see :mod:`flowcut_hf.export_cli`)."""

    resolved: ResolvedSource
    options: ExportOptions
    work_dir: Path
    results: list[VariantResult]
    pending: list[PendingVariant]

    @property
    def checks(self) -> list[CheckJob]:
        return [variant.check for variant in self.pending if variant.check is not None]


def export(source: str | os.PathLike, options: ExportOptions, *, log: Callable[[str], None] = print) -> list[VariantResult]:
    """Runs the whole pipeline. See the module docstring for the stages."""
    prepared = prepare_export(source, options, log=log)
    if not isinstance(prepared, PreparedExport):
        return prepared
    try:
        reports = {}
        for job in prepared.checks:
            log(f"{job.name}: verify in a clean subprocess")
            reports[job.name] = run_check(job, options.max_memory)
        return finish_export(prepared, reports, log=log)
    finally:
        shutil.rmtree(prepared.work_dir, ignore_errors=True)


def prepare_export(
    source: str | os.PathLike, options: ExportOptions, *, log: Callable[[str], None] = print
) -> PreparedExport | list[VariantResult]:
    """Stages 1-3 for every variant (resolve, convert, write into staging folders in a work folder beside ``out``) and
    the verification jobs; a dry run's results instead. The caller runs the checks, then :func:`finish_export`, and
    removes ``work_dir`` whatever happens."""
    out = Path(options.out)
    resolved = resolve(source, options.revision, metadata_only=options.dry_run)
    plans = plan_variants(resolved, options)
    manifest = read_manifest(out)

    announce_base_model(resolved, options, log)
    pickled = [name for name in resolved.source_weight_files if name.endswith(".bin")]
    if pickled and not any(name.endswith(".safetensors") for name in resolved.source_weight_files) and not options.allow_pickle:
        raise pickle_refusal(f"the checkpoint in {resolved.repo_id or resolved.local_dir}", pickled[0])
    base_model = options.base_model or resolved.base_model
    for plan in plans:
        if plan.repo_id and base_model and plan.repo_id.lower() == base_model.lower():
            raise ValueError(f"--push {plan.repo_id} is the base model the variant is made from; choose another repo id.")
    if options.eval_results:
        # Read now, not at the card stage: a bad file must stop the export before hours of writing and checking.
        from ..hub_cards import load_eval_results

        load_eval_results(options.eval_results, default_model_name=plans[0].name)
    actions = {plan.name: existing_folder_action(plan, resolved, manifest, options) for plan in plans}
    for plan in plans:
        if actions[plan.name] == "refuse":
            raise FileExistsError(
                f"{plan.folder} already exists and was not exported from this source with these settings; pass "
                "--overwrite to replace it."
            )
    if options.dry_run:
        return _dry_run(resolved, plans, options, actions, log)

    work_dir = Path(tempfile.mkdtemp(prefix=".flowcut-export-", dir=_work_parent(out)))
    prepared = PreparedExport(resolved, options, work_dir, results=[], pending=[])
    try:
        converted = None
        for plan in plans:
            result = VariantResult(plan)
            prepared.results.append(result)
            if actions[plan.name] == "reuse":
                previous = manifest["variants"][plan.name]
                log(f"{plan.name}: already exported from this source in {plan.folder}; reusing it")
                result.reused = True
                result.token_schedule = previous.get("token_schedule")
                result.verification = previous.get("verification")
                # The card depends on the push target and the eval results, which may differ from the first run.
                staging = work_dir / plan.name
                staging.mkdir()
                write_card(staging, resolved, plan, result.verification, options, variant_folder=plan.folder)
                os.replace(staging / "README.md", plan.folder / "README.md")
                continue
            if converted is None:
                if resolved.kind == "original":
                    log(f"convert: original-LLaVA checkpoint -> HF layout (vision tower: {options.vision_tower or resolved.config.get('mm_vision_tower')})")
                converted = convert(resolved, work_dir, vision_tower=options.vision_tower, allow_pickle=options.allow_pickle)
            staging = work_dir / plan.name
            log(f"{plan.name}: write ({plan.amount.describe(image_tokens_per_image(resolved.hf_config))})")
            write_variant(converted, plan.amount, staging, allow_pickle=options.allow_pickle)
            check = prepare_check(plan.name, staging, plan.amount, work_dir / f"verify-{plan.name}") if options.verify else None
            prepared.pending.append(PendingVariant(result, staging, check))
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return prepared


def finish_export(
    prepared: PreparedExport, reports: dict[str, dict[str, Any]], *, log: Callable[[str], None] = print
) -> list[VariantResult]:
    """Stages 4-6: judges each check's report (``reports`` by variant name), writes the cards, moves the variants into
    place and pushes them. Nothing is moved or pushed unless every variant passed."""
    resolved, options = prepared.resolved, prepared.options
    for variant in prepared.pending:
        if variant.check is not None:
            report = judge_check(variant.check, reports[variant.check.name], variant.result.plan.amount)
            variant.result.token_schedule = report["token_schedule"]
            variant.result.verification = verification_summary(report)
    out = Path(options.out)
    for variant in prepared.pending:
        log(f"{variant.result.plan.name}: card")
        write_card(variant.staging, resolved, variant.result.plan, variant.result.verification, options)
    with interruption_deferred():
        manifest = read_manifest(out)
        for variant in prepared.pending:
            result, plan = variant.result, variant.result.plan
            _move_into_place(variant.staging, plan.folder)
            manifest["variants"][plan.name] = {
                "fingerprint": fingerprint(resolved, plan.amount),
                "target_num": plan.target_num,
                "retain_ratio": plan.amount.retain_ratio,
                "verified": options.verify,
                "token_schedule": result.token_schedule,
                "verification": result.verification,
            }
            (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    for result in prepared.results:
        result.files = sorted(p.name for p in result.plan.folder.iterdir())
    try:
        for result in prepared.results:
            if result.plan.repo_id:
                log(f"{result.plan.name}: push to {result.plan.repo_id}")
                result.pushed_commit, result.pushed_url = push_variant(
                    result.plan.folder, result.plan.repo_id, private=options.private,
                    commit_message=push_commit_message(resolved, options), create_pr=options.create_pr, log=log,
                )
    except KeyboardInterrupt:
        raise ExportInterrupted(
            f"interrupted during the push; the variant folders in {out} are complete: re-run the same command to "
            "finish the push"
        ) from None
    return prepared.results


class ExportWarning(UserWarning):
    """Something the export did not know and went on without; the message names the option that supplies it."""


def announce_base_model(resolved: ResolvedSource, options: ExportOptions, log: Callable[[str], None]) -> None:
    """Says which Hub model the variant's card names as its base, and where that came from; warns when none is known
    (the card then has no ``base_model``)."""
    if options.base_model:
        log(f"base model: {options.base_model} (from --base-model)")
    elif resolved.base_model:
        log(f"base model: {resolved.base_model} (from {resolved.base_model_origin}; --base-model overrides it)")
    else:
        downloaded = (
            f" It was downloaded at commit {resolved.download_commit}, but the download metadata does not name the repo."
            if resolved.download_commit else ""
        )
        warnings.warn(
            f"cannot tell which Hub model {resolved.local_dir} holds: neither its config's _name_or_path nor a model "
            f"card names it.{downloaded} The variant's card will have no base_model; pass --base-model OWNER/NAME to "
            "record it.",
            ExportWarning,
            stacklevel=2,
        )


def read_manifest(out: Path) -> dict[str, Any]:
    """The record of the variants already exported into ``out`` (see :data:`MANIFEST_NAME`)."""
    manifest_path = out / MANIFEST_NAME
    return json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"variants": {}}


def _work_parent(out: Path) -> Path:
    # Staging next to the destination keeps the final rename atomic (same filesystem) and hard links possible.
    parent = out if out.exists() else out.parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _move_into_place(staging: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        retired = destination.with_name(f".{destination.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(destination, retired)
        os.replace(staging, destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, destination)


def _dry_run(
    resolved: ResolvedSource, plans: list[VariantPlan], options: ExportOptions, actions: dict[str, str],
    log: Callable[[str], None],
) -> list[VariantResult]:
    source_desc = resolved.repo_id and f"{resolved.repo_id}@{resolved.commit}" or str(resolved.local_dir)
    log(f"dry run: nothing is written or pushed. Source: {source_desc} ({resolved.family.display_name}, {resolved.kind} format)")
    if resolved.kind == "original":
        log(f"  convert: original-LLaVA -> HF layout, vision tower from {options.vision_tower or resolved.config.get('mm_vision_tower')}")
    if resolved.kind == "original":
        weights_line = (
            f"weights: converted to the HF layout, one tensor at a time, from {', '.join(resolved.source_weight_files)} "
            "(model*.safetensors shards and their index)"
        )
    elif not any(name.endswith(".safetensors") for name in resolved.source_weight_files):
        weights_line = f"weights: converted from pickle to safetensors, one file at a time (--allow-pickle): {', '.join(resolved.source_weight_files)}"
    else:
        weights_line = f"weights (unchanged, byte-identical): {', '.join(resolved.source_weight_files)}"
    code_files = ", ".join(p.name for p in resolved.family.remote_code_files())

    def log_push(plan: VariantPlan) -> None:
        if plan.repo_id:
            action = "open a pull request on" if options.create_pr else "commit to"
            message = push_commit_message(resolved, options)
            log(f"    would {action} {plan.repo_id} ({announced_visibility(plan.repo_id, options.private)}) with message {message!r}")

    results = []
    for plan in plans:
        if actions[plan.name] == "reuse":
            log(f"  {plan.name}: already exported from this source in {plan.folder}; the real run reuses it "
                "(and rewrites only its README.md)")
            log_push(plan)
            results.append(VariantResult(plan))
            continue
        log(f"  {plan.name}: would {'replace' if plan.folder.exists() else 'write'} {plan.folder}")
        log(f"    {weights_line}")
        if plan.amount.preset is not None:
            field = f"pruning_method=vflowopt and the preset's vflowopt_* fields ({plan.amount.describe(0)})"
        elif plan.target_num is not None:
            field = f"flowcut_target_num={plan.target_num}"
        else:
            field = f"flowcut_retain_ratio={plan.amount.retain_ratio:g}"
        log(f"    config.json with {field}, auto_map; remote code: {code_files}")
        if resolved.family.copies_processor_files:
            log("    the stock processor's files, copied byte for byte (configs, tokenizer files, chat template); "
                "generation_config.json, README.md")
        else:
            log("    processor_config.json, tokenizer files, chat template, generation_config.json, README.md")
        log_push(plan)
        results.append(VariantResult(plan))
    return results
