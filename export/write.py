"""Stage 3 of the exporter: write one variant folder. The weights are hard-linked or copied byte for byte (pickles
converted to safetensors one file at a time, when allowed), ``config.json`` gets the family's pruning fields and
``auto_map``, the remote-code files are copied verbatim (only those the family's model imports), and the processor,
tokenizer and generation config come along. No weight tensor is loaded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..amounts import RetainedAmount
from ..modeling.flowcut_remote_code import copy_remote_code_files
from ..registry import family_for_config
from .resolve import METADATA_PATTERNS, ResolvedSource
from .weights import load_pickle_state, weight_files

MANIFEST_NAME = ".flowcut-export.json"
"""The record, in the output folder, of the variants an export finished (see :mod:`flowcut_hf.export.pipeline`)."""


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
    if family.methods[0] != "flowcut":  # the config's default method is another one
        updated["pruning_method"] = "flowcut"
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
            stock_processor, target_num or family.default_target_num, enabled=target_num is not None,
            from_original_checkpoint=True,
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


__all__ = ["MANIFEST_NAME", "flowcut_config", "link_or_copy", "write_variant"]
