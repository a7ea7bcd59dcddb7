"""The one map from model families to their adapters.

Each :class:`FamilyEntry` names a family, the ``model_type`` of its checkpoints and the adapter class (a
:class:`flowcut_hf.family.FlowCutFamily` subclass in ``flowcut_hf/families/``) that holds everything family-specific
outside the remote code. Adding a family is one modeling file in ``modeling/``, one adapter and one entry here.

This module imports only the standard library: an entry says what the command line needs (names, methods, how an
amount is given) without importing torch, and an adapter is imported the first time a family is looked up. Adapters
never import this module.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .family import FlowCutFamily


@dataclass(frozen=True)
class FamilyEntry:
    """A family as the registry lists it.

    Attributes:
        name: the id in configs, cards and tags (``llava_next``).
        display_name: how tables, cards and messages name it.
        cli_name: the command line's word for it (``--family``).
        model_type: the ``model_type`` of its stock checkpoints (FlowCut variants keep it).
        model_class: the stock transformers class of its checkpoints (``architectures``).
        adapter: ``"module:Class"`` of its :class:`~flowcut_hf.family.FlowCutFamily` subclass.
        methods: the pruning methods it runs, the main one first.
        amount_kinds: how a FlowCut amount is given: ``target_num``, and ``retain_ratio`` where the token count follows
            the image size.
        examples: Hub checkpoints of the family, for help texts.
        original_format: the non-transformers layout the exporter converts, in words (None if none).
        vllm_model: ``"module:Class"`` of the vLLM model class the vLLM plug-in registers under ``model_class``: it serves
            the stock checkpoints as vLLM's own class does, and variants pruned or refused (None: not registered).
        vllm_methods: the methods vLLM serves pruned; variants of the other methods are refused at load.
        vllm_requires: ``(field, value)`` pairs a variant's config must hold for vLLM to serve it pruned (a schedule
            without the LLM stage); a variant without them is refused with the ``--hf-overrides`` that sets them.
        vllm_oracle_model: ``"module:Class"`` of the oracle ``flowcut-hf bench --engine vllm`` compares with, registered
            under its class name (the architecture only the bench's oracle checkpoints name).
    """

    name: str
    display_name: str
    cli_name: str
    model_type: str
    model_class: str
    adapter: str
    methods: tuple[str, ...] = ("flowcut",)
    amount_kinds: tuple[str, ...] = ("target_num",)
    examples: tuple[str, ...] = ()
    original_format: str | None = None
    vllm_model: str | None = None
    vllm_methods: tuple[str, ...] = ()
    vllm_requires: tuple[tuple[str, object], ...] = ()
    vllm_oracle_model: str | None = None


REGISTRY: tuple[FamilyEntry, ...] = (
    FamilyEntry(
        "llava", "LLaVA-1.5", "llava", "llava", "LlavaForConditionalGeneration",
        "flowcut_hf.families.llava.adapter:LlavaFamily",
        methods=("flowcut", "vflowopt"), examples=("llava-hf/llava-1.5-7b-hf",),
        original_format="original LLaVA-1.5 (LlavaLlamaForCausalLM, e.g. liuhaotian/llava-v1.5-7b)",
        vllm_model="flowcut_hf.families.llava.vllm:FlowCutLlavaForVllm", vllm_methods=("flowcut",),
        vllm_oracle_model="flowcut_hf.families.llava.vllm:UniformOracleLlavaForVllm",
    ),
    FamilyEntry(
        "llava_next", "LLaVA-NeXT", "llava-next", "llava_next", "LlavaNextForConditionalGeneration",
        "flowcut_hf.families.llava_next.adapter:LlavaNextFamily",
        methods=("flowcut", "vflowopt"), examples=("llava-hf/llava-v1.6-mistral-7b-hf",),
        vllm_model="flowcut_hf.families.llava_next.vllm:FlowCutCheckedLlavaNext",
    ),
    FamilyEntry(
        "qwen2_vl", "Qwen2-VL", "qwen2-vl", "qwen2_vl", "Qwen2VLForConditionalGeneration",
        "flowcut_hf.families.qwen2_vl.adapter:Qwen2VLFamily",
        amount_kinds=("retain_ratio", "target_num"), examples=("Qwen/Qwen2-VL-7B-Instruct",),
        vllm_model="flowcut_hf.families.qwen2_vl.vllm:FlowCutQwen2VLForVllm", vllm_methods=("flowcut",),
        vllm_requires=(("flowcut_llm_stage", False),),
    ),
    FamilyEntry(
        "qwen2_5_vl", "Qwen2.5-VL", "qwen2.5-vl", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration",
        "flowcut_hf.families.qwen2_vl.adapter:Qwen2_5VLFamily",
        amount_kinds=("retain_ratio", "target_num"), examples=("Qwen/Qwen2.5-VL-7B-Instruct",),
        vllm_model="flowcut_hf.families.qwen2_vl.vllm:FlowCutQwen2_5_VLForVllm", vllm_methods=("flowcut",),
        vllm_requires=(("flowcut_llm_stage", False),),
    ),
    FamilyEntry(
        "llava_onevision", "LLaVA-OneVision", "llava-onevision", "llava_onevision", "LlavaOnevisionForConditionalGeneration",
        "flowcut_hf.families.llava_onevision.adapter:LlavaOnevisionFamily",
        methods=("vflowopt", "flowcut"), examples=("llava-hf/llava-onevision-qwen2-7b-ov-hf",),
        vllm_model="flowcut_hf.families.llava_onevision.vllm:FlowCutCheckedLlavaOnevision",
    ),
)


@cache
def families() -> tuple[FlowCutFamily, ...]:
    """Every family's adapter, in the registry's order (imported on first use)."""
    return tuple(_adapter(entry) for entry in REGISTRY)


def _adapter(entry: FamilyEntry) -> FlowCutFamily:
    module_name, _, class_name = entry.adapter.partition(":")
    return getattr(importlib.import_module(module_name), class_name)(entry)


def supported_names() -> str:
    return ", ".join(f"{f.stock_model_class.__name__} ({f.display_name})" for f in families())


def family_for_model(model: object) -> FlowCutFamily:
    """The family of a loaded model, stock or already FlowCut. Raises TypeError naming the supported classes."""
    for family in families():
        if isinstance(model, family.stock_model_class):
            return family
    raise TypeError(
        f"FlowCut supports {supported_names()}; got {type(model).__name__}. Load the model with "
        "AutoModelForImageTextToText first."
    )


def entry_for_config(config: Mapping[str, Any] | Any) -> FamilyEntry:
    """The registry entry of an HF-format checkpoint's config (a ``config.json`` dict or a config object), without
    importing any adapter."""
    data = config if isinstance(config, Mapping) else config.to_dict()
    model_type = data.get("model_type")
    for entry in REGISTRY:
        if model_type == entry.model_type:
            return entry
    raise ValueError(
        f"model_type {model_type!r} is not a FlowCut family; supported: "
        + ", ".join(f"{e.model_type!r} ({e.display_name})" for e in REGISTRY)
    )


def family_for_config(config: Mapping[str, Any] | Any) -> FlowCutFamily:
    """The family of an HF-format checkpoint's config (a ``config.json`` dict or a config object)."""
    return family_named(entry_for_config(config).name)


def family_of_checkpoint(config: Mapping[str, Any], source: str) -> FlowCutFamily:
    """The family of the checkpoint ``source`` (a folder or a repo id) from its ``config.json``; a one-line ValueError
    naming what is supported otherwise, the same for every command."""
    try:
        return family_for_config(config)
    except ValueError:
        raise ValueError(
            f"{source} is not a checkpoint of a FlowCut family (model_type={config.get('model_type')!r}, "
            f"architectures={config.get('architectures')}). {supported_checkpoints()}"
        ) from None


def supported_checkpoints() -> str:
    """What the commands take, in one sentence (for messages and help texts)."""
    originals = [entry.original_format for entry in REGISTRY if entry.original_format]
    text = "flowcut-hf supports HF-format " + ", ".join(f"{e.display_name} ({e.model_class})" for e in REGISTRY) + " checkpoints"
    return text + (f"; `flowcut-hf export` also converts {', '.join(originals)} ones." if originals else ".")


def family_named(name: str) -> FlowCutFamily:
    """The family whose ``name`` (``llava_next``) or command-line word (``llava-next``) is ``name``."""
    for entry, family in zip(REGISTRY, families()):
        if name in (entry.name, entry.cli_name):
            return family
    raise ValueError(f"unknown FlowCut family {name!r}; known: {', '.join(entry.cli_name for entry in REGISTRY)}")


def cli_names(method: str | None = None) -> tuple[str, ...]:
    """The command line's family words, in the registry's order (only the families running ``method``, if given)."""
    return tuple(entry.cli_name for entry in REGISTRY if method is None or method in entry.methods)


def display_names(predicate=lambda entry: True) -> str:
    """The display names of the entries ``predicate`` accepts, as a list in words."""
    names = [entry.display_name for entry in REGISTRY if predicate(entry)]
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1] if names else ""


def __getattr__(name: str) -> Any:
    # FAMILIES and FlowCutFamily need the adapters (and torch); they load on first use.
    if name == "FAMILIES":
        return families()
    if name == "FlowCutFamily":
        from .family import FlowCutFamily

        return FlowCutFamily
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FAMILIES", "REGISTRY", "FamilyEntry", "FlowCutFamily", "cli_names", "display_names", "entry_for_config",
    "families", "family_for_config", "family_for_model", "family_named", "family_of_checkpoint", "supported_checkpoints",
]
