"""The in-process API: turn an already loaded stock model (and its processor) into FlowCut ones."""

from __future__ import annotations

from transformers import PreTrainedModel, ProcessorMixin

from .family import FlowCutFamily
from .registry import display_names, families, family_for_model


class FamilyDefault:
    """Marks ``target_num`` as not given: the family's paper default applies (an explicit None is an error)."""

    def __repr__(self) -> str:
        return "<the family's default>"


FAMILY_DEFAULT = FamilyDefault()


def flowcut(
    model: PreTrainedModel,
    target_num: int | FamilyDefault = FAMILY_DEFAULT,
    *,
    retain_ratio: float | None = None,
    enabled: bool = True,
    prune_interval: int = 2,
    history_weight: float = 0.5,
    llm_prune_layer: int | None = None,
    llm_stage: bool | None = None,
) -> PreTrainedModel:
    """Makes a loaded model prune its visual tokens with FlowCut, in place, and returns it.

    Only this instance changes (its class and its config's class are swapped for the family's FlowCut subclasses,
    ToMe-style); other instances of the same class in the process are unaffected. ``model.save_pretrained(folder)``
    then writes a folder that ``AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)`` loads as
    a pruning model.

    Supported: ``LlavaForConditionalGeneration`` (LLaVA-1.5; pair it with :func:`flowcut_processor`, so that prompts
    carry ``target_num`` placeholders per image), ``LlavaNextForConditionalGeneration`` (LLaVA-NeXT) and
    ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration`` (Qwen2-VL, Qwen2.5-VL); the last three
    keep their stock processors, the model shortens the sequence itself.

    Args:
        model: a loaded stock (or FlowCut) model of a supported family.
        target_num: visual tokens kept per image; the family's paper default if not given (64 for LLaVA-1.5, 160 for
            LLaVA-NeXT). LLaVA-1.5 has 576 per image, a value >= 576 keeps all of them; LLaVA-NeXT keeps
            ``target_num // 2`` per crop in the vision encoder and ``target_num`` per image after
            ``llm_prune_layer``. Qwen2-VL / Qwen2.5-VL: a count per image, instead of ``retain_ratio``.
        retain_ratio: Qwen2-VL / Qwen2.5-VL only: the share of each image's tokens kept (0.111 by default, as in the
            paper's most aggressive setting); 1.0 computes exactly what the stock model computes.
        enabled: False installs the classes but computes exactly what the stock model computes.
        prune_interval, history_weight: vision-stage settings, see the family's config class.
        llm_prune_layer: the decoder layer whose attention scores the visual tokens (families that prune inside the
            LLM only; 1 by default, as in the paper).
        llm_stage: Qwen2-VL / Qwen2.5-VL only: False makes the vision encoder cut straight to the retained amount,
            with no pruning inside the language model: the schedule vLLM serves (True by default, as in the paper).
    """
    family = family_for_model(model)
    if "flowcut" not in family.methods:
        raise ValueError(
            f"FlowCut is not available for {family.display_name} yet; it supports {list(family.methods)}: use "
            f"flowcut_hf.prune(model, method={family.methods[0]!r})."
        )
    family.check_vision_tower(model.config.vision_config)
    for name, value in (("llm_prune_layer", llm_prune_layer), ("llm_stage", llm_stage)):
        if value is not None and not family.llm_stage:
            raise ValueError(f"{family.display_name} prunes only in the vision encoder; {name} does not apply.")
    if retain_ratio is not None and family.default_retain_ratio is None:
        raise ValueError(f"{family.display_name} keeps a fixed count per image: pass target_num, not retain_ratio.")
    settings = family.flowcut_fields(
        family.default_target_num if target_num is FAMILY_DEFAULT else target_num,
        retain_ratio=retain_ratio,
        enabled=enabled,
        prune_interval=prune_interval,
        history_weight=history_weight,
        llm_prune_layer=llm_prune_layer,
        llm_stage=llm_stage,
    )
    if "pruning_method" in family.field_validators:  # a model that ran VFlowOpt switches back
        settings["pruning_method"] = "flowcut"
    # Validate the settings on a throwaway config before touching the live model.
    family.config_class(**{**model.config.to_dict(), **settings})
    install_family_classes(model, family)
    for name, value in settings.items():
        setattr(model.config, name, value)
    return model


