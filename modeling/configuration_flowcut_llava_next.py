"""Configuration of a LLaVA-NeXT model that prunes its visual tokens with FlowCut, in the vision encoder and in the LLM.

``model_type`` stays ``"llava_next"``: without ``trust_remote_code`` the repo loads as the stock, unpruned
LLaVA-NeXT, which works with the stock processor that every FlowCut LLaVA-NeXT repo ships unchanged.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlavaNextConfig

from .flowcut_settings import (
    DEFAULT_HISTORY_WEIGHT,
    DEFAULT_LLM_PRUNE_LAYER,
    DEFAULT_PRUNE_INTERVAL,
    FIELD_VALIDATORS,
    ValidatedFlowCutFields,
    validate_target_num,
)
from .vflowopt_core import VFLOWOPT_FIELD_VALIDATORS, method_validator, preset_for_depth, vflowopt_fields

DEFAULT_NEXT_TARGET_NUM = 160  # the paper's headline LLaVA-NeXT setting


def validate_next_target_num(target_num: object) -> int:
    # The vision stage keeps target_num // 2 patches per crop: below 2 a crop would keep nothing.
    return validate_target_num(
        target_num, minimum=2, why=" (LLaVA-NeXT keeps target_num // 2 patches of every crop in the vision encoder)"
    )


NEXT_FIELD_VALIDATORS = {**FIELD_VALIDATORS, "flowcut_target_num": validate_next_target_num}
NEXT_CONFIG_VALIDATORS = {
    **NEXT_FIELD_VALIDATORS,
    "pruning_method": method_validator(("flowcut", "vflowopt"), "LLaVA-NeXT"),
    **VFLOWOPT_FIELD_VALIDATORS,
}
# VFlowOpt's 10% preset moved to a 32-layer LLM (Vicuna-7B / Mistral-7B); see vflowopt_core.preset_for_depth.
_VFLOWOPT_DEFAULTS = vflowopt_fields(preset_for_depth("10%", 32))


@strict
class FlowCutLlavaNextConfig(ValidatedFlowCutFields, LlavaNextConfig):
    r"""A [`LlavaNextConfig`] with the FlowCut settings.

    Args:
        flowcut_target_num (`int`, defaults to 160):
            Visual tokens kept per image in the LLM after its `flowcut_llm_prune_layer`. The vision encoder keeps
            `flowcut_target_num // 2` patches of every anyres crop. An image whose stock token count is at most this
            value is kept whole, exactly as the stock model sees it.
        flowcut_enabled (`bool`, defaults to `True`):
            Switch pruning off entirely; the model then computes exactly what stock LLaVA-NeXT computes.
        flowcut_prune_interval (`int`, defaults to 2):
            Prune at every n-th vision-encoder layer, counted back from the final cut (the paper's best is 2).
        flowcut_history_weight (`float`, defaults to 0.5):
            Weight of the running score in the cumulative score update (the paper uses 0.5/0.5).
        flowcut_llm_prune_layer (`int`, defaults to 1):
            The decoder layer whose attention scores the visual tokens; layers up to it see every visual token,
            later layers only the kept ones (the paper prunes after the second layer, index 1).
        pruning_method (`str`, defaults to `"flowcut"`):
            `"vflowopt"` runs VFlowOpt instead, with the `vflowopt_*` fields (see `FlowCutLlavaOnevisionConfig` for
            their meaning); `flowcut_hf.prune(model, method="vflowopt", preset="10%")` sets them.
    """

    flowcut_field_validators = NEXT_CONFIG_VALIDATORS

    # Typed Any: see ValidatedFlowCutFields, which checks every assignment.
    flowcut_target_num: Any = DEFAULT_NEXT_TARGET_NUM
    flowcut_enabled: Any = True
    flowcut_prune_interval: Any = DEFAULT_PRUNE_INTERVAL
    flowcut_history_weight: Any = DEFAULT_HISTORY_WEIGHT
    flowcut_llm_prune_layer: Any = DEFAULT_LLM_PRUNE_LAYER
    pruning_method: Any = "flowcut"
    vflowopt_enabled: Any = True
    vflowopt_vision_keep: Any = _VFLOWOPT_DEFAULTS["vflowopt_vision_keep"]
    vflowopt_threshold: Any = _VFLOWOPT_DEFAULTS["vflowopt_threshold"]
    vflowopt_cell_side: Any = _VFLOWOPT_DEFAULTS["vflowopt_cell_side"]
    vflowopt_entropy_weight: Any = _VFLOWOPT_DEFAULTS["vflowopt_entropy_weight"]
    vflowopt_llm_layers: Any = tuple(_VFLOWOPT_DEFAULTS["vflowopt_llm_layers"])
    vflowopt_llm_keeps: Any = tuple(_VFLOWOPT_DEFAULTS["vflowopt_llm_keeps"])


__all__ = [
    "DEFAULT_NEXT_TARGET_NUM",
    "FlowCutLlavaNextConfig",
    "NEXT_CONFIG_VALIDATORS",
    "NEXT_FIELD_VALIDATORS",
    "validate_next_target_num",
]
