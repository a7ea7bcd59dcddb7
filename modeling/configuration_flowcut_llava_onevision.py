"""Configuration of a LLaVA-OneVision model that prunes its visual tokens with VFlowOpt.

``model_type`` stays ``"llava_onevision"``: without ``trust_remote_code`` a repo loads as the stock, unpruned model,
which works with the stock processor that every pruning LLaVA-OneVision repo ships unchanged. ``pruning_method``
names the method the model runs; the method's fields carry its prefix (``vflowopt_``).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig

from .flowcut_settings import ValidatedFlowCutFields
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
PRUNING_METHODS = ("vflowopt",)
ONEVISION_FIELD_VALIDATORS = {
    "pruning_method": method_validator(PRUNING_METHODS, "LLaVA-OneVision"),
    **VFLOWOPT_FIELD_VALIDATORS,
}

_DEFAULTS = vflowopt_fields(ONEVISION_PRESETS[DEFAULT_PRESET])


@strict
class FlowCutLlavaOnevisionConfig(ValidatedFlowCutFields, LlavaOnevisionConfig):
    r"""A [`LlavaOnevisionConfig`] with the pruning settings (VFlowOpt's released 10% preset by default).

    Args:
        pruning_method (`str`, defaults to `"vflowopt"`): the method the model runs.
        vflowopt_enabled (`bool`, defaults to `True`): switch pruning off; the model then computes what stock does.
        vflowopt_vision_keep (`float`): share of each image's packed tokens kept after the projector (stage 0),
            recycled tokens included.
        vflowopt_threshold (`float`): a token is relatively important if it receives more than this many times the
            mean attention at the last vision layer.
        vflowopt_cell_side (`float`): side, in tokens, of the cells whose dropped tokens are recycled into one.
        vflowopt_entropy_weight (`float`): weight of the softmax of patch entropy in the importance map.
        vflowopt_llm_layers (`list[int]`): decoder layers before which the LLM stages drop tokens.
        vflowopt_llm_keeps (`list[float]`): per LLM stage, the share of each image's then-current tokens kept.
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


__all__ = [
    "DEFAULT_PRESET",
    "FlowCutLlavaOnevisionConfig",
    "ONEVISION_FIELD_VALIDATORS",
    "ONEVISION_PRESETS",
    "vflowopt_fields",
    "vflowopt_settings",
]