def install_family_classes(model: PreTrainedModel, family: FlowCutFamily) -> None:
    if not isinstance(model.config, family.config_class):
        model.config.__class__ = family.config_class
    if not isinstance(model, family.model_class):
        model.__class__ = family.model_class
        model.model.__class__ = family.inner_model_class


def flowcut_processor(
    processor: ProcessorMixin, target_num: int | FamilyDefault = FAMILY_DEFAULT, *, enabled: bool = True
) -> ProcessorMixin:
    """The processor a FlowCut model of ``processor``'s family needs.

    LLaVA-1.5: a :class:`FlowCutLlavaProcessor` with the same tokenizer, image processor and settings, which emits
    ``target_num`` ``<image>`` placeholders per image. LLaVA-NeXT: ``processor`` itself, unchanged (the model replaces
    the stock placeholder spans by its kept tokens).
    """
    for family in families():
        if isinstance(processor, family.stock_processor_class):
            if "flowcut" not in family.methods:
                return family.processor_for(processor, None, enabled)  # its stock processor, unchanged
            count = family.default_target_num if target_num is FAMILY_DEFAULT else target_num
            family.flowcut_fields(count, enabled=enabled)
            return family.processor_for(processor, count, enabled)
    raise TypeError(
        "flowcut_processor() takes the processor of a supported family ("
        + ", ".join(f.stock_processor_class.__name__ for f in families())
        + f"), got {type(processor).__name__}."
    )


def prune(
    model: PreTrainedModel,
    method: str = "flowcut",
    *,
    preset: str | None = None,
    enabled: bool = True,
    **settings,
) -> PreTrainedModel:
    """Makes a loaded model prune its visual tokens with ``method``, in place (this instance only), and returns it.

    ``method="flowcut"`` is :func:`flowcut` (``settings`` are its keyword arguments). ``method="vflowopt"`` runs
    VFlowOpt (LLaVA-OneVision, LLaVA-1.5, LLaVA-NeXT; all with their stock processors): ``preset`` names a released
    setting (``"10%"``, ``"25%"``, ``"50%"``, the share of visual tokens kept averaged over the decoder layers; 10% by
    default), and ``settings`` override its fields by short name (``vision_keep``, ``threshold``, ``cell_side``,
    ``entropy_weight``, ``llm_layers``, ``llm_keeps``). The presets were searched on LLaVA-OneVision-7B (28 layers);
    on a language model of another depth they are moved to it with the same budget
    (:func:`~flowcut_hf.modeling.vflowopt_core.preset_for_depth`), and ``flowcut-hf search`` finds the model's own.
    The saved model runs the method its config names.
    """
    if method == "flowcut":
        if preset is not None:
            raise ValueError("FlowCut has no presets; pass target_num= (or retain_ratio=, where the family takes one).")
        return flowcut(model, enabled=enabled, **settings)
    if method != "vflowopt":
        raise ValueError(f"unknown pruning method {method!r}; known: 'flowcut', 'vflowopt'.")
    family = family_for_model(model)
    if "vflowopt" not in family.methods:
        supported = display_names(lambda entry: "vflowopt" in entry.methods)
        raise ValueError(f"VFlowOpt is available for {supported}; {family.display_name} supports {list(family.methods)}.")
    from .modeling.vflowopt_core import check_llm_layers, preset_for_depth, vflowopt_fields, vflowopt_settings

    num_layers = model.config.text_config.num_hidden_layers
    fields = {
        **vflowopt_fields(preset_for_depth(preset or "10%", num_layers)),
        "pruning_method": "vflowopt",
        "vflowopt_enabled": enabled,
    }
    for short, value in settings.items():
        key = f"vflowopt_{short}"
        if key not in family.field_validators:
            known = sorted(k.removeprefix("vflowopt_") for k in family.field_validators if k.startswith("vflowopt_"))
            raise ValueError(f"{short} is not a VFlowOpt setting; known: {known}.")
        fields[key] = value
    for key, value in fields.items():
        family.field_validators[key](value)
    # The fields together (one keep share per LLM layer, layers inside the model) before touching the live model.
    check_llm_layers(vflowopt_settings(family.config_class(**{**model.config.to_dict(), **fields})), num_layers)
    install_family_classes(model, family)
    for key, value in fields.items():
        setattr(model.config, key, value)
    return model
