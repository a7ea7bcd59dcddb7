"""The in-process API: turn an already loaded stock LLaVA model (and its processor) into FlowCut ones."""

from __future__ import annotations

from transformers import LlavaForConditionalGeneration, LlavaProcessor

from .modeling.configuration_flowcut_llava import FlowCutLlavaConfig, validate_target_num
from .modeling.modeling_flowcut_llava import FlowCutLlavaForConditionalGeneration, FlowCutLlavaModel
from .modeling.processing_flowcut_llava import FlowCutLlavaProcessor


def flowcut(
    model: LlavaForConditionalGeneration,
    target_num: int = 64,
    *,
    enabled: bool = True,
    prune_interval: int = 2,
    history_weight: float = 0.5,
) -> FlowCutLlavaForConditionalGeneration:
    """Makes a loaded LLaVA model prune its visual tokens with FlowCut, in place, and returns it.

    Only this instance changes (its class and its config's class are swapped for FlowCut subclasses, ToMe-style);
    other instances of the same class in the process are unaffected. ``model.save_pretrained(folder)`` then writes
    a folder that ``AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)`` loads as a pruning
    model. Pair it with :func:`flowcut_processor`, so that prompts carry ``target_num`` placeholders per image.

    Args:
        model: a ``LlavaForConditionalGeneration`` (LLaVA-1.5 layout: CLIP vision tower, one feature layer).
        target_num: visual tokens kept per image (LLaVA-1.5 has 576); a value >= 576 keeps all of them.
        enabled: False installs the classes but computes exactly what the stock model computes.
        prune_interval, history_weight: method settings, see ``FlowCutLlavaConfig``.
    """
    if not isinstance(model, LlavaForConditionalGeneration):
        raise TypeError(
            f"flowcut() takes a LlavaForConditionalGeneration (LLaVA-1.5 layout), got {type(model).__name__}. "
            "Load the model with AutoModelForImageTextToText or LlavaForConditionalGeneration first."
        )
    validate_target_num(target_num)
    vision_type = getattr(model.config.vision_config, "model_type", None)
    if vision_type not in ("clip_vision_model", "clip"):
        raise ValueError(f"FlowCut's LLaVA adapter needs a CLIP vision tower, this model has {vision_type!r}.")

    settings = dict(
        flowcut_target_num=target_num,
        flowcut_enabled=enabled,
        flowcut_prune_interval=prune_interval,
        flowcut_history_weight=history_weight,
    )
    # Validate the settings on a throwaway config before touching the live model.
    FlowCutLlavaConfig(**{**model.config.to_dict(), **settings})
    config = model.config
    if not isinstance(config, FlowCutLlavaConfig):
        config.__class__ = FlowCutLlavaConfig
    for name, value in settings.items():
        setattr(config, name, value)
    if not isinstance(model, FlowCutLlavaForConditionalGeneration):
        model.__class__ = FlowCutLlavaForConditionalGeneration
        model.model.__class__ = FlowCutLlavaModel
    return model


def flowcut_processor(processor: LlavaProcessor, target_num: int = 64, *, enabled: bool = True) -> FlowCutLlavaProcessor:
    """Returns a :class:`FlowCutLlavaProcessor` with the same tokenizer, image processor and settings as ``processor``.

    The new processor emits ``target_num`` ``<image>`` placeholders per image, as a FlowCut model expects.
    """
    if not isinstance(processor, LlavaProcessor):
        raise TypeError(f"flowcut_processor() takes a LlavaProcessor, got {type(processor).__name__}.")
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
    )
