"""Configuration of a LLaVA-OneVision model that prunes its visual tokens with VFlowOpt.

``model_type`` stays ``"llava_onevision"``: without ``trust_remote_code`` a repo loads as the stock, unpruned model,
which works with the stock processor that every pruning LLaVA-OneVision repo ships unchanged. ``pruning_method``
names the method the model runs; the method's fields carry its prefix (``vflowopt_``).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlavaOnevisionConfig

from .flowcut_settings import ValidatedFlowCutFields, validate_enabled
from .vflowopt_core import VFLOWOPT_PRESETS, VFlowOptSettings

ONEVISION_PRESETS = VFLOWOPT_PRESETS["llava-onevision-qwen2-7b"]
DEFAULT_PRESET = "10%"  # the paper's headline: 90% of the visual tokens pruned
PRUNING_METHODS = ("vflowopt",)


def validate_method(method: object) -> str:
    if method not in PRUNING_METHODS:
        raise ValueError(f"pruning_method must be one of {list(PRUNING_METHODS)} for LLaVA-OneVision, got {method!r}.")
    return method


def validate_share(name: str, upper: float = 1.0):
    def validate(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= upper:
            raise ValueError(f"{name} must be a number in (0, {upper:g}], got {value!r}.")
        return float(value)

    return validate


def validate_non_negative(name: str, minimum: float = 0.0):
    def validate(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ValueError(f"{name} must be a number >= {minimum:g}, got {value!r}.")
        return float(value)

    return validate


def validate_entropy_weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"vflowopt_entropy_weight must be a number (the search uses [-1, 1]), got {value!r}.")
    return float(value)


def validate_layers(value: object) -> list[int]:
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"vflowopt_llm_layers must be a list of decoder layer indices >= 1 (e.g. [9, 18]), got {value!r}.")
    return list(value)


def validate_keeps(value: object) -> list[float]:
    if not isinstance(value, (list, tuple)) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1 for v in value
    ):
        raise ValueError(f"vflowopt_llm_keeps must be a list of shares in (0, 1] (e.g. [1.0, 0.6]), got {value!r}.")
    return [float(v) for v in value]


VFLOWOPT_FIELD_VALIDATORS = {
    "pruning_method": validate_method,
    "vflowopt_enabled": validate_enabled,
    "vflowopt_vision_keep": validate_share("vflowopt_vision_keep"),
    "vflowopt_threshold": validate_non_negative("vflowopt_threshold"),
    "vflowopt_cell_side": validate_non_negative("vflowopt_cell_side", minimum=1.0),
    "vflowopt_entropy_weight": validate_entropy_weight,
    "vflowopt_llm_layers": validate_layers,
    "vflowopt_llm_keeps": validate_keeps,
}


def vflowopt_fields(settings: VFlowOptSettings) -> dict[str, Any]:
    """The config fields that store ``settings``."""
    return {
        "vflowopt_vision_keep": settings.vision_keep,
        "vflowopt_threshold": settings.threshold,
        "vflowopt_cell_side": settings.cell_side,
        "vflowopt_entropy_weight": settings.entropy_weight,
        "vflowopt_llm_layers": list(settings.llm_layers),
        "vflowopt_llm_keeps": list(settings.llm_keeps),
    }


def vflowopt_settings(config) -> VFlowOptSettings:
    """The settings a config stores (validated together: one LLM keep share per LLM layer, ...)."""
    return VFlowOptSettings(
        vision_keep=config.vflowopt_vision_keep,
        threshold=config.vflowopt_threshold,
        cell_side=config.vflowopt_cell_side,
        entropy_weight=config.vflowopt_entropy_weight,
        llm_layers=tuple(config.vflowopt_llm_layers),
        llm_keeps=tuple(config.vflowopt_llm_keeps),
    )


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

    flowcut_field_validators = VFLOWOPT_FIELD_VALIDATORS

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
    "ONEVISION_PRESETS",
    "VFLOWOPT_FIELD_VALIDATORS",
    "vflowopt_fields",
    "vflowopt_settings",
]
