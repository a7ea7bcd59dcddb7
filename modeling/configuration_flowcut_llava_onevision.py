"""Configuration of a LLaVA-OneVision model that prunes its visual tokens with VFlowOpt.

``model_type`` stays ``"llava_onevision"``: without ``trust_remote_code`` a repo loads as the stock, unpruned model,
which works with the stock processor that every pruning LLaVA-OneVision repo ships unchanged. ``pruning_method``
names the method the model runs; the method's fields carry its prefix (``vflowopt_``).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig

from .flowcut_settings import (
    DEFAULT_HISTORY_WEIGHT,
    DEFAULT_LLM_PRUNE_LAYER,
    DEFAULT_PRUNE_INTERVAL,
    FIELD_VALIDATORS,
    ValidatedFlowCutFields,
    validate_target_num,
)
from .vflowopt_core import (
    PRESET_MODEL,
    VFLOWOPT_FIELD_VALIDATORS,
    VFLOWOPT_PRESETS,
    method_validator,
    vflowopt_fields,
    vflowopt_settings,
)

ONEVISION_PRESETS = VFLOWOPT_PRESETS[PRESET_MODEL]
DEFAULT_PRESET = "10%"  # the paper's headline: 90% of the visual tokens pruned
PRUNING_METHODS = ("vflowopt", "flowcut")
# FlowCut has no published LLaVA-OneVision setting: 370 is 10% of a square image's 3699 tokens, VFlowOpt's headline.
DEFAULT_ONEVISION_TARGET_NUM = 370


def validate_onevision_target_num(target_num: object) -> int:
    # The vision stage keeps target_num // 2 patches per crop: below 2 a crop would keep nothing.
    return validate_target_num(
        target_num, minimum=2, why=" (FlowCut on LLaVA-OneVision keeps target_num // 2 patches of every crop)"
    )


ONEVISION_FIELD_VALIDATORS = {
    "pruning_method": method_validator(PRUNING_METHODS, "LLaVA-OneVision"),
    **VFLOWOPT_FIELD_VALIDATORS,
    **FIELD_VALIDATORS,
    "flowcut_target_num": validate_onevision_target_num,
}

_DEFAULTS = vflowopt_fields(ONEVISION_PRESETS[DEFAULT_PRESET])


@strict
class FlowCutLlavaOnevisionConfig(ValidatedFlowCutFields, LlavaOnevisionConfig):
    r"""A [`LlavaOnevisionConfig`] with the pruning settings (VFlowOpt's released 10% preset by default).

    Args:
        pruning_method (`str`, defaults to `"vflowopt"`): the method the model runs, `"vflowopt"` or `"flowcut"`.
        vflowopt_enabled (`bool`, defaults to `True`): switch pruning off; the model then computes what stock does.
        vflowopt_vision_keep (`float`): share of each image's packed tokens kept after the projector (stage 0),
            recycled tokens included.
        vflowopt_threshold (`float`): a token is relatively important if it receives more than this many times the
            mean attention at the last vision layer.
        vflowopt_cell_side (`float`): side, in tokens, of the cells whose dropped tokens are recycled into one.
        vflowopt_entropy_weight (`float`): weight of the softmax of patch entropy in the importance map.
        vflowopt_llm_layers (`list[int]`): decoder layers before which the LLM stages drop tokens.
        vflowopt_llm_keeps (`list[float]`): per LLM stage, the share of each image's then-current tokens kept.
        flowcut_target_num (`int`, defaults to 370): FlowCut: visual tokens per image after its LLM stage; every crop
            keeps `flowcut_target_num // 2` patches in the vision tower. An image with at most this many is kept whole.
        flowcut_enabled, flowcut_prune_interval, flowcut_history_weight, flowcut_llm_prune_layer: FlowCut's other
            settings, as for LLaVA-NeXT (see `FlowCutLlavaNextConfig`).
    """

    flowcut_field_validators = ONEVISION_FIELD_VALIDATORS

    # Typed Any: see ValidatedFlowCutFields, which checks every assignment.
    pruning_method: Any = "vflowopt"
    vflowopt_enabled: Any = True
    vflowopt_vision_keep: Any = _DEFAULTS["vflowopt_vision_keep"]
    vflowopt_threshold: Any = _DEFAULTS["vflowopt_threshold"]
    vflowopt_cell_side: Any = _DEFAULTS["vflowopt_cell_side"]
    vflowopt_entropy_weight: Any = _DEFAULTS["vflowopt_entropy_weight"]
    vflowopt_llm_layers: Any = tuple(_DEFAULTS["vflowopt_llm_layers"])
    vflowopt_llm_keeps: Any = tuple(_DEFAULTS["vflowopt_llm_keeps"])
    flowcut_target_num: Any = DEFAULT_ONEVISION_TARGET_NUM
    flowcut_enabled: Any = True
    flowcut_prune_interval: Any = DEFAULT_PRUNE_INTERVAL
    flowcut_history_weight: Any = DEFAULT_HISTORY_WEIGHT
    flowcut_llm_prune_layer: Any = DEFAULT_LLM_PRUNE_LAYER


__all__ = [
    "DEFAULT_ONEVISION_TARGET_NUM",
    "DEFAULT_PRESET",
    "FlowCutLlavaOnevisionConfig",
    "ONEVISION_FIELD_VALIDATORS",
    "ONEVISION_PRESETS",
    "vflowopt_fields",
    "vflowopt_settings",
]
