"""The one map from stock model classes to their FlowCut classes.

``flowcut()``, the exporter, bench and visualize look a model up here, so adding a family is one modeling file in
``modeling/`` plus one :class:`FlowCutFamily` entry in :data:`FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextModel,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionModel,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PretrainedConfig,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLModel,
    Qwen2VLProcessor,
)

from .modeling import configuration_flowcut_llava as llava_config
from .modeling import configuration_flowcut_llava_next as next_config
from .modeling import configuration_flowcut_llava_onevision as onevision_config
from .modeling import modeling_flowcut_llava_onevision as onevision_modeling
from .modeling import modeling_flowcut_llava as llava_modeling
from .modeling import configuration_flowcut_qwen2_vl as qwen_config
from .modeling import modeling_flowcut_llava_next as next_modeling
from .modeling import modeling_flowcut_qwen2_vl as qwen_modeling
from .modeling.flowcut_clip import check_clip_vision_tower
from .modeling.flowcut_remote_code import remote_code_files
from .modeling.processing_flowcut_llava import FlowCutLlavaProcessor


def fixed_count_llava_processor(
    processor: ProcessorMixin, target_num: int, enabled: bool = True, original_llava_tokenization: bool = False
) -> ProcessorMixin:
    """LLaVA-1.5: a processor that emits ``target_num`` placeholders per image, since the model keeps that many
    (``original_llava_tokenization``: for a model converted from the original LLaVA format, see
    :class:`FlowCutLlavaProcessor`)."""
    if not isinstance(processor, LlavaProcessor):
        raise TypeError(f"a FlowCut LLaVA model takes a LlavaProcessor, got {type(processor).__name__}.")
    return FlowCutLlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=processor.patch_size,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
        num_additional_image_tokens=processor.num_additional_image_tokens,
        flowcut_target_num=target_num,
        flowcut_enabled=enabled,
        original_llava_tokenization=original_llava_tokenization,
    )


def llava_unpruned_image_tokens(config: PretrainedConfig) -> int:
    """LLaVA-1.5: every image gives the encoder's patch count (576 at 336 px / 14 px), plus CLS with "full"."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (getattr(config, "vision_feature_select_strategy", "default") == "full")


def next_unpruned_image_tokens(config: PretrainedConfig) -> int:
    """LLaVA-NeXT: the largest stock count any image can have, reached by an image that fills a grid pinpoint
    exactly (2928 for the standard pinpoints: 576 base + 48x48 grid + 48 newlines)."""
    return max(next_modeling.stock_token_count(config, pinpoint) for pinpoint in config.image_grid_pinpoints)


def qwen_unpruned_image_tokens(config: PretrainedConfig) -> int:
    """Qwen2-VL / Qwen2.5-VL: the most merge units the stock processor gives an image (its default max_pixels,
    12845056 px, in 28 x 28 px units)."""
    merge_pixels = (config.vision_config.patch_size * config.vision_config.spatial_merge_size) ** 2
    return 12845056 // merge_pixels


