"""Configuration of a LLaVA model that prunes its visual tokens with FlowCut.

``model_type`` stays ``"llava"`` on purpose: a user who loads the repo without ``trust_remote_code`` gets the stock,
unpruned LLaVA, whose model and processor still agree with each other.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlavaConfig

from .flowcut_settings import (
    DEFAULT_HISTORY_WEIGHT,
    DEFAULT_PRUNE_INTERVAL,
    DEFAULT_TARGET_NUM,
    FIELD_VALIDATORS,
    ValidatedFlowCutFields,
    validate_enabled,
    validate_target_num,
)
from .vflowopt_core import VFLOWOPT_FIELD_VALIDATORS, method_validator, preset_for_depth, vflowopt_fields

LLAVA_CONFIG_VALIDATORS = {
    **FIELD_VALIDATORS,
    "pruning_method": method_validator(("flowcut", "vflowopt"), "LLaVA-1.5"),
    **VFLOWOPT_FIELD_VALIDATORS,
}
# VFlowOpt's 10% preset moved to Vicuna-7B's 32 layers; see vflowopt_core.preset_for_depth.
_VFLOWOPT_DEFAULTS = vflowopt_fields(preset_for_depth("10%", 32))


@strict
class FlowCutLlavaConfig(ValidatedFlowCutFields, LlavaConfig):
    r"""A [`LlavaConfig`] with the FlowCut settings.

    Args:
        flowcut_target_num (`int`, defaults to 64):
            Visual tokens kept per image and fed to the language model. A value at or above the encoder's patch
            count (576 for LLaVA-1.5) keeps every token and runs the stock computation.
        flowcut_enabled (`bool`, defaults to `True`):
            Switch pruning off entirely; the model then computes exactly what stock LLaVA computes.
        flowcut_prune_interval (`int`, defaults to 2):
            Prune at every n-th vision-encoder layer, counted back from the final cut (the paper's best is 2).
        flowcut_history_weight (`float`, defaults to 0.5):
            Weight of the running score in the cumulative score update (the paper uses 0.5/0.5).
        pruning_method (`str`, defaults to `"flowcut"`):
            `"vflowopt"` runs VFlowOpt instead, with the `vflowopt_*` fields (see `FlowCutLlavaOnevisionConfig` for
            their meaning); `flowcut_hf.prune(model, method="vflowopt", preset="10%")` sets them. VFlowOpt takes the
            stock processor's 576 placeholders per image and shortens the sequence itself.
    """

    flowcut_field_validators = LLAVA_CONFIG_VALIDATORS

    # Typed Any: see ValidatedFlowCutFields, which checks every assignment.
    flowcut_target_num: Any = DEFAULT_TARGET_NUM
    flowcut_enabled: Any = True
    flowcut_prune_interval: Any = DEFAULT_PRUNE_INTERVAL
    flowcut_history_weight: Any = DEFAULT_HISTORY_WEIGHT
    pruning_method: Any = "flowcut"
    vflowopt_enabled: Any = True
    vflowopt_vision_keep: Any = _VFLOWOPT_DEFAULTS["vflowopt_vision_keep"]
    vflowopt_threshold: Any = _VFLOWOPT_DEFAULTS["vflowopt_threshold"]
    vflowopt_cell_side: Any = _VFLOWOPT_DEFAULTS["vflowopt_cell_side"]
    vflowopt_entropy_weight: Any = _VFLOWOPT_DEFAULTS["vflowopt_entropy_weight"]
    vflowopt_llm_layers: Any = tuple(_VFLOWOPT_DEFAULTS["vflowopt_llm_layers"])
    vflowopt_llm_keeps: Any = tuple(_VFLOWOPT_DEFAULTS["vflowopt_llm_keeps"])


__all__ = ["FlowCutLlavaConfig", "LLAVA_CONFIG_VALIDATORS", "validate_target_num", "validate_enabled", "DEFAULT_TARGET_NUM", "FIELD_VALIDATORS"]