def onevision_unpruned_image_tokens(config: PretrainedConfig) -> int:
    """LLaVA-OneVision: the packed tokens of a square image on the 2x2 grid (3699 at 384 px: the base crop's 729 plus
    54 rows of 54 tokens and a newline), the spec's reference image."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return side * side + 2 * side * (2 * side + 1)


def any_vision_tower(vision_config: PretrainedConfig) -> None:
    """Families whose adapter is written for their own vision tower need no check."""


def unchanged_stock_processor(stock_class: type) -> Callable[..., ProcessorMixin]:
    """Families whose model shortens the sequence itself keep the stock processor as it is."""

    def keep(processor: ProcessorMixin, target_num: int, enabled: bool = True) -> ProcessorMixin:
        if not isinstance(processor, stock_class):
            raise TypeError(f"this FlowCut model takes a {stock_class.__name__}, got {type(processor).__name__}.")
        return processor

    return keep


@dataclass(frozen=True)
class FlowCutFamily:
    """One model family: its stock classes, its FlowCut classes and how its processor follows the settings.

    Attributes:
        name: short id used on the command line and in cards (``llava``, ``llava_next``).
        display_name: how cards and tables name it.
        model_type: the stock ``model_type``, which FlowCut configs keep so that loading without
            ``trust_remote_code`` falls back to the stock model.
        stock_model_class / stock_inner_class / stock_config_class / stock_processor_class: the stock classes.
        model_class / inner_model_class / config_class: the FlowCut subclasses.
        auto_map: the ``auto_map`` of a saved config.
        remote_code_entry_files: the modeling files a saved folder needs (their imports come along).
        processor_for: ``(stock processor, target_num, enabled) -> processor`` for this model.
        processor_class_name: the class of the processor a saved folder loads as, with ``trust_remote_code``.
        unpruned_image_tokens: ``config -> int``, the visual tokens of an image without pruning (the most an image
            can have, for families whose count depends on the image size).
        field_validators: every pruning config field of the family (``flowcut_*``, ``pruning_method``,
            ``vflowopt_*``) and its validator.
        default_target_num: the paper's default for the family; None for families that default to a ratio.
        llm_stage: whether the family prunes inside the language model too (``flowcut_llm_prune_layer``).
        check_vision_tower: ``vision_config -> None``, raises if the adapter cannot prune this vision tower.
        default_retain_ratio: families with per-image token counts: the default share kept per image.
        copies_processor_files: the exporter copies the stock processor's files byte for byte instead of loading
            and saving the processor (it stays the stock one, and loading it may need optional packages).
        methods: the pruning methods the family's classes run (``flowcut``, ``vflowopt``).
    """

    name: str
    display_name: str
    model_type: str
    stock_model_class: type
    stock_inner_class: type
    stock_config_class: type
    stock_processor_class: type
    model_class: type
    inner_model_class: type
    config_class: type
    auto_map: Mapping[str, str]
    remote_code_entry_files: tuple[str, ...]
    processor_for: Callable[..., ProcessorMixin]
    processor_class_name: str
    unpruned_image_tokens: Callable[[PretrainedConfig], int]
    field_validators: Mapping[str, Callable[[object], object]]
    default_target_num: int | None
    llm_stage: bool
    check_vision_tower: Callable[[PretrainedConfig], None] = check_clip_vision_tower
    default_retain_ratio: float | None = None
    copies_processor_files: bool = False
    methods: tuple[str, ...] = ("flowcut",)

    def config_from_dict(self, data: Mapping[str, Any]) -> PretrainedConfig:
        """The stock config of a ``config.json`` dict (FlowCut fields and ``auto_map`` are kept as extra attributes)."""
        return self.stock_config_class.from_dict({k: v for k, v in data.items() if k != "auto_map"})

    def remote_code_files(self):
        """The remote-code files a saved folder of this family holds."""
        return remote_code_files(self.remote_code_entry_files)

    def flowcut_fields(self, target_num: int | None, **settings: Any) -> dict[str, Any]:
        """Validated ``flowcut_*`` config fields for ``target_num`` and the given settings (short names).

        For a family with a retain ratio, a count clears the ratio's effect (the count wins) and a ratio clears the
        count, so the fields always say one amount.
        """
        fields = {"flowcut_target_num": target_num, **{f"flowcut_{k}": v for k, v in settings.items() if v is not None}}
        if "flowcut_retain_ratio" in self.field_validators:
            if target_num is None:
                fields.setdefault("flowcut_retain_ratio", self.default_retain_ratio)
            elif fields.get("flowcut_retain_ratio") is not None:
                raise ValueError("give target_num or retain_ratio, not both: each sets how many tokens an image keeps")
        for name, value in fields.items():
            validator = self.field_validators.get(name)
            if validator is None:
                known = sorted(k.removeprefix("flowcut_") for k in self.field_validators if k.startswith("flowcut_"))
                raise ValueError(f"{name.removeprefix('flowcut_')} is not a FlowCut setting of {self.display_name}; known: {known}.")
            validator(value)
        return fields


FAMILIES: tuple[FlowCutFamily, ...] = (
    FlowCutFamily(
        name="llava",
        display_name="LLaVA-1.5",
        model_type="llava",
        stock_model_class=LlavaForConditionalGeneration,
        stock_inner_class=LlavaModel,
        stock_config_class=LlavaConfig,
        stock_processor_class=LlavaProcessor,
        model_class=llava_modeling.FlowCutLlavaForConditionalGeneration,
        inner_model_class=llava_modeling.FlowCutLlavaModel,
        config_class=llava_config.FlowCutLlavaConfig,
        auto_map=llava_modeling.AUTO_MAP,
        remote_code_entry_files=llava_modeling.REMOTE_CODE_ENTRY_FILES,
        processor_for=fixed_count_llava_processor,
        processor_class_name="FlowCutLlavaProcessor",
        unpruned_image_tokens=llava_unpruned_image_tokens,
        field_validators={k: v for k, v in llava_config.LLAVA_CONFIG_VALIDATORS.items() if k != "flowcut_llm_prune_layer"},
        default_target_num=llava_config.DEFAULT_TARGET_NUM,
        llm_stage=False,
        methods=("flowcut", "vflowopt"),
    ),
    FlowCutFamily(
        name="llava_next",
        display_name="LLaVA-NeXT",
        model_type="llava_next",
        stock_model_class=LlavaNextForConditionalGeneration,
        stock_inner_class=LlavaNextModel,
        stock_config_class=LlavaNextConfig,
        stock_processor_class=LlavaNextProcessor,
        model_class=next_modeling.FlowCutLlavaNextForConditionalGeneration,
        inner_model_class=next_modeling.FlowCutLlavaNextModel,
        config_class=next_config.FlowCutLlavaNextConfig,
        auto_map=next_modeling.AUTO_MAP,
        remote_code_entry_files=next_modeling.REMOTE_CODE_ENTRY_FILES,
        processor_for=unchanged_stock_processor(LlavaNextProcessor),
        processor_class_name="LlavaNextProcessor",
        unpruned_image_tokens=next_unpruned_image_tokens,
        field_validators=next_config.NEXT_CONFIG_VALIDATORS,
        default_target_num=next_config.DEFAULT_NEXT_TARGET_NUM,
        llm_stage=True,
        methods=("flowcut", "vflowopt"),
    ),
    *(
        FlowCutFamily(
            name=name,
            display_name=display_name,
            model_type=model_type,
            stock_model_class=stock_model,
            stock_inner_class=stock_inner,
            stock_config_class=stock_config,
            stock_processor_class=stock_processor,
            model_class=getattr(qwen_modeling, f"FlowCut{stem}ForConditionalGeneration"),
            inner_model_class=getattr(qwen_modeling, f"FlowCut{stem}Model"),
            config_class=getattr(qwen_config, f"FlowCut{stem}Config"),
            auto_map=auto_map,
            remote_code_entry_files=qwen_modeling.REMOTE_CODE_ENTRY_FILES,
            processor_for=unchanged_stock_processor(stock_processor),
            processor_class_name=stock_processor.__name__,
            unpruned_image_tokens=qwen_unpruned_image_tokens,
            field_validators=qwen_config.QWEN_FIELD_VALIDATORS,
            default_target_num=None,
            llm_stage=True,
            check_vision_tower=any_vision_tower,
            default_retain_ratio=qwen_config.DEFAULT_QWEN_RETAIN_RATIO,
            copies_processor_files=True,
        )
        for name, display_name, model_type, stem, stock_model, stock_inner, stock_config, stock_processor, auto_map in (
            ("qwen2_vl", "Qwen2-VL", "qwen2_vl", "Qwen2VL", Qwen2VLForConditionalGeneration, Qwen2VLModel,
             Qwen2VLConfig, Qwen2VLProcessor, qwen_modeling.AUTO_MAP_QWEN2_VL),
            ("qwen2_5_vl", "Qwen2.5-VL", "qwen2_5_vl", "Qwen2_5_VL", Qwen2_5_VLForConditionalGeneration,
             Qwen2_5_VLModel, Qwen2_5_VLConfig, Qwen2_5_VLProcessor, qwen_modeling.AUTO_MAP_QWEN2_5_VL),
        )
    ),
    FlowCutFamily(
        name="llava_onevision",
        display_name="LLaVA-OneVision",
        model_type="llava_onevision",
        stock_model_class=LlavaOnevisionForConditionalGeneration,
        stock_inner_class=LlavaOnevisionModel,
        stock_config_class=LlavaOnevisionConfig,
        stock_processor_class=LlavaOnevisionProcessor,
        model_class=onevision_modeling.FlowCutLlavaOnevisionForConditionalGeneration,
        inner_model_class=onevision_modeling.FlowCutLlavaOnevisionModel,
        config_class=onevision_config.FlowCutLlavaOnevisionConfig,
        auto_map=onevision_modeling.AUTO_MAP,
        remote_code_entry_files=onevision_modeling.REMOTE_CODE_ENTRY_FILES,
        processor_for=unchanged_stock_processor(LlavaOnevisionProcessor),
        processor_class_name="LlavaOnevisionProcessor",
        unpruned_image_tokens=onevision_unpruned_image_tokens,
        field_validators=onevision_config.ONEVISION_FIELD_VALIDATORS,
        default_target_num=onevision_config.DEFAULT_ONEVISION_TARGET_NUM,
        llm_stage=True,
        check_vision_tower=any_vision_tower,
        copies_processor_files=True,
        methods=("vflowopt", "flowcut"),
    ),
)


def supported_names() -> str:
    return ", ".join(f"{f.stock_model_class.__name__} ({f.display_name})" for f in FAMILIES)


def family_for_model(model: object) -> FlowCutFamily:
    """The family of a loaded model, stock or already FlowCut. Raises TypeError naming the supported classes."""
    for family in FAMILIES:
        if isinstance(model, family.stock_model_class):
            return family
    raise TypeError(
        f"FlowCut supports {supported_names()}; got {type(model).__name__}. Load the model with "
        "AutoModelForImageTextToText first."
    )


def family_for_config(config: Mapping[str, Any] | PretrainedConfig) -> FlowCutFamily:
    """The family of an HF-format checkpoint's config (a ``config.json`` dict or a config object)."""
    data = config.to_dict() if isinstance(config, PretrainedConfig) else dict(config)
    model_type = data.get("model_type")
    for family in FAMILIES:
        if model_type == family.model_type:
            return family
    raise ValueError(
        f"model_type {model_type!r} is not a FlowCut family; supported: "
        + ", ".join(f"{f.model_type!r} ({f.display_name})" for f in FAMILIES)
    )


def family_of_checkpoint(config: Mapping[str, Any], source: str) -> FlowCutFamily:
    """The family of the checkpoint ``source`` (a folder or a repo id) from its ``config.json``; a one-line ValueError
    naming what is supported otherwise, the same for every command."""
    try:
        return family_for_config(config)
    except ValueError:
        raise ValueError(
            f"{source} is not a checkpoint of a FlowCut family (model_type={config.get('model_type')!r}, "
            f"architectures={config.get('architectures')}). flowcut-hf supports HF-format "
            + ", ".join(f"{f.display_name} ({f.stock_model_class.__name__})" for f in FAMILIES)
            + " checkpoints; `flowcut-hf export` also converts original-LLaVA-1.5 (LlavaLlamaForCausalLM) ones."
        ) from None


def family_named(name: str) -> FlowCutFamily:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown FlowCut family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


__all__ = ["FAMILIES", "FlowCutFamily", "family_for_config", "family_for_model", "family_named", "family_of_checkpoint"]
